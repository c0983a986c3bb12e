"""Issue 8.1: SIGKILL an extraction at seeded random moments, resume each time.

Each trial kills a running `ecpa extract` (the real CLI in a child process) once, at a moment drawn
from a seeded generator: either a time after start (imports, manifest, extractor build, store
creation) or a number of clips finished plus a short random delay (mid-batch, mid-write). The next
trial resumes the same store (and is killed in turn); a final resume runs to the end. Then:

- every clip's done flag was set exactly once over all runs (no clip finished twice),
- no finished clip was written again (nothing finished recomputed),
- clips computed twice <= clips in flight (batch_size per kill),
- no finished clip was lost, and the store equals the uninterrupted reference array by array.

Default: 3 kills (CI). `python -m tests.faults` runs >= 10 (ECPA_FAULTS_TRIALS).
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from tests.faults._harness import (BATCH, FAULT_CLIPS, Row, differing_clips, extract_command, logged_writes, read_done,
                                   read_log, report, spawn, store_path, trials, wait_for)

CI_KILLS = 3


def _seconds_per_clip(ref) -> float:
    """The reference run's loop time per clip: kill delays scale with it (a fast machine finishes a
    12-clip run in a second, a loaded one in a minute)."""
    timings = ref.record.get("timings", {})
    return max(float(timings.get("loop_s", 1.0)) / FAULT_CLIPS, 0.01)


def _wait_for_clips(child, log, target: int) -> float:
    """Wait until the child has finished `target` clips (or exited); returns the last gap seen between
    two finished-clip lines (seconds), the pace the kill delay scales with."""
    last_n, last_t, gap = 0, time.monotonic(), 0.0
    while child.poll() is None:
        n = len(read_log(log).finished)
        if n != last_n:
            now = time.monotonic()
            if last_n:
                gap = (now - last_t) / (n - last_n)
            last_n, last_t = n, now
        if n >= target:
            break
        time.sleep(0.005)
    return gap


def kill_sequence(ref, seed: int, kills: int, name: str, extra: tuple[str, ...] = (),
                  first_mid_run: bool = False) -> dict:
    """Kill `kills` extraction runs of one cache in turn, then finish it; returns the counts. `extra`:
    more --set overrides (knobs only, e.g. extract.workers=1, so the store is the reference's).
    `first_mid_run`: the first kill waits for a few finished clips (a kill that leaves finished work)."""
    from pipeline.extract import stage as extract

    demo = ref.demo
    cache = demo.cache(name)
    logs = demo.work / f"{name}_logs"
    logs.mkdir(exist_ok=True)
    cfg = demo.cfg(cache, *extra)
    store = store_path(cfg)  # also writes the manifest, as the child's plan() would
    rng = np.random.default_rng(seed)

    per_clip = _seconds_per_clip(ref)
    landed, moments, done_at_kill = 0, [], []
    run_logs = []
    for k in range(kills):
        before = read_done(store)
        n_before = 0 if before is None else int(before.sum())
        if n_before == FAULT_CLIPS:
            break  # an earlier run finished on its own: nothing left to interrupt in this sequence
        log = logs / f"run{k}.log"
        child = spawn(extract_command(demo, cache, *extra), out=logs / f"run{k}.out", log=log)
        mid_run = first_mid_run and k == 0
        if not mid_run and (rng.random() < 0.2 or n_before >= FAULT_CLIPS - 1):
            delay = float(rng.uniform(0.2, 1.5))  # in start-up (imports, manifest, build, store creation)
            wait_for(lambda: child.poll() is not None, timeout=delay)
            moments.append(f"t+{delay:.1f}s")
        else:
            left = FAULT_CLIPS - n_before
            target = int(rng.integers(2, left - 2)) if mid_run else int(rng.integers(0, left))
            gap = _wait_for_clips(child, log, target) or per_clip
            lag = float(rng.uniform(0.0, 1.5)) * gap  # mid-batch, mid-write
            time.sleep(lag)
            moments.append(f"{target}clips+{lag:.2f}s")
        hit = child.kill()
        if not hit:
            rc = child.wait()
            assert rc == 0, f"run {k} exited {rc} before its kill:\n{child.output()[-3000:]}"
        landed += hit
        after = read_done(store)
        if before is not None:
            lost_here = np.flatnonzero(before & ~after)
            assert not len(lost_here), f"run {k} cleared done flags of finished clips {lost_here.tolist()}"
        if after is not None and hit:
            done_at_kill.append(after.copy())
        run_logs.append(read_log(log))

    # the final resume, in this process, counted the same way
    before = read_done(store)
    n_before = 0 if before is None else int(before.sum())
    final_log = logs / "final.log"
    with logged_writes(final_log):
        rec = extract.run(cfg)
    run_logs.append(read_log(final_log))

    started = Counter(i for r in run_logs for i in set(r.started))
    finished = Counter(i for r in run_logs for i in r.finished)
    redone = sorted({i for a, r in enumerate(run_logs) for i in r.finished
                     for later in run_logs[a + 1:] if i in later.started})
    recomputed = sum(c - 1 for c in started.values())
    end_done = read_done(store)
    lost = sorted({int(i) for d in done_at_kill for i in np.flatnonzero(d & ~end_done)})
    diffs = differing_clips(store, ref.arrays)
    lost = sorted(set(lost) | {i for rows in diffs.values() for i in rows})
    return {
        "landed": landed, "moments": moments, "recomputed": recomputed, "redone": redone, "lost": lost,
        "diffs": diffs, "finished": finished, "record": rec, "final_before": n_before,
        "final_computed": len(set(run_logs[-1].started)), "in_flight": BATCH * landed,
        "done_at_kills": [int(d.sum()) for d in done_at_kill], "kills": len(run_logs) - 1,
    }


def check_sequence(res: dict) -> None:
    assert res["redone"] == [], f"finished clips were computed again after a resume: {res['redone']}"
    twice = {i: n for i, n in res["finished"].items() if n != 1}
    missing = sorted(set(range(FAULT_CLIPS)) - set(res["finished"]))
    assert not twice and not missing, f"done set more than once: {twice}; never done: {missing}"
    assert res["lost"] == [], f"finished clips lost or changed (by array: {res['diffs']})"
    assert res["recomputed"] <= res["in_flight"], (
        f"{res['recomputed']} clips computed twice, more than the {res['in_flight']} in flight at the kills")
    counts = res["record"]["counts"]
    assert counts["done"] == FAULT_CLIPS and counts["failed"] == 0
    if "summary" not in res["record"]:  # the final run found the record fresh and reused it
        assert res["final_before"] == FAULT_CLIPS and res["final_computed"] == 0
        return
    # the final run's own record agrees with what it was seen to write
    assert counts["skipped"] == res["final_before"]
    assert counts["extracted"] == res["final_computed"] == FAULT_CLIPS - res["final_before"]


def run_kill_trials(ref, n_trials: int, seed: int = 8) -> Row:
    """`n_trials` kills over sequences of up to 3 kills each (each sequence ends with a full resume)."""
    rng = np.random.default_rng(seed)
    totals = Counter()
    notes, failures, done_at_kills = [], [], []
    left, seq = n_trials, 0
    while left > 0:
        kills = min(left, int(rng.integers(1, 4)))
        # full runs: every third sequence decodes in a worker pool (the pool dies with the group)
        extra = ("extract.workers=1",) if n_trials > CI_KILLS and seq % 3 == 1 else ()
        res = kill_sequence(ref, seed=int(rng.integers(1 << 30)), kills=kills, name=f"kill_seq{seq}", extra=extra,
                            first_mid_run=seq == 0)
        try:
            check_sequence(res)
        except AssertionError as e:
            failures.append(f"sequence {seq} ({', '.join(res['moments'])}): {e}")
        totals.update(trials=res["kills"], landed=res["landed"], lost=len(res["lost"]), recomputed=res["recomputed"],
                      in_flight=res["in_flight"])
        notes.append("/".join(res["moments"]) + (" (workers=1)" if extra else ""))
        done_at_kills += res["done_at_kills"]
        left -= max(res["kills"], 1)
        seq += 1
    row = Row("kill -9 during extraction", totals["trials"], totals["landed"], totals["lost"], totals["recomputed"],
              totals["in_flight"], not failures,
              f"{seq} resume sequences; store == uninterrupted run" if not failures else f"{len(failures)} failed",
              "; ".join(failures) or f"kill moments per sequence: {', '.join(notes)}")
    report(row)
    assert not failures, "\n".join(failures)
    # at least one kill must leave finished clips behind it, or "nothing finished recomputed" tests nothing
    assert any(0 < d < FAULT_CLIPS for d in done_at_kills), f"no kill landed mid-run (done at kills: {done_at_kills})"
    return row


def test_kill_during_extraction_resumes_exactly(fault_reference):
    row = run_kill_trials(fault_reference, trials(CI_KILLS))
    assert row.faults >= 1, "no kill landed on a running extraction: the trial tested nothing"
