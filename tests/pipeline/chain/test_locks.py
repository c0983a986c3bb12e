"""Stage locks (pipeline.chain.locks): one holder at a time across processes, waits, refusals naming the
holder, take-over of a dead holder's lock (pid gone, or pid reused by another process), no double take-over."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.chain.locks import (Holder, StageBusy, held_by, hold_stage, in_use, live_locks, lock_path,
                                  paths_in_use, process_start, read_holder)

REPO = Path(__file__).resolve().parents[3]

HOLD_SCRIPT = """
import os, sys, time
from pipeline.chain.locks import hold_stage
out, log, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
with hold_stage(out, "k", poll_s=0.02) as h:
    with open(log, "a") as f:
        f.write(f"in {os.getpid()} {time.monotonic()}\\n")
    time.sleep(secs)
    with open(log, "a") as f:
        f.write(f"out {os.getpid()} {time.monotonic()}\\n")
"""


def _holder(out: Path, log: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(out), str(log), str(seconds)], env=env)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(out: Path, pid: int, start: str, host: str | None = None) -> Path:
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "start": start, "since": time.time()}))
    return path


def test_lock_records_pid_host_start_and_is_released(tmp_path):
    out = tmp_path / "runs" / "abc"
    with hold_stage(out, "key1") as h:
        rec = read_holder(h.path)
        assert (rec.pid, rec.host, rec.key) == (os.getpid(), socket.gethostname(), "key1")
        assert rec.start == process_start(os.getpid()) and rec.start
        assert h.path == tmp_path / "runs" / ".abc.lock" and not out.exists()  # the lock never makes the output folder
        assert held_by(out) == rec and live_locks(tmp_path / "runs") == {out: rec}
        with hold_stage(out, "key1", wait=False):  # re-entrant in one process
            pass
        assert h.path.exists(), "the inner hold released the outer one"
    assert not lock_path(out).exists() and held_by(out) is None


def test_live_holder_refuses_without_wait_and_is_waited_for(tmp_path):
    out, log = tmp_path / "features" / "k1", tmp_path / "log"
    child = _holder(out, log, 1.5)
    try:
        assert _wait(lambda: log.exists())
        with pytest.raises(StageBusy, match=rf"pid {child.pid}\b.*without --no-wait") as err:
            with hold_stage(out, wait=False):
                pass
        assert err.value.holder.pid == child.pid
        said: list[str] = []
        with hold_stage(out, report=said.append, poll_s=0.02) as h:
            assert h.waited and h.took_over is None
            assert log.read_text().count("out ") == 1, "took the lock while its holder still held it"
        assert child.wait(timeout=60) == 0
        assert len(said) == 1 and f"held by pid {child.pid}" in said[0]
    finally:
        child.kill()
        child.wait()


def test_dead_or_reused_pid_is_taken_over(tmp_path):
    out = tmp_path / "runs" / "r"
    dead = _dead_pid()
    _write_lock(out, dead, "12345")
    with hold_stage(out, wait=False) as h:
        assert h.took_over is not None and h.took_over.pid == dead
        assert read_holder(h.path).pid == os.getpid()
    # the pid is alive (our parent) but started at another time: another process has that pid now
    _write_lock(out, os.getppid(), "1")
    with hold_stage(out, wait=False) as h:
        assert h.took_over.pid == os.getppid()
    # the real parent (pid and start time match) is alive: refused
    _write_lock(out, os.getppid(), process_start(os.getppid()))
    with pytest.raises(StageBusy, match=f"pid {os.getppid()}"):
        with hold_stage(out, wait=False):
            pass


def test_holder_on_another_host_counts_as_alive(tmp_path):
    out = tmp_path / "runs" / "r"
    _write_lock(out, _dead_pid(), "1", host="some-other-host")
    with pytest.raises(StageBusy, match="on some-other-host") as err:
        with hold_stage(out, wait=False):
            pass
    assert str(lock_path(out)) in str(err.value)  # says which file to delete if that host's process is gone


@pytest.mark.parametrize("n", [4])
def test_waiters_on_a_stale_lock_never_hold_together(tmp_path, n):
    """A dead holder's lock and n processes started at once: each holds in turn, never two at a time."""
    out, log = tmp_path / "features" / "k", tmp_path / "log"
    _write_lock(out, _dead_pid(), "1")
    children = [_holder(out, log, 0.3) for _ in range(n)]
    try:
        assert all(c.wait(timeout=120) == 0 for c in children)
    finally:
        for c in children:
            c.kill()
    events = [line.split() for line in log.read_text().splitlines()]
    assert len(events) == 2 * n
    inside = 0
    for kind, pid, _t in sorted(events, key=lambda e: float(e[2])):
        inside += 1 if kind == "in" else -1
        assert inside in (0, 1), f"two holders at once: {events}"
    assert not lock_path(out).exists()


def test_in_use_leases_of_live_and_dead_processes(tmp_path):
    cache = tmp_path / "cache"
    with in_use(cache, [cache / "features" / "a", cache / "runs" / "b"]) as lease:
        got = paths_in_use(cache)
        assert set(got) == {cache / "features" / "a", cache / "runs" / "b"}
        assert got[cache / "runs" / "b"].pid == os.getpid()
    assert not lease.exists() and paths_in_use(cache) == {}
    dead = Holder(_dead_pid(), socket.gethostname(), "1", time.time(), what=json.dumps([str(cache / "x")]))
    stale = cache / ".in-use" / "stale.json"
    stale.write_text(dead.to_json())
    assert paths_in_use(cache) == {} and not stale.exists()  # a killed chain's lease is dropped


def _wait(pred, timeout: float = 60) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False
