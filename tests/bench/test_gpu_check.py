"""tests/bench/gpu_check.sh, run as the suite can: the same script with the device switched to the CPU and tiny
shapes (--tiny). Checks that every figure the GPU machine will print is there and consistent, not only that
the script exits 0."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def parse(out: str) -> dict[str, dict[str, str]]:
    figures = {}
    for line in out.splitlines():
        if line.startswith("GPU_CHECK "):
            kind, *pairs = line.split()[1:]
            figures[kind] = dict(p.split("=", 1) for p in pairs)
    return figures


def num(fig: dict, key: str) -> float:
    x = float(fig[key])
    assert math.isfinite(x), f"{key}={fig[key]}"
    return x


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PY": sys.executable, "OUT": str(out)}
    proc = subprocess.run(["bash", str(REPO / "tests/bench/gpu_check.sh"), "--tiny"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return parse(proc.stdout), out


def test_tiny_gpu_check_prints_every_figure_consistently(tiny_run):
    figures, out = tiny_run
    assert set(figures) == {"device", "matmul", "extract", "train"}, figures
    assert figures["device"]["type"] == "cpu"
    matmul = num(figures["matmul"], "tflops") * 1e12
    assert 1e8 < matmul < 1e14, "matmul rate outside anything a CPU does"

    ex = figures["extract"]
    assert int(ex["clips"]) == 4 and int(ex["batch"]) >= 1 and int(ex["workers"]) >= 1
    rate, secs = num(ex, "clips_per_s"), num(ex, "seconds")
    assert rate > 0 and rate == pytest.approx(4 / secs, rel=2e-3), "clips/s is not clips over seconds"
    shares = [num(ex, k) for k in ("share_decode", "share_faces", "share_models", "share_writes")]
    assert all(0 < s < 1 for s in shares) and sum(shares) == pytest.approx(1.0, abs=2e-3)
    assert num(ex, "peak_mem_gib") > 0.05

    tr = figures["train"]
    assert tr["dtype"] == "fp32" and int(tr["batch"]) == 2
    steps, gflop, util = num(tr, "steps_per_s"), num(tr, "gflop_per_step"), num(tr, "utilisation")
    assert steps > 0 and 0.001 < gflop < 10, "FLOPs of the tiny step out of range"
    assert num(tr, "achieved_tflops") == pytest.approx(gflop * steps / 1e3, rel=2e-3)
    assert util == pytest.approx(gflop * 1e9 * steps / matmul, rel=2e-3), "utilisation is not achieved / matmul"
    assert 0 < util < 2
    assert num(tr, "peak_mem_gib") > 0.05

    saved = json.loads((out / "gpu_check.json").read_text())
    assert saved["extract"]["clips"] == 4 and saved["train"]["steps_per_s"] == pytest.approx(steps, rel=1e-3)


def test_gpu_check_needs_nothing_outside_the_repository():
    text = (REPO / "tests/bench/gpu_check.sh").read_text() + (REPO / "tests/bench/gpu_check.py").read_text()
    assert "../shared" not in text and "shared/data" not in text and "mafw_samples" not in text
