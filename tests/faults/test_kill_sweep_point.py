"""Issue 15: SIGKILL one point of a parallel sweep (`ecpa sweep --jobs 2`): the other points finish, the sweep
names the failed point and its log (exit 2), and rerunning the same sweep runs only that point."""
from __future__ import annotations

import csv
import os
import re
import signal

import pytest

from tests.faults._harness import Row, copy_cache, report, spawn, wait_for
from tests.faults.test_concurrent_chains import CHAIN_SETS, holds, plans

POINTS = ["1", "2", "3"]
VICTIM = "2"


def sweep_command(demo, cache) -> list[str]:
    cmd = ["ecpa", "sweep", "--preset", "demo", "--no-progress", "--jobs", "2", f"model.top_k={','.join(POINTS)}"]
    for s in demo.sets(cache, *CHAIN_SETS, "train.epochs=10"):
        cmd += ["--set", s]
    return cmd


@pytest.mark.slow  # three short trainings, two at a time, then the rerun
def test_killed_point_is_the_only_one_redone(fault_reference, tmp_path):
    from pipeline.chain.locks import lock_path, read_holder

    demo = fault_reference.demo
    cache = demo.work / "kill_sweep_point"
    copy_cache(fault_reference.cache_root, cache)        # the shared extraction is done
    victim = plans(demo, cache, "train.epochs=10", f"model.top_k={VICTIM}")
    ok, note = False, ""
    try:
        s = spawn(sweep_command(demo, cache), out=tmp_path / "sweep1.out")
        holder = lambda: read_holder(lock_path(victim["train"].out_dir))  # noqa: E731
        assert wait_for(lambda: (holder() is not None and (victim["train"].out_dir / "config.yaml").exists())
                        or s.poll() is not None, 600), s.output()[-3000:]
        pid = holder().pid
        assert pid != s.proc.pid, "the point ran inside the sweep process, not as its own child"
        os.kill(pid, signal.SIGKILL)
        assert s.wait() == 2, s.output()[-3000:]
        text = " ".join(s.output().split())
        assert f"1 of {len(POINTS)} sweep points failed" in text, text[-3000:]
        log = re.search(r"model\.top_k=2: exit -9, log (\S+)", text)
        assert log and os.path.exists(log.group(1)), text[-3000:]
        sweep_dir = cache / "demo" / "sweeps" / "model.top_k"
        logs = {p.name: p.stat().st_size for p in (sweep_dir / "logs").iterdir()}
        assert len(logs) == 3
        with open(sweep_dir / "sweep.csv") as f:
            assert sorted(r["model.top_k"] for r in csv.DictReader(f)) == ["1", "3"]

        again = spawn(sweep_command(demo, cache), out=tmp_path / "sweep2.out")
        assert again.wait() == 0, again.output()[-3000:]
        assert "2 point(s) already finished, 1 to run" in " ".join(again.output().split())
        grown = {p.name for p in (sweep_dir / "logs").iterdir() if p.stat().st_size != logs[p.name]}
        assert grown == {os.path.basename(log.group(1))}, grown
        with open(sweep_dir / "sweep.csv") as f:
            assert sorted(r["model.top_k"] for r in csv.DictReader(f)) == POINTS
        assert all(p.status() == "fresh" for p in victim.values())
        ok, note = True, "the other points finished; the rerun ran only the killed one"
    finally:
        report(Row("kill one sweep point (--jobs 2)", 1, 1, 0, 0, 0, ok, note or "FAILED: see pytest"))
