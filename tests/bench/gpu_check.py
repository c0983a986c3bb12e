"""The GPU check, self-contained: everything it reads it makes on the spot (the device machine has the repository
and its .venv only). Run by tests/bench/gpu_check.sh; `--tiny` switches to the CPU and tiny shapes (the test
suite runs it that way: tests/bench/test_gpu_check.py).

    .venv/bin/python -m tests.bench.gpu_check [--tiny] [--out DIR] [--clips 64] [--batch 32] [--steps 10]

Prints one `GPU_CHECK key=value ...` line per figure (and writes them to DIR/gpu_check.json):
  device     the device, its name and total memory
  matmul     the device's measured dense matmul rate, n x n (bf16 on CUDA, fp32 on the CPU), best of 10: the
             utilisation denominator, measured in this process
  extract    stage one as `ecpa extract` runs it (pipeline.extract.runner.extract_into_store: one decoding worker
             per core, bounded look-ahead, writer thread, batch size by device) on demo clips generated here,
             at MAFW shapes (32 x 224^2, swin3d_b + ResNet50-ER + ANFL, random weights; mtcnn faces when its
             files are installed, else haar): clips/s after a warm-up run, peak device memory, and the share of
             worker time in decode and faces, of loop time in the models, and writer time
  train      the stage-two step at MAFW shapes (784 x 1024 video tokens, 12 x 768, bf16 autocast on CUDA), batch
             --batch: steps/s after a warm-up step, peak device memory, FLOPs per step
             (torch.utils.flop_counter) and utilisation = FLOPs x steps/s / matmul rate
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Shapes:
    """What one check measures: extraction settings (a preset plus overrides) and the training step's shapes."""

    extract_preset: str
    extract_sets: tuple[str, ...]
    video_size: int           # side of the generated demo videos (the decoder's work)
    video_frames: int         # frames per generated video
    tokens: int               # training: video tokens x channels
    channels: int
    model_sets: tuple[str, ...]
    er_frames: int
    au_frames: int
    caption_len: int


MAFW = Shapes("mafw", ("extract.random_init=true",), video_size=384, video_frames=96, tokens=784, channels=1024,
              model_sets=(), er_frames=32, au_frames=8, caption_len=50)
TINY = Shapes("demo", ("extract.random_init=true", "extract.demo_fit=false", "extract.num_frames=4",
                       "extract.au_frames=2", "extract.face_detector=center"), video_size=64, video_frames=8,
              tokens=16, channels=32, model_sets=("model.hidden=32", "model.layers=1", "model.heads=2",
                                                   "model.intermediate=64", "model.video_proj=32"),
              er_frames=4, au_frames=2, caption_len=12)


def say(kind: str, **fields) -> dict:
    """One GPU_CHECK line (key=value, floats with 4 significant digits), returned for the JSON file."""
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    print(f"GPU_CHECK {kind} {text}", flush=True)
    return fields


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float:
    """Peak device memory since the last reset (CUDA), or this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def matmul_rate(device: torch.device, n: int, repeats: int = 10) -> float:
    """Dense n x n matmul FLOP/s (bf16 on CUDA, fp32 on the CPU), best of `repeats`: bench_train's measure."""
    from tests.bench.bench_train import matmul_flops_per_s

    return matmul_flops_per_s(device, torch.bfloat16 if device.type == "cuda" else torch.float32, n=n,
                              repeats=repeats)


def check_extract(shapes: Shapes, device: torch.device, clips: int, root: Path) -> dict:
    """Clips/s of the production runner on generated demo clips, after a warm-up run on a few of them."""
    from pipeline.config import load_config
    from pipeline.data.demo import generate
    from pipeline.extract.networks.extractors import build_extractors
    from pipeline.extract.runner import (ClipTask, batch_size_for, decode_workers, extract_into_store,
                                         usable_cores)
    from pipeline.extract.store import create_store

    generate(root / "clips", n_clips=clips, seed=0, frames=shapes.video_frames, size=96 if shapes is MAFW else 64,
             video_size=shapes.video_size, workers=usable_cores())
    cfg = load_config(shapes.extract_preset, [*shapes.extract_sets, f"extract.device={device.type}"])
    ex = cfg.extract
    if ex.face_detector == "mtcnn":
        from pipeline.errors import UserError
        from pipeline.extract.mtcnn import _nets

        try:
            _nets()
        except UserError as e:  # its wheel or onnxruntime is not installed: say so, measure with haar
            print(f"note: mtcnn unavailable ({e}); faces by haar", flush=True)
            ex.face_detector = "haar"
    ext = build_extractors(ex, len(cfg.data.emotions), device, seed=0)
    tasks = [ClipTask(i, f"demo_{i:04d}", str(root / "clips" / "videos" / f"demo_{i:04d}.mp4")) for i in range(clips)]
    store_shapes = ext.shapes(ex.num_frames, ex.au_frames, ex.crop)
    bs = batch_size_for(ex, device)
    warm = tasks[: min(len(tasks), bs)]
    extract_into_store(create_store(root / "warm.zarr", [t.clip_id for t in warm], store_shapes, {}), warm, ext, ex,
                       device)
    reset_peak(device)
    res = extract_into_store(create_store(root / "store.zarr", [t.clip_id for t in tasks], store_shapes, {}), tasks,
                             ext, ex, device)
    sync(device)
    if res.done != clips:
        raise RuntimeError(f"extraction finished {res.done} of {clips} clips: {[f.reason for f in res.failed][:3]}")
    work = res.decode_seconds + res.face_seconds + res.compute_seconds + res.write_seconds
    return say("extract", clips_per_s=res.done / res.seconds, clips=clips, batch=bs, workers=decode_workers(ex.workers),
               faces=ex.face_detector, peak_mem_gib=peak_gib(device), seconds=res.seconds,
               share_decode=res.decode_seconds / work, share_faces=res.face_seconds / work,
               share_models=res.compute_seconds / work, share_writes=res.write_seconds / work,
               loop_wait_s=res.wait_seconds)


def check_train(shapes: Shapes, device: torch.device, batch: int, steps: int, matmul: float) -> dict:
    """Steps/s, peak memory, FLOPs per step and utilisation of the stage-two step (bench_train's step)."""
    from pipeline.config import load_config
    from pipeline.train.model import ECPA
    from tests.bench.bench_train import _step, count_flops, prepare

    cfg = load_config("mafw", list(shapes.model_sets))
    torch.manual_seed(0)
    model = ECPA(cfg.model, vocab_size=30522, cls_id=101, sep_id=102, mask_id=103, pad_id=0, num_emotions=11,
                 video_tokens=shapes.tokens, video_channels=shapes.channels).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    class Tok:
        special_ids, mask_id, vocab_size, pad_id = frozenset({0, 100, 101, 102, 103}), 103, 30522, 0

    ids = torch.randint(1000, 30000, (batch, shapes.caption_len))
    ids[:, 0], ids[:, -1] = 101, 102
    b = {"vid": torch.randn(batch, shapes.tokens, shapes.channels).half(),
         "er": torch.randn(batch, shapes.er_frames, 2048).half(),
         "au_feats": torch.randn(batch, shapes.au_frames, 41, 512).half(),
         "au_probs": torch.rand(batch, shapes.au_frames, 41), "emotion": torch.randint(0, 11, (batch,)),
         "input_ids": ids}
    b = prepare(b, Tok)                                            # MLM-masked as the training loader does
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else torch.autocast("cpu", enabled=False))
    with amp:
        _step(model, opt, b, cfg.train, device)              # warm-up (allocations, kernel choice)
        sync(device)
        reset_peak(device)
        t = time.perf_counter()
        for _ in range(steps):
            _step(model, opt, b, cfg.train, device)
        sync(device)
        rate = steps / (time.perf_counter() - t)
        mem = peak_gib(device)
        flops = count_flops(model, opt, b, cfg.train, device, contextlib.nullcontext())
    return say("train", steps_per_s=rate, batch=batch, dtype="bf16" if device.type == "cuda" else "fp32",
               peak_mem_gib=mem, gflop_per_step=flops / 1e9, achieved_tflops=flops * rate / 1e12,
               utilisation=flops * rate / matmul)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the CPU and tiny shapes (the test suite's run)")
    ap.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json")
    ap.add_argument("--clips", type=int, default=None, help="demo clips to extract (64 on a GPU, 4 with --tiny)")
    ap.add_argument("--batch", type=int, default=None, help="training batch (32 on a GPU, 2 with --tiny)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (10 on a GPU, 2 with --tiny)")
    ap.add_argument("--device", default=None, help="another device for the full-size check (e.g. cpu: slow)")
    a = ap.parse_args(argv)
    shapes = TINY if a.tiny else MAFW
    if a.device or a.tiny:
        device = torch.device(a.device or "cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise SystemExit("gpu_check: no CUDA device visible to torch (use --tiny for the CPU check)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        p = torch.cuda.get_device_properties(device)
        figures = {"device": say("device", type="cuda", name=p.name.replace(" ", "_"), memory_gib=p.total_memory / 2**30)}
    else:
        figures = {"device": say("device", type="cpu", name="cpu", threads=torch.get_num_threads())}
    matmul = matmul_rate(device, 8192 if device.type == "cuda" else 512)
    figures["matmul"] = say("matmul", tflops=matmul / 1e12, n=8192 if device.type == "cuda" else 512)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        figures["extract"] = check_extract(shapes, device, a.clips or (4 if a.tiny else 64), Path(tmp))
    figures["train"] = check_train(shapes, device, a.batch or (2 if a.tiny else 32), a.steps or (2 if a.tiny else 10),
                                   matmul)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "gpu_check.json").write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
