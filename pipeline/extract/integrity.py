"""Integrity of a feature store: which done clips can no longer be trusted, and why.

A store's `stage.json` says an extraction finished; it cannot say that the files stayed intact since. Damage seen
in the fault suite (tests/faults/test_damaged_cache.py): a chunk file deleted (zarr would read the fill value),
truncated or with bytes flipped (the crc32c codec of pipeline.extract.store catches those on decode), a done-flag chunk
overwritten, a whole array gone.

Two depths, both returning {store row: reason}:

- `check_store(g, path)` (cheap, what `ecpa status` and training run): every schema array present, the done
  flags readable (read in one go; on failure flag by flag, so an unreadable flag marks just its row), and every
  done row's chunk file present in every per-clip array. Stats files, decodes nothing but the flags.
- `check_store(g, path, full=True)` (`ecpa status --verify`, `ecpa extract --verify`): the same, plus every
  chunk of every done row decoded with its checksum verified (pipeline.train.data's direct chunk reader where it
  applies, the zarr API otherwise).

`verify_store` is the repair's check: it first recreates a missing array with the schema (all its rows then
count as damaged), so pipeline/extract/stage.py can clear the damaged rows' done flags and extract just those.
Rows that are not done are never damage: they are unfinished work a run resumes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.errors import CacheMismatchError
from pipeline.extract.store import StoreShapes, create_schema_array

PER_CLIP = ("done", *StoreShapes(0, 0, 0, 0, 0, 0, 0, 0).arrays())
"""The per-clip arrays of the schema (one chunk per clip), `done` first."""

REPAIR = "run `ecpa extract --verify` (same preset/--set) to recompute them"
"""The repair, as messages name it."""


def _local_root(path: Path | str) -> Path | None:
    s = str(path)
    if s.startswith("file://"):
        return Path(s[len("file://"):])
    return None if "://" in s else Path(s)


def _rows(g) -> int:
    """N, the clip axis length (from clip_id, else any per-clip array present)."""
    for name in ("clip_id", *PER_CLIP):
        if name in g:
            return int(g[name].shape[0])
    return 0


def _add(bad: dict[int, str], row: int, reason: str) -> None:
    bad[row] = f"{bad[row]}; {reason}" if row in bad else reason


def _chunk_key(arr, row: int) -> str:
    """The store key of clip `row`'s chunk of `arr` (relative to the array's folder)."""
    return arr.metadata.encode_chunk_key((row, *[0] * (arr.ndim - 1)))


def _chunk_exists(root: Path | None, arr, row: int) -> bool:
    key = _chunk_key(arr, row)
    if root is not None:
        return os.path.exists(os.path.join(root, arr.path, key))
    from zarr.core.sync import sync

    return bool(sync(arr.store.exists(f"{arr.path}/{key}")))


def read_done(g, bad: dict[int, str] | None = None) -> np.ndarray:
    """The done flags, read in one go; when that fails (a damaged flag chunk), flag by flag: an unreadable flag
    counts as not done and its row goes into `bad` with the reason."""
    arr = g["done"]
    try:
        return np.asarray(arr[:], dtype=bool)
    except (ValueError, RuntimeError, OSError):  # zarr's crc32c / codec errors: find the rows below
        pass
    done = np.zeros(arr.shape[0], dtype=bool)
    for row in range(arr.shape[0]):
        try:
            done[row] = bool(np.asarray(arr[row]))
        except (ValueError, RuntimeError, OSError) as e:
            if bad is not None:
                _add(bad, row, f"done flag unreadable ({type(e).__name__}: {e})")
    return done


def _decode_rows(g, root: Path | None, name: str, rows: list[int], bad: dict[int, str]) -> None:
    """Decode clip `rows`' chunks of array `name` with checksums verified; damaged rows go into `bad`."""
    from pipeline.train.data import DamagedChunk, direct_array

    direct = direct_array(root, name)[0] if root is not None else None
    arr = g[name]
    for row in rows:
        try:
            if direct is not None:
                direct.read(row)
            else:
                np.asarray(arr[row])
        except DamagedChunk as e:
            _add(bad, row, f"{name} chunk damaged ({e})")
        except (ValueError, RuntimeError, OSError) as e:   # zarr's crc32c / codec errors
            _add(bad, row, f"{name} chunk damaged ({type(e).__name__}: {e})")


def check_store(g, path: Path | str, *, full: bool = False) -> dict[int, str]:
    """{row: reason} for every clip of the open store `g` (at `path`) that cannot be trusted: all rows when a
    per-clip array is missing; a row whose done flag is unreadable; a done row lacking a chunk file of any
    per-clip array; with `full`, also a done row whose chunk does not decode or fails its checksum."""
    n = _rows(g)
    bad: dict[int, str] = {}
    missing = [name for name in PER_CLIP if name not in g]
    for name in missing:
        for row in range(n):
            _add(bad, row, f"array {name} missing")
    if "done" in missing:
        return bad
    done = read_done(g, bad)
    root = _local_root(path)
    present = [name for name in PER_CLIP if name not in missing and name != "done"]
    rows = [int(r) for r in np.flatnonzero(done)]
    for name in present:
        arr = g[name]
        for row in rows:
            if not _chunk_exists(root, arr, row):
                _add(bad, row, f"{name} chunk file missing")
    if full:  # the done flags of these rows were decoded above already
        for name in present:
            _decode_rows(g, root, name, rows, bad)
    return dict(sorted(bad.items()))


def verify_store(g, path: Path | str, shapes: StoreShapes | None = None,
                 clip_ids: list[str] | None = None) -> dict[int, str]:
    """The repair's full check of the open, writable store `g`: recreates a missing per-clip array with the
    schema (`shapes`, else the shapes of the arrays still there) and a missing clip_id array from `clip_ids`,
    then returns `check_store(full=True)` ({row: reason}; every row for a recreated array)."""
    n = _rows(g) or (len(clip_ids) if clip_ids is not None else 0)
    if "clip_id" not in g:
        if clip_ids is None:
            raise CacheMismatchError(f"{path}: the store lacks clip_id; rerun `ecpa extract --force` to rebuild it")
        ids = g.create_array("clip_id", shape=(n,), chunks=(max(n, 1),), dtype=str)
        if n:
            ids[:] = np.array(clip_ids, dtype=object).astype(str)
    missing = [name for name in PER_CLIP if name not in g]
    if missing and shapes is None:
        try:
            shapes = StoreShapes.from_group(g)
        except KeyError:
            raise CacheMismatchError(f"{path}: the store lacks {', '.join(missing)} and its shapes cannot be "
                                     "recovered from the rest; rerun `ecpa extract --force`") from None
    bad: dict[int, str] = {}
    for name in missing:
        create_schema_array(g, name, n, shapes)
        for row in range(n):
            _add(bad, row, f"array {name} was missing (recreated)")
    for row, reason in check_store(g, path, full=True).items():
        _add(bad, row, reason)
    return dict(sorted(bad.items()))


def clip_ids_of(g) -> list[str]:
    """The store's clip ids, or row placeholders where they cannot be read (describe() names rows then)."""
    try:
        return [str(x) for x in np.asarray(g["clip_id"][:])]
    except (KeyError, ValueError, RuntimeError, OSError):
        return [f"<row {i}>" for i in range(_rows(g))]


def describe(bad: dict[int, str], ids: list[str], limit: int = 5) -> str:
    """'3 clips: a (vid/tokens chunk file missing), b (...), ... and 1 more' for messages."""
    if not bad:
        return "no damaged clips"
    reasons = set(bad.values())
    if len(bad) > limit and len(reasons) == 1:
        return f"{len(bad)} clips ({reasons.pop()})"
    shown = [f"{ids[r] if r < len(ids) else f'<row {r}>'} ({why})" for r, why in list(bad.items())[:limit]]
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{len(bad)} clip{'s' if len(bad) != 1 else ''}: {', '.join(shown)}{more}"


def require_intact(g, path: Path | str) -> None:
    """The cheap check for a reader (training): raises CacheMismatchError naming the damaged clips and the
    repair, before anything is read as features."""
    bad = check_store(g, path)
    if bad:
        ids = clip_ids_of(g)
        raise CacheMismatchError(f"{path}: the feature store is damaged, {describe(bad, ids)}; {REPAIR}")
