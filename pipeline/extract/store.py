"""The stage-one feature store: one Zarr v3 group per extraction (DESIGN.md, "Cache layout").

N clips along the first axis of every array, one clip per chunk, so concurrent writers (dask
workers) never share a chunk and need no locks. `done[i]` is written after clip i's arrays, so a
reader or a resumed run trusts exactly the clips marked done.

| array        | shape              | dtype |
|--------------|--------------------|-------|
| clip_id      | (N,)               | str   |
| done         | (N,)               | bool  |
| vid/tokens   | (N, L, C)          | f16   |  L = T/2 * (S/32)^2 Video Swin tokens
| er/feats     | (N, F, 2048)       | f16   |
| er/logits    | (N, F, E)          | f32   |
| au/feats     | (N, F_au, A, 512)  | f16   |
| au/probs     | (N, F_au, A)       | f32   |
| face/boxes   | (N, F, 4)          | f32   |  x0, y0, x1, y1 of the square face crop in centre-crop pixels
                                                 (may reach outside [0, crop]: crops come from the full frame);
                                                 NaN only for clips that are not done
| face/source  | (N, F)             | u1    |  how each frame's box was found: FACE_SOURCES (255: not done)
| fingerprint  | (N,)               | str   |  the clip's video identity (pipeline.data.fingerprint), written by
                                                 the driver before the clip is (re)extracted; one chunk, like
                                                 clip_id (workers never write either)

Rows follow the manifest as it was when each clip was first extracted: a later run appends rows for new
clips (`sync_rows`), clears `done` of clips whose video changed, and keeps the rows of clips the manifest
no longer names (ignored by readers, which look clips up by id; fresh again if the clip comes back
unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import CacheMismatchError

STORE_NAME = "store.zarr"
SCHEMA_VERSION = 2

FACE_SOURCES = ("detected", "tracked", "interpolated", "fallback")
"""Codes of face/source, by index: a detector found the face in this frame; the box follows the face track
from a detection in another frame (the skin detector near the track, a box file's neighbour); interpolated
between the found frames of the track; the fallback box (no face anywhere in the clip: pipeline.extract.faces)."""
SOURCE_UNSET = 255


@dataclass(frozen=True)
class StoreShapes:
    """Per-clip shapes of a store (everything after the clip axis)."""

    tokens: int          # L video tokens
    channels: int        # C
    frames: int          # F frames seen by ResNet50-ER (= sampled frames)
    er_dim: int          # 2048
    emotions: int        # E
    au_frames: int       # F_au
    aus: int             # A
    au_dim: int          # 512

    def arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (per-clip shape, dtype)."""
        return {
            "vid/tokens": ((self.tokens, self.channels), "float16"),
            "er/feats": ((self.frames, self.er_dim), "float16"),
            "er/logits": ((self.frames, self.emotions), "float32"),
            "au/feats": ((self.au_frames, self.aus, self.au_dim), "float16"),
            "au/probs": ((self.au_frames, self.aus), "float32"),
            "face/boxes": ((self.frames, 4), "float32"),
            "face/source": ((self.frames,), "uint8"),
        }

    @classmethod
    def from_group(cls, g) -> "StoreShapes":
        t, e, a = g["vid/tokens"].shape, g["er/feats"].shape, g["au/feats"].shape
        return cls(tokens=t[1], channels=t[2], frames=e[1], er_dim=e[2], emotions=g["er/logits"].shape[2],
                   au_frames=a[1], aus=a[2], au_dim=a[3])


def _compressors():
    from zarr.codecs import Crc32cCodec

    # No compression, only a CRC32C checksum appended to every chunk (codecs: bytes -> crc32c). Blosc-lz4 gained
    # 1.00x on these f16/f32 features and cost encode/decode time; the checksum keeps a damaged chunk from being
    # read as valid data (zarr and pipeline.train.data's direct chunk reader both verify it on every read).
    return [Crc32cCodec()]


WRITE_EMPTY_CHUNKS = {"write_empty_chunks": True}
"""Runtime array config of every store array: zarr v3 skips a chunk that equals the fill value by default, so a
done clip whose chunk happens to be all fill would have no chunk file, and a missing chunk file could not be told
from a deleted one. With every chunk written, a done clip without a chunk file is damage
(pipeline.extract.integrity)."""


def write_every_chunk() -> None:
    """Make every zarr array opened from now on in this process write chunks equal to the fill value too.
    zarr keeps `write_empty_chunks` as runtime config, not in zarr.json, so an array opened again (a resumed
    run, `g[name]` on a reopened group) would fall back to skipping them; this sets zarr's process default.
    Called by create_store and by open_store for writing modes."""
    import zarr

    if not zarr.config.get("array.write_empty_chunks"):
        zarr.config.set({"array.write_empty_chunks": True})


def schema_arrays(shapes: StoreShapes) -> dict[str, tuple[tuple[int, ...], str, Any]]:
    """Per-clip arrays of the schema: name -> (per-clip shape, dtype, fill value); `done` first."""
    out: dict[str, tuple[tuple[int, ...], str, Any]] = {"done": ((), "bool", False)}
    for name, (shape, dtype) in shapes.arrays().items():
        out[name] = (shape, dtype, {"face/boxes": np.nan, "face/source": SOURCE_UNSET}.get(name, 0))
    return out


def create_schema_array(g, name: str, n: int, shapes: StoreShapes):
    """Create (or replace) the per-clip array `name` of the schema for `n` clips, all at its fill value
    (`done`: False). Used by create_store and by `ecpa extract --verify` to rebuild a missing array."""
    shape, dtype, fill = schema_arrays(shapes)[name]
    write_every_chunk()
    return g.create_array(name, shape=(n, *shape), chunks=(1, *shape), dtype=dtype, fill_value=fill,
                          compressors=_compressors(), config=WRITE_EMPTY_CHUNKS, overwrite=True)


def _write_strings(g, name: str, values: list[str]) -> None:
    """(Re)write the one-chunk string array `name` (clip_id, fingerprint) with `values`, growing it as needed."""
    n = len(values)
    if name not in g:
        g.create_array(name, shape=(n,), chunks=(max(n, 1),), dtype=str)
    arr = g[name]
    if arr.shape[0] != n:
        arr.resize((n,))
    if n:
        arr[:] = np.array(values, dtype=object).astype(str)


def create_store(path: Path | str, clip_ids: list[str], shapes: StoreShapes, attrs: dict[str, Any],
                 fingerprints: list[str] | None = None):
    """Create an empty store for `clip_ids` (all `done=False`) and return the open group. `fingerprints`: each
    clip's video fingerprint (pipeline.data.fingerprint), '' when not given.

    `path` may be a local path or any fsspec URL zarr understands (e.g. 'memory://x', 's3://...')."""
    import zarr

    n = len(clip_ids)
    write_every_chunk()
    g = zarr.open_group(str(path), mode="w")
    _write_strings(g, "clip_id", list(clip_ids))
    _write_strings(g, "fingerprint", list(fingerprints) if fingerprints is not None else [""] * n)
    for name in schema_arrays(shapes):
        create_schema_array(g, name, n, shapes)
    g.attrs.update({**attrs, "schema_version": SCHEMA_VERSION})
    return g


@dataclass
class RowSync:
    """What `sync_rows` changed: clip ids added (new rows), redone (video changed: done cleared), dropped (rows
    of clips the manifest no longer names, kept), and the row of every manifest clip."""

    added: list[str]
    redone: list[str]
    dropped: list[str]
    rows: dict[str, int]


def store_fingerprints(g) -> list[str]:
    """The fingerprint array as strings ('' per row in a store that has none)."""
    if "fingerprint" not in g:
        return [""] * int(g["clip_id"].shape[0])
    return [str(x) for x in np.asarray(g["fingerprint"][:])]


def sync_rows(g, fingerprints: dict[str, str], dry_run: bool = False) -> RowSync:
    """Make the open, writable store `g` ready for the manifest clips `fingerprints` (id -> fingerprint): a
    clip the store lacks gets a new row (all arrays grown, done False); a clip whose stored fingerprint differs
    has its done flag cleared *before* its new fingerprint is written (a kill in between leaves it not done:
    resumed, never trusted). Clips whose fingerprint matches keep their row untouched, done or not (a partial
    run resumes them). `dry_run`: only report (for `ecpa status`)."""
    ids = [str(x) for x in np.asarray(g["clip_id"][:])]
    old_fps = store_fingerprints(g)
    row_of = {c: i for i, c in enumerate(ids)}
    added = [c for c in fingerprints if c not in row_of]
    redone = [c for c in fingerprints if c in row_of and old_fps[row_of[c]] != fingerprints[c]]
    dropped = [c for c in ids if c not in fingerprints]
    rows = {c: row_of.get(c, -1) for c in fingerprints}
    for i, c in enumerate(added):
        rows[c] = len(ids) + i
    if dry_run or not (added or redone):
        return RowSync(added, redone, dropped, rows)
    done = g["done"]
    for c in redone:
        done[row_of[c]] = False
    if added:
        n = len(ids) + len(added)
        for name in [k for k in g.array_keys() if k not in ("clip_id", "fingerprint")] + \
                [f"{grp}/{k}" for grp in g.group_keys() for k in g[grp].array_keys()]:
            arr = g[name]
            arr.resize((n, *arr.shape[1:]))
        _write_strings(g, "clip_id", ids + added)
    new_fps = old_fps + [""] * len(added)
    for c in redone + added:
        new_fps[rows[c]] = fingerprints[c]
    _write_strings(g, "fingerprint", new_fps)
    return RowSync(added, redone, dropped, rows)


def clip_states(g, fingerprints: dict[str, str]) -> dict[str, int]:
    """Counts of the manifest clips `fingerprints` (id -> fingerprint) against the store `g`: fresh (done, same
    fingerprint), stale (in the store for another version of the video), missing (not in the store, or not
    done: never extracted, failed, or interrupted), and dropped (store rows of clips the manifest no longer has)."""
    ids = [str(x) for x in np.asarray(g["clip_id"][:])]
    fps = store_fingerprints(g)
    done = np.asarray(g["done"][:], dtype=bool)
    row_of = {c: i for i, c in enumerate(ids)}
    out = {"fresh": 0, "stale": 0, "missing": 0, "dropped": sum(c not in fingerprints for c in ids)}
    for c, fp in fingerprints.items():
        row = row_of.get(c)
        if row is None:
            out["missing"] += 1
        elif fps[row] != fp:
            out["stale"] += 1
        else:
            out["fresh" if done[row] else "missing"] += 1
    return out


def open_store(path: Path | str, mode: str = "r"):
    """Open an existing store; a missing or unreadable one raises CacheMismatchError naming it."""
    import zarr

    if mode != "r":
        write_every_chunk()
    try:
        return zarr.open_group(str(path), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError if hasattr(zarr.errors, "GroupNotFoundError") else FileNotFoundError) as e:
        raise CacheMismatchError(f"{path}: no feature store here ({e}); run `ecpa extract` first") from None


def validate_store(g, path: Path | str, expect: StoreShapes | None = None, require_all_done: bool = False) -> StoreShapes:
    """Check that the group has every array with consistent shapes (and `expect`'s shapes when given).
    Raises CacheMismatchError explaining what is wrong and how to repair it."""
    missing = [name for name in ("clip_id", "fingerprint", "done", *StoreShapes(0, 0, 0, 0, 0, 0, 0, 0).arrays())
               if name not in g]
    if missing:
        raise CacheMismatchError(
            f"{path}: the store lacks {', '.join(missing)}; it was not written by this version of stage one "
            "or was damaged - delete it and rerun `ecpa extract`"
        )
    n = g["clip_id"].shape[0]
    shapes = StoreShapes.from_group(g)
    for name, (shape, _) in shapes.arrays().items():
        if g[name].shape != (n, *shape):
            raise CacheMismatchError(f"{path}: {name} has shape {g[name].shape}, expected {(n, *shape)}")
    if expect is not None and shapes != expect:
        diffs = [f"{k}: store {getattr(shapes, k)} vs expected {getattr(expect, k)}"
                 for k in shapes.__dataclass_fields__ if getattr(shapes, k) != getattr(expect, k)]
        raise CacheMismatchError(f"{path}: store shapes do not fit this run ({'; '.join(diffs)})")
    if require_all_done:
        done = g["done"][:]
        if not done.all():
            bad = [str(c) for c in np.asarray(g["clip_id"][:])[~done][:5]]
            raise CacheMismatchError(
                f"{path}: {int((~done).sum())} of {n} clips are not extracted (e.g. {', '.join(bad)}); "
                "rerun `ecpa extract` to finish them"
            )
    return shapes
