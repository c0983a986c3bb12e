"""Issue 15: many chains on one cache at once. Every stage output is computed once, under its lock.

1. Two `ecpa run` of one config started together on an empty cache: each stage runs in exactly one of them
   (the other waits, then reuses it), both exit 0 and name the same outputs; every clip is extracted once.
2. Two configs that share the extraction (model.top_k 1 and 2) started together: one extraction, two trainings.
3. The process computing a stage is SIGKILLed while another waits for it: the waiter takes the lock over
   (a dead holder: same host, pid gone) and finishes the chain.
4. A stale lock (left by a killed process before anything started): the next run takes it over and finishes.
5. `ecpa gc --delete` while a chain of another config runs: nothing that chain uses is removed (its store,
   its run being trained), what nobody uses is, and the chain finishes.
"""
from __future__ import annotations

import json
import re
import signal
import socket
import os

import pytest

from tests.faults._harness import (FAULT_CLIPS, Row, copy_cache, read_log, report, spawn, wait_for)

CHAIN_SETS = ["train.epochs=1", "score.meteor=false", "caption.max_length=16", "caption.split=val"]
"""A short chain: one epoch, no METEOR (its Java start-up dominates a tiny chain)."""

_rows: list[tuple[str, bool, str]] = []


@pytest.fixture(scope="module", autouse=True)
def _summary_row():
    yield
    for name, ok, note in _rows:
        report(Row(name, 1, 1, 0, 0, 0, ok, note if ok else "FAILED: " + note))


def run_command(demo, cache, *extra: str) -> list[str]:
    cmd = ["ecpa", "run", "--preset", "demo", "--no-progress"]
    for s in demo.sets(cache, *CHAIN_SETS, *extra):
        cmd += ["--set", s]
    return cmd


def actions(output: str) -> dict[str, str]:
    """stage -> 'run' / 'reused' as the chain's lines say ('extract: run (...)', 'train: reused (...)')."""
    found = {}
    for stage, what in re.findall(r"^(extract|train|caption|score): (run|reused)\b", output, flags=re.M):
        found[stage] = what
    return found


def outputs(output: str) -> list[str]:
    return re.findall(r"^\s+(?:extract|train|caption|score)\s+(/\S+)$", output, flags=re.M)


def holds(child, out_dir) -> bool:
    """Whether the child process holds the lock of a stage output now."""
    from pipeline.chain.locks import lock_path, read_holder

    h = read_holder(lock_path(out_dir))
    return h is not None and h.pid == child.proc.pid


def plans(demo, cache, *extra):
    from pipeline.chain.plan import prepare_and_plan as plan

    return plan(demo.cfg(cache, *CHAIN_SETS, *extra))


def test_two_chains_of_one_config_compute_each_stage_once(fault_demo, tmp_path):
    cache = fault_demo.cache("concurrent_same")
    ok, note = False, ""
    try:
        a = spawn(run_command(fault_demo, cache), out=tmp_path / "a.out", log=tmp_path / "a.log")
        b = spawn(run_command(fault_demo, cache), out=tmp_path / "b.out", log=tmp_path / "b.log")
        assert (a.wait(), b.wait()) == (0, 0), a.output()[-3000:] + b.output()[-3000:]
        acts = [actions(c.output()) for c in (a, b)]
        for stage in ("extract", "train", "caption", "score"):
            assert sorted(x[stage] for x in acts) == ["reused", "run"], (stage, acts)
        extracted = [len(read_log(tmp_path / f"{n}.log").started) for n in ("a", "b")]
        assert sorted(extracted) == [0, FAULT_CLIPS], extracted
        assert outputs(a.output()) == outputs(b.output()) and len(outputs(a.output())) == 4
        assert all(p.status() == "fresh" for p in plans(fault_demo, cache).values())
        assert not list(cache.rglob(".*.lock")), "a lock was left behind"
        ok, note = True, "each stage ran once, the other chain waited and reused it"
    finally:
        _rows.append(("two chains, one config", ok, note or "see pytest"))


@pytest.mark.slow
def test_two_configs_share_one_extraction(fault_demo, tmp_path):
    cache = fault_demo.cache("concurrent_shared")
    ok, note = False, ""
    try:
        a = spawn(run_command(fault_demo, cache, "model.top_k=1"), out=tmp_path / "a.out", log=tmp_path / "a.log")
        b = spawn(run_command(fault_demo, cache, "model.top_k=2"), out=tmp_path / "b.out", log=tmp_path / "b.log")
        assert (a.wait(), b.wait()) == (0, 0), a.output()[-3000:] + b.output()[-3000:]
        acts = [actions(c.output()) for c in (a, b)]
        assert sorted(x["extract"] for x in acts) == ["reused", "run"], acts
        assert [x["train"] for x in acts] == ["run", "run"], acts
        assert sorted(len(read_log(tmp_path / f"{n}.log").started) for n in ("a", "b")) == [0, FAULT_CLIPS]
        ok, note = True, "one extraction for both; two trainings"
    finally:
        _rows.append(("two configs, shared extraction", ok, note or "see pytest"))


@pytest.mark.slow  # two chains, one trains most of 10 epochs
def test_killed_holder_is_taken_over(fault_reference, tmp_path):
    demo = fault_reference.demo
    cache = demo.work / "concurrent_kill"
    copy_cache(fault_reference.cache_root, cache)      # extraction done: the race is for the training
    train_dir = plans(demo, cache, "train.epochs=10")["train"].out_dir
    ok, note = False, ""
    try:
        a = spawn(run_command(demo, cache, "train.epochs=10"), out=tmp_path / "a.out")
        assert wait_for(lambda: holds(a, train_dir) or a.poll() is not None, 300)
        assert a.poll() is None, a.output()[-3000:]
        b = spawn(run_command(demo, cache, "train.epochs=10"), out=tmp_path / "b.out")
        assert wait_for(lambda: "waiting for train" in b.output() or b.poll() is not None, 120), b.output()
        os.killpg(a.proc.pid, signal.SIGKILL)
        a.proc.wait()
        assert b.wait() == 0, b.output()[-3000:]
        text = " ".join(b.output().split())
        assert f"took over the lock of pid {a.proc.pid}" in text, text[-3000:]
        assert actions(b.output())["train"] == "run"
        assert all(p.status() == "fresh" for p in plans(demo, cache, "train.epochs=10").values())
        ok, note = True, "the waiter took over the dead holder's lock and finished"
    finally:
        _rows.append(("holder SIGKILLed, waiter takes over", ok, note or "see pytest"))


def test_stale_lock_is_taken_over(fault_reference, tmp_path):
    import subprocess
    import sys

    from pipeline.chain.locks import lock_path

    demo = fault_reference.demo
    cache = demo.work / "stale_lock"
    copy_cache(fault_reference.cache_root, cache)
    train_dir = plans(demo, cache)["train"].out_dir
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(train_dir).parent.mkdir(parents=True, exist_ok=True)
    lock_path(train_dir).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "start": "1",
                                                "since": 0.0, "key": "", "what": "killed"}))
    ok, note = False, ""
    try:
        a = spawn(run_command(demo, cache), out=tmp_path / "a.out")
        assert a.wait() == 0, a.output()[-3000:]
        assert f"took over the lock of pid {dead.pid}" in " ".join(a.output().split())
        assert not lock_path(train_dir).exists()
        ok, note = True, "a dead holder's lock was taken over at once"
    finally:
        _rows.append(("stale lock", ok, note or "see pytest"))


@pytest.mark.slow
def test_gc_during_a_run_removes_nothing_in_use(fault_reference, tmp_path):
    demo = fault_reference.demo
    cache = demo.work / "gc_during_run"
    copy_cache(fault_reference.cache_root, cache)
    running = plans(demo, cache, "model.top_k=2", "train.epochs=10")
    leftover = cache / "demo" / "runs" / "0123456789abcdef"   # a killed run's leftover: nobody uses it
    leftover.mkdir(parents=True)
    (leftover / "checkpoints.bin").write_bytes(b"x" * 1000)
    ok, note = False, ""
    try:
        a = spawn(run_command(demo, cache, "model.top_k=2", "train.epochs=10"), out=tmp_path / "a.out")
        train_dir = running["train"].out_dir
        assert wait_for(lambda: (holds(a, train_dir) and (train_dir / "config.yaml").exists()) or a.poll() is not None, 300)
        assert a.poll() is None, a.output()[-3000:]
        # gc for another config (top_k 4): the running chain's run and the shared store are unreached by it
        g = spawn(["ecpa", "gc", "--preset", "demo", "--delete", "--json",
                   *sum((["--set", s] for s in demo.sets(cache, *CHAIN_SETS, "model.top_k=4")), [])],
                  out=tmp_path / "gc.out")
        assert g.wait() == 0, g.output()
        listed = {o["path"]: o for o in json.loads(g.output()[g.output().index("{"):])["outputs"]}
        assert listed[str(train_dir)]["in_use"] and not listed[str(train_dir)]["removed"], listed
        assert listed[str(leftover)]["removed"] and not leftover.exists()
        assert train_dir.exists() and running["extract"].status() == "fresh"
        assert a.wait() == 0, a.output()[-3000:]
        assert all(p.status() == "fresh" for p in running.values())
        ok, note = True, "the running chain's outputs kept, a leftover removed"
    finally:
        _rows.append(("gc during a run", ok, note or "see pytest"))
