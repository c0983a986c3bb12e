"""Cache clean-up (pipeline.chain.gc): what is listed (top-most unreached outputs, sizes, ages, states), what is
removed, and that nothing a live process holds (its lock, a lock inside it, a running chain's lease) goes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.chain import gc
from pipeline.chain.locks import in_use, lock_path
from pipeline.records import StageRecord, write_record

REPO = Path(__file__).resolve().parents[3]


def _output(path: Path, stage: str, nbytes: int = 100, age_s: float = 0.0, record: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "data.bin").write_bytes(b"x" * nbytes)
    if record:
        write_record(path, StageRecord(stage=stage, key=path.name, version="1", config={}, parents={},
                                       created=time.time() - age_s))
    return path


def _cache(tmp_path: Path) -> dict[str, Path]:
    c = tmp_path / "cache" / "demo"
    o = {
        "store_kept": _output(c / "features" / "aaa", "extract", 1000),
        "store_old": _output(c / "features" / "bbb", "extract", 5000, age_s=3 * 86400),
        "run_kept": _output(c / "runs" / "r1", "train", 200),
        "run_old": _output(c / "runs" / "r2", "train", 300, age_s=7200),
        "partial_run": _output(c / "runs" / "r3", "train", 10, record=False),
    }
    o["cap_kept"] = _output(o["run_kept"] / "captions" / "c1", "caption", 20)
    o["cap_old"] = _output(o["run_kept"] / "captions" / "c2", "caption", 30)
    o["score_kept"] = _output(o["cap_kept"] / "scores" / "s1", "score", 5)
    o["cap_in_old_run"] = _output(o["run_old"] / "captions" / "c9", "caption", 40)
    (c / "manifest.jsonl").write_text("{}\n")
    (c / "sweeps" / "x").mkdir(parents=True)
    o["cache"] = c
    return o


def _keep(o) -> set[Path]:
    return {o["store_kept"], o["run_kept"], o["cap_kept"], o["score_kept"]}


def test_lists_top_most_unreached_outputs_with_size_age_state(tmp_path):
    o = _cache(tmp_path)
    found = {x.path: x for x in gc.unreached(o["cache"], _keep(o))}
    # the old run is one candidate (its caption inside is not listed apart); the kept run's other caption is
    assert set(found) == {o["store_old"], o["run_old"], o["partial_run"], o["cap_old"]}
    run_old = found[o["run_old"]]
    assert run_old.stage == "train" and run_old.state == "complete"
    assert run_old.bytes > 300 + 40  # data files of the run and of its caption, plus the records
    assert 7100 < run_old.age_s < 7300
    assert found[o["store_old"]].age_s > 2.9 * 86400 and found[o["store_old"]].stage == "extract"
    assert found[o["partial_run"]].state == "partial"
    assert not any(x.in_use for x in found.values())
    assert gc.cache_size(o["cache"]) >= sum(p.stat().st_size for p in o["cache"].rglob("*") if p.is_file())


def test_remove_deletes_only_the_unheld_ones(tmp_path):
    o = _cache(tmp_path)
    cache = o["cache"]
    holder = _hold_in_child(o["store_old"])   # a live process computing this store
    nested = _hold_in_child(o["cap_in_old_run"])  # ... and one decoding inside the old run
    try:
        with in_use(cache, [o["partial_run"]]):  # a running chain announced it (between its stages)
            found = gc.unreached(cache, _keep(o))
            removed, kept = gc.remove(found, cache)
        assert {x.path for x in removed} == {o["cap_old"]}
        assert {x.path for x in kept} == {o["store_old"], o["run_old"], o["partial_run"]}
        why = {x.path: x.in_use for x in kept}
        assert f"pid {holder.pid}" in why[o["store_old"]]
        assert f"pid {nested.pid}" in why[o["run_old"]] and "captions/c9" in why[o["run_old"]]
        assert f"pid {os.getpid()}" in why[o["partial_run"]]
        assert all(o[k].exists() for k in ("store_old", "run_old", "partial_run", "store_kept", "run_kept",
                                           "cap_kept", "score_kept"))
        assert not o["cap_old"].exists()
        assert not list(cache.rglob(".gc-*")), "trash left behind"
    finally:
        for p in (holder, nested):
            p.kill()
            p.wait()
    # the holders are gone (SIGKILL: their lock files stay): now everything unreached goes
    assert lock_path(o["store_old"]).exists()
    removed, kept = gc.remove(gc.unreached(cache, _keep(o)), cache)
    assert kept == [] and {x.path for x in removed} == {o["store_old"], o["run_old"], o["partial_run"]}
    assert (cache / "manifest.jsonl").exists() and (cache / "sweeps" / "x").is_dir()
    assert gc.unreached(cache, _keep(o)) == []


def test_sweep_outputs_are_the_recorded_points(tmp_path):
    import json

    from pipeline.records import short

    c = tmp_path / "demo"
    ks = {"extract": "e" * 64, "train": "a" * 64, "caption": "b" * 64, "score": "c" * 64}
    (c / "sweeps" / "k").mkdir(parents=True)
    (c / "sweeps" / "k" / "sweep.json").write_text(json.dumps({"points": [{"keys": ks}]}))
    run = c / "runs" / short(ks["train"])
    assert gc.sweep_outputs(c) == {c / "features" / short(ks["extract"]), run, run / "captions" / short(ks["caption"]),
                                   run / "captions" / short(ks["caption"]) / "scores" / short(ks["score"])}


def _hold_in_child(out_dir: Path) -> subprocess.Popen:
    flag = out_dir.parent / f"{out_dir.name}.held"
    script = ("import sys, time, pathlib\nfrom pipeline.chain.locks import hold_stage\n"
              "with hold_stage(sys.argv[1]):\n    pathlib.Path(sys.argv[2]).touch()\n    time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", script, str(out_dir), str(flag)],
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    end = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < end:
        time.sleep(0.02)
    flag.unlink()
    return p
