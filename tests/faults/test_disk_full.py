"""Issue 8.7: the disk fills up during an extraction -> a clear error, nothing already written is lost,
and the same command resumes once there is space again.

Two ways to fill the disk:
- `rlimit` (always): the real `ecpa extract` in a child whose RLIMIT_FSIZE (SIGXFSZ ignored) is below the
  size of one au/feats chunk, so writing the first clip's AU features fails with EFBIG - the way a full
  disk fails with ENOSPC - after earlier runs had finished some clips.
- `tmpfs` (slow; needs root and mount): the cache on a tmpfs half the size the store needs, so a real
  ENOSPC hits in the middle of the run; the tmpfs is then grown and the extraction resumed.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.faults._harness import (BATCH, FAULT_CLIPS, Row, chunk_file, copy_cache, differing_clips, extract_command,
                                   logged_writes, read_arrays, read_done, read_log, report, spawn, store_path)

KEEP = 5
"""Clips done before the disk fills (rows 0..KEEP-1); the rest are left to do."""
FSIZE = 16 * 1024
"""Below an au/feats chunk of the fault config (~25 KB), above every other file the run writes."""


@dataclass
class Outcome:
    way: str
    message: str
    """What the user saw (child output, or the exception text)."""
    exit_code: int | None
    traceback: bool
    before: dict
    after_fail: dict
    errors_lines: list[str]
    resumed: list[int]
    """Rows the resumed run computed."""
    failed_started: list[int]
    """Rows the run that hit the full disk began to write."""
    final_diffs: dict
    record: dict


def _partial_cache(ref, name: str) -> tuple:
    """A copy of the reference cache with rows KEEP.. undone (done cleared, their chunks deleted) and
    no record: what an interrupted earlier run leaves."""
    import zarr

    demo = ref.demo
    cache = demo.work / name
    copy_cache(ref.cache_root, cache)
    cfg = demo.cfg(cache)
    store = store_path(cfg)
    g = zarr.open_group(str(store), mode="r+")
    for row in range(KEEP, FAULT_CLIPS):
        g["done"][row] = False
        for name_ in ("vid/tokens", "er/feats", "er/logits", "au/feats", "au/probs", "face/boxes"):
            chunk_file(store, name_, row).unlink()
    (store.parent / "stage.json").unlink()
    return cfg, cache, store


def _resume(cfg, log: Path):
    from pipeline.extract import stage as extract

    with logged_writes(log):
        rec = extract.run(cfg)
    return rec, sorted(set(read_log(log).started))


@pytest.fixture(scope="module")
def rlimit_outcome(fault_reference, tmp_path_factory) -> Outcome:
    tmp = tmp_path_factory.mktemp("disk_full_rlimit")
    cfg, cache, store = _partial_cache(fault_reference, "disk_full_rlimit")
    before = read_arrays(store)
    child = spawn(extract_command(fault_reference.demo, cache), out=tmp / "full.out", log=tmp / "full.log",
                  fsize=FSIZE)
    rc = child.wait()
    out = child.output()
    after = read_arrays(store)
    errors = store.parent / "errors.jsonl"
    lines = [x for x in errors.read_text().splitlines() if x.strip()] if errors.exists() else []
    rec, resumed = _resume(cfg, tmp / "resume.log")
    return Outcome("rlimit", out, rc, "Traceback" in out, before, after, lines, resumed,
                   sorted(set(read_log(tmp / "full.log").started)), differing_clips(store, fault_reference.arrays), rec)


def _check_nothing_lost(o: Outcome) -> None:
    assert o.exit_code != 0, f"the run did not notice the full disk:\n{o.message[-2000:]}"
    kept = o.before["done"]
    assert kept[:KEEP].all() and not kept[KEEP:].any()
    assert (o.after_fail["done"] & kept).sum() == kept.sum(), "done flags of finished clips were lost"
    for name in ("vid/tokens", "er/feats", "au/feats", "face/boxes"):
        rows = np.flatnonzero(kept)
        assert np.array_equal(o.after_fail[name][rows], o.before[name][rows], equal_nan=True), name
    assert o.errors_lines == [], f"the full disk was blamed on clips in errors.jsonl: {o.errors_lines}"
    # the resume computes exactly the clips not yet done, and the store then equals the reference
    not_done = [int(i) for i in np.flatnonzero(~o.after_fail["done"])]
    assert o.resumed == not_done, f"resume computed {o.resumed}, expected the undone {not_done}"
    assert o.final_diffs == {}, f"after the resume the store differs from the reference: {o.final_diffs}"
    assert o.record["counts"]["done"] == FAULT_CLIPS


def _check_clear_error(o: Outcome) -> None:
    assert o.exit_code in (2, None), f"exit {o.exit_code}, expected 2 (a user error)"
    assert not o.traceback, f"a traceback instead of a message:\n{o.message[-3000:]}"
    text = " ".join(o.message.split()).lower()
    assert any(w in text for w in ("no space", "disk full", "file too large", "space left")), o.message[-2000:]
    assert "rerun" in text or "resume" in text, f"the message does not say how to go on:\n{o.message[-2000:]}"


_rows: dict[str, dict[str, bool]] = {}
_outcomes: dict[str, Outcome] = {}


@pytest.fixture(scope="module", autouse=True)
def _summary_row():
    yield
    for way, checks in _rows.items():
        o = _outcomes[way]
        lost = int((o.before["done"] & ~o.after_fail["done"]).sum())
        recomputed = len(set(o.failed_started) & set(o.resumed))
        clear = "clear error" if checks.get("clear") else "raw traceback (fix pending)"
        report(Row(f"disk full during extraction ({way})", 1, 1, lost, recomputed, BATCH, all(checks.values()),
                   f"kept {int(o.after_fail['done'].sum())}, resumed {len(o.resumed)}; {clear}",
                   f"{way}: the failing run said: {' '.join(o.message.split())[-300:]}"))


def _report(way: str, check: str, ok: bool, o: Outcome) -> None:
    _rows.setdefault(way, {})[check] = ok
    _outcomes[way] = o


def test_disk_full_rlimit_loses_nothing_and_resumes(rlimit_outcome):
    ok = False
    try:
        _check_nothing_lost(rlimit_outcome)
        ok = True
    finally:
        _report("rlimit", "kept", ok, rlimit_outcome)


def test_disk_full_rlimit_clear_error(rlimit_outcome):
    ok = False
    try:
        _check_clear_error(rlimit_outcome)
        ok = True
    finally:
        _report("rlimit", "clear", ok, rlimit_outcome)


# ---- a real full disk (tmpfs) ----------------------------------------------------------------------

def _mount(path: Path, size_kb: int, remount: bool = False) -> None:
    opts = f"{'remount,' if remount else ''}size={size_kb}k"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True, capture_output=True)


def _used_kb(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize // 1024


@pytest.fixture(scope="module")
def tmpfs_outcome(fault_reference, tmp_path_factory) -> Outcome:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a tmpfs needs root and mount")
    tmp = tmp_path_factory.mktemp("disk_full_tmpfs")
    mnt = tmp / "mnt"
    mnt.mkdir()
    try:
        _mount(mnt, 16 * 1024)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot mount a tmpfs here: {e.stderr.decode(errors='replace').strip()}")
    try:
        # measure what the whole cache takes on this tmpfs, then give it about half of the store's share
        copy_cache(fault_reference.cache_root, mnt / "probe")
        full = _used_kb(mnt)
        shutil.rmtree(mnt / "probe")
        cfg, cache, store = _partial_cache(fault_reference, "disk_full_tmpfs_src")
        shutil.copytree(cache, mnt / "cache")
        base = _used_kb(mnt)
        cfg = fault_reference.demo.cfg(mnt / "cache")
        store = store_path(cfg)
        per_clip = (full - base) / (FAULT_CLIPS - KEEP)
        _mount(mnt, int(base + 3.5 * per_clip) + 4, remount=True)
        before = read_arrays(store)
        from pipeline.extract import stage as extract

        message, tb = "", False
        try:
            with logged_writes(tmp / "full.log"):
                extract.run(cfg)
            code = 0
        except Exception as e:  # what reaches the user: a UserError is clean, anything else a traceback
            from pipeline.errors import UserError

            message, tb = str(e), not isinstance(e, UserError)
            code = 2 if isinstance(e, UserError) else 1
            if not isinstance(e, UserError):
                assert isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG), repr(e)
        after = read_arrays(store)
        errors = store.parent / "errors.jsonl"
        lines = [x for x in errors.read_text().splitlines() if x.strip()] if errors.exists() else []
        _mount(mnt, 16 * 1024, remount=True)
        rec, resumed = _resume(cfg, tmp / "resume.log")
        out = Outcome("tmpfs", message, code, tb, before, after, lines, resumed,
                      sorted(set(read_log(tmp / "full.log").started)), differing_clips(store, fault_reference.arrays), rec)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    return out


@pytest.mark.slow
def test_disk_full_tmpfs_loses_nothing_and_resumes(tmpfs_outcome):
    ok = False
    try:
        o = tmpfs_outcome
        assert 0 < int(o.after_fail["done"].sum()) - KEEP < FAULT_CLIPS - KEEP, "the disk did not fill mid-run"
        _check_nothing_lost(o)
        ok = True
    finally:
        _report("tmpfs", "kept", ok, tmpfs_outcome)


@pytest.mark.slow
def test_disk_full_tmpfs_clear_error(tmpfs_outcome):
    ok = False
    try:
        _check_clear_error(tmpfs_outcome)
        ok = True
    finally:
        _report("tmpfs", "clear", ok, tmpfs_outcome)
