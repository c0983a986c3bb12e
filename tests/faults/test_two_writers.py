"""Issue 8.6: two extractions into the same store at once: the second refuses (a lock), nothing interleaves.

1. A running `ecpa extract` (child) holds the store; a second extraction of the same config started
   while it runs refuses with a UserError naming the other process, writes nothing into the store, and
   the first one ends with a store equal to the reference, every clip written once.
2. Both start at the same moment on an empty cache: exactly one of them extracts, the other refuses
   (exit 2, one clear line, no traceback), and the store equals the reference.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from tests.faults._harness import (FAULT_CLIPS, Row, differing_clips, extract_command, logged_writes, read_done,
                                   read_log, report, spawn, store_path, wait_for)

_rows: list[tuple[str, bool]] = []


@pytest.fixture(scope="module", autouse=True)
def _summary_row():
    yield
    if _rows:
        report(Row("two writers on one store", len(_rows), len(_rows), 0, 0, 0, all(v for _, v in _rows),
                   "second writer refused (lock), store intact" if all(v for _, v in _rows) else "FAILED",
                   ", ".join(f"{n}: {'refused' if v else 'FAILED'}" for n, v in _rows)))


def _report(name: str, ok: bool) -> None:
    _rows.append((name, ok))


def test_second_writer_refused_while_first_runs(fault_reference, tmp_path):
    from pipeline.errors import UserError
    from pipeline.extract import stage as extract

    demo = fault_reference.demo
    cache = demo.cache("two_writers")
    cfg = demo.cfg(cache)
    store = store_path(cfg)
    ok = False
    try:
        first = spawn(extract_command(demo, cache), out=tmp_path / "first.out", log=tmp_path / "first.log")
        assert wait_for(lambda: first.poll() is not None or len(read_log(tmp_path / "first.log").finished) >= 1, 300)
        assert first.poll() is None, f"the first extraction ended before the second started:\n{first.output()[-2000:]}"
        done_before = read_done(store)
        second_log = tmp_path / "second.log"
        with logged_writes(second_log), pytest.raises(UserError) as err:
            extract.run(cfg)
        still_running = first.poll() is None
        assert read_log(second_log).started == [], "the refused writer wrote clips"
        msg = str(err.value)
        assert re.search(rf"pid {first.proc.pid}\b", msg), f"the refusal does not name the other process: {msg}"
        assert str(store) in msg, msg
        rc = first.wait()
        assert rc == 0, first.output()[-3000:]
        if still_running:
            assert read_done(store).sum() >= done_before.sum()
        log = read_log(tmp_path / "first.log")
        assert sorted(log.finished) == list(range(FAULT_CLIPS)), "the first writer did not finish every clip once"
        assert differing_clips(store, fault_reference.arrays) == {}
        ok = True
    finally:
        _report("second writer while the first runs", ok)


@pytest.mark.slow  # two more child starts; python -m tests.faults runs it
def test_simultaneous_start_one_extracts(fault_reference, tmp_path):
    demo = fault_reference.demo
    cache = demo.cache("two_writers_race")
    cfg = demo.cfg(cache)  # the manifest exists before both start (the race is for the store)
    store = store_path(cfg)
    ok = False
    try:
        a = spawn(extract_command(demo, cache), out=tmp_path / "a.out", log=tmp_path / "a.log")
        b = spawn(extract_command(demo, cache), out=tmp_path / "b.out", log=tmp_path / "b.log")
        codes = sorted([a.wait(), b.wait()])
        outs = {c.proc.returncode: c for c in (a, b)}
        if codes == [0, 0]:
            # allowed only when the second one started after the first had finished: then it reused the record
            logs = [read_log(tmp_path / f"{n}.log") for n in ("a", "b")]
            assert sorted(len(set(l.started)) for l in logs) == [0, FAULT_CLIPS], (
                "both writers extracted clips into one store")
        else:
            assert codes == [0, 2], f"exit codes {codes}:\n{a.output()[-2000:]}\n{b.output()[-2000:]}"
            loser = outs[2].output()
            assert "Traceback" not in loser, loser
            assert "another extraction" in " ".join(loser.split()), loser
            assert read_log(outs[2].log).started == [], "the refused writer wrote clips"
        assert np.asarray(read_done(store)).all()
        assert differing_clips(store, fault_reference.arrays) == {}
        ok = True
    finally:
        _report("two writers started together", ok)
