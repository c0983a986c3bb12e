"""The sweep executor (pipeline.chain.parallel) on stand-in point commands: N at once, one device or thread share
per slot, logs, a failing point that does not stop the others, finished points not started, dask tasks."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from pipeline.chain import parallel
from pipeline.chain.parallel import Point, run_local, slot_env

POINT = """
import json, os, sys, time
out, secs, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
t0 = time.time()
time.sleep(secs)
print("point output line")
with open(out, "w") as f:
    json.dump({"t0": t0, "t1": time.time(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "omp": os.environ.get("OMP_NUM_THREADS"), "extra": os.environ.get("ECPA_TEST_ENV")}, f)
sys.exit(code)
"""


def _points(tmp_path: Path, specs: list[tuple[float, int]], finished: set[int] = frozenset()) -> list[Point]:
    return [Point(i, f"p={i}", [sys.executable, "-c", POINT, str(tmp_path / f"r{i}.json"), str(secs), str(code)],
                  tmp_path / "logs" / f"point-{i}.log", finished=i in finished)
            for i, (secs, code) in enumerate(specs, 1)]


def _result(tmp_path: Path, i: int) -> dict | None:
    f = tmp_path / f"r{i}.json"
    return json.loads(f.read_text()) if f.exists() else None


def test_slot_env_gives_one_gpu_per_slot_or_a_cpu_share():
    assert slot_env(0, 2, ["0", "1"], 16) == ({"CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "8",
                                              "MKL_NUM_THREADS": "8", "OPENBLAS_NUM_THREADS": "8"}, "GPU 0")
    assert slot_env(3, 4, ["2", "5"], 16)[0]["CUDA_VISIBLE_DEVICES"] == "5"   # slot 3 of 4 on 2 GPUs: the 2nd
    env, device = slot_env(1, 3, [], 8)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "2" and device == "CPU, 2 thread(s)"
    assert slot_env(0, 4, [], 2)[0]["OMP_NUM_THREADS"] == "1"


def test_visible_gpus_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert parallel.visible_gpus() == ["3", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert parallel.visible_gpus() == []


def test_two_at_a_time_a_failure_does_not_stop_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "visible_gpus", lambda: [])
    monkeypatch.setattr(parallel, "cpu_count", lambda: 4)
    points = _points(tmp_path, [(1.0, 0), (1.0, 3), (1.0, 0), (0.1, 0)], finished={4})
    lines: list[str] = []
    outcomes = run_local(points, 2, env={"ECPA_TEST_ENV": "yes"}, report=lines.append, poll_s=0.02)
    assert [(o.point.index, o.state, o.returncode) for o in outcomes] == [
        (1, "done", 0), (2, "failed", 3), (3, "done", 0), (4, "reused", None)]
    r = {i: _result(tmp_path, i) for i in (1, 2, 3)}
    assert _result(tmp_path, 4) is None, "a finished point was started again"
    assert r[1]["t0"] < r[2]["t1"] and r[2]["t0"] < r[1]["t1"], "points 1 and 2 did not run at the same time"
    assert r[3]["t0"] >= min(r[1]["t1"], r[2]["t1"]) - 0.05, "a third point ran while two were running"
    assert all(x["cuda"] == "" and x["omp"] == "2" and x["extra"] == "yes" for x in r.values())
    assert "point output line" in points[1].log.read_text()
    failed = [line for line in lines if "FAILED" in line]
    assert failed == [f"point 2 (p=2) FAILED (exit 3); its log: {points[1].log}"]
    assert lines[-1] == "sweep: 3/4 done, 0 running, 1 failed"
    assert any(line == "sweep: 1/4 done, 2 running, 0 failed" for line in lines)


def test_dask_cluster_runs_one_point_per_gpu_resource(tmp_path):
    from distributed import LocalCluster

    points = _points(tmp_path, [(1.0, 0), (1.0, 0), (0.2, 5)])
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, resources={"GPU": 1},
                      dashboard_address=None) as cluster:
        lines: list[str] = []
        outcomes = parallel.run_dask(points, cluster.scheduler_address, env={"ECPA_TEST_ENV": "d"},
                                     report=lines.append)
    assert [(o.state, o.returncode) for o in outcomes] == [("done", 0), ("done", 0), ("failed", 5)]
    assert "one GPU per point" in lines[0]
    r = [_result(tmp_path, i) for i in (1, 2, 3)]
    assert all(x["extra"] == "d" for x in r)
    # GPU=1 per task on workers holding GPU=1 each: never more than two points at once
    events = sorted([(x["t0"], 1) for x in r] + [(x["t1"], -1) for x in r])
    running, peak = 0, 0
    for _t, d in events:
        running += d
        peak = max(peak, running)
    assert peak <= 2


def test_dask_without_a_scheduler_is_a_clear_error(tmp_path):
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="no dask scheduler answers there"):
        parallel.run_dask(_points(tmp_path, [(0.1, 0)]), "tcp://127.0.0.1:1", connect_s=2)
