"""pipeline.device: one resolve_device / autocast_dtype / to_device for extraction, training and decoding."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.device import autocast_dtype, is_glibc, resolve_device, to_device
from pipeline.errors import UserError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_extraction_precision_stays_fp32_on_the_cpu():
    """Frozen extractors: the CPU is always fp32, a GPU gets bf16 by default (extract.precision)."""
    ex = dict(what="extract.precision", on_cpu=False)
    assert autocast_dtype("auto", CPU, **ex) is None
    assert autocast_dtype("fp16", CPU, **ex) is None and autocast_dtype("bf16", CPU, **ex) is None
    assert autocast_dtype("auto", CUDA, **ex) is torch.bfloat16
    assert autocast_dtype("fp16", CUDA, **ex) is torch.float16
    assert autocast_dtype("fp32", CUDA, **ex) is None
    with pytest.raises(UserError, match="extract.precision"):
        autocast_dtype("half", CPU, **ex)


def test_training_precision_honours_an_explicit_choice_on_the_cpu():
    """Training: 'auto' is fp32 on the CPU, but bf16 asked for is bf16 there too (the fidelity test trains so)."""
    assert autocast_dtype("auto", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    assert autocast_dtype("fp16", CPU) is torch.float16
    assert autocast_dtype("auto", CUDA) is torch.bfloat16
    with pytest.raises(UserError, match="train.precision"):
        autocast_dtype("int8", CPU, what="train.precision")


def test_resolve_device_and_to_device():
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU
        with pytest.raises(UserError, match="train.device=cuda"):
            resolve_device("cuda", what="train.device")
    batch = to_device({"x": torch.ones(2), "ids": ["a", "b"]}, CPU)
    assert torch.equal(batch["x"], torch.ones(2)) and batch["ids"] == ["a", "b"]


_FAULTS = r"""
import resource, sys, torch
from pipeline.device import keep_cpu_heap
if sys.argv[1] == "kept":
    assert keep_cpu_heap() and keep_cpu_heap()          # set, and a second call says so
faults = []
for _ in range(24):                                      # a training step's big buffers: allocated, filled, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(48 * 2**20 // 4)
    t.fill_(1.0)
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-4:]))
"""


@pytest.mark.skipif(not is_glibc(), reason="keep_cpu_heap sets glibc's mallopt; elsewhere it changes nothing")
def test_keep_cpu_heap_stops_page_faults_on_reused_big_buffers():
    """glibc maps every 48 MiB tensor afresh (one fault per 4 KiB page, every time); with the heap kept, the
    freed buffer is reused and the last allocations fault no page at all. The kept heap settles within the first
    few reuses (seen: after 3 to 9 allocations in 30 trials; with 12 a CI run once still faulted among the last
    four), so the loop runs 24 and looks at the last four: a training run's steady state."""
    pages = 48 * 2**20 // 4096

    def faults(mode):
        r = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])})
        assert r.returncode == 0, r.stderr
        return int(r.stdout.split()[-1])

    assert faults("default") >= 4 * pages * 0.9
    assert faults("kept") < pages * 0.05


def test_the_loop_keeps_the_heap_on_the_cpu_only_without_checkpointing():
    """Gradient checkpointing asks for memory over speed: the kept heap fragments under its recompute (MAFW
    shapes, batch 4: 6.3 instead of 4.6 GiB peak), so a checkpointed run keeps glibc's default."""
    import torch

    from pipeline.config import TrainConfig
    from pipeline.train.loop import keeps_cpu_heap

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert keeps_cpu_heap(TrainConfig(), cpu)
    assert not keeps_cpu_heap(TrainConfig(grad_checkpoint=True), cpu)
    assert not keeps_cpu_heap(TrainConfig(keep_cpu_heap=False), cpu)
    assert not keeps_cpu_heap(TrainConfig(), gpu)
