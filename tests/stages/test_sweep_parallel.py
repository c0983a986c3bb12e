"""`ecpa sweep --scheduler` on a real dask.distributed LocalCluster (worker processes), on the tiny demo: the
points run as tasks, the shared extraction is reused, and the results equal those of a sequential sweep."""
from __future__ import annotations

import shutil

import pytest

from stages import chain
from pipeline.chain.plan import prepare_and_plan as plan

SHORT = ["train.epochs=1", "score.meteor=false"]


@pytest.mark.slow  # two tiny chains as dask tasks, then the same two in this process
def test_dask_sweep_equals_the_sequential_one(tiny_demo_extracted, tiny_demo_sets, tmp_path):
    from distributed import LocalCluster

    sets = [*tiny_demo_sets, *SHORT]
    lines: list[str] = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1},
                      dashboard_address=None) as cluster:
        out, points = chain.run_sweep("demo", sets, ["model.top_k=1,2"], name="dask", progress=False,
                                      echo=lines.append, scheduler=cluster.scheduler_address)
    assert [p.values["model.top_k"] for p in points] == [1, 2]
    assert all(p.actions["extract"] == "reused" and p.actions["train"] == "run" for p in points)
    assert any("one GPU per point" in line for line in lines)
    assert (out / "logs").is_dir() and len(list((out / "logs").glob("point-*.log"))) == 2
    parallel_metrics = [p.metrics for p in points]

    for p in points:   # the same points again, one after another in this process
        shutil.rmtree(plan(_cfg(sets, p.values["model.top_k"]))["train"].out_dir)
    out2, again = chain.run_sweep("demo", sets, ["model.top_k=1,2"], name="seq", progress=False, echo=None)
    assert [p.actions["train"] for p in again] == ["run", "run"]
    assert [p.metrics for p in again] == parallel_metrics


def _cfg(sets, k):
    from pipeline.config import load_config

    return load_config("demo", [*sets, f"model.top_k={k}"])
