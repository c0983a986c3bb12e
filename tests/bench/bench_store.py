"""Benchmark: the stage-one feature store as shipped (pipeline.extract.store: Zarr v3, one clip per chunk, no
compression, a CRC32C checksum appended to every chunk: codecs bytes + crc32c) against the two layouts other
video captioning projects ship: one .npy file per clip (and per array), and one HDF5 file (one chunked
dataset per array, one clip per chunk, uncompressed, no checksum, as h5py writes it by default).

The same random MAFW-shaped clips (784x1024 f16 tokens plus the ER/AU/face arrays) are written in each
layout, then every clip is read once in a random order: first "cold-ish" (files fsynced and their pages
dropped from the page cache with POSIX_FADV_DONTNEED; a VM's host may still cache them), then warm.
The Zarr store is read the way stage two reads it: pipeline.train.data.ClipReader (chunk files read
directly, checksum verified); the same store read through the zarr API (the path remote stores take) is a
diagnostic. Figures per layout: read MB/s (uncompressed bytes delivered / seconds), write seconds, files
created, bytes on disk.

    .venv/bin/python -m tests.bench.bench_store [--clips 48] [--small] [--dir /tmp/x]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.extract.store import StoreShapes, create_store
from pipeline.train.data import ClipReader   # imported here (it imports torch): not inside a timed read
from tests.bench._util import MAFW_SHAPES, SMALL_SHAPES, clip_bytes, random_clip, sync_and_drop, tree_stats

LAYOUTS = ("zarr", "zarr_api", "npy", "hdf5")
"""zarr: pipeline.extract.store as shipped (bytes + crc32c), read by ClipReader as stage two does; zarr_api: the same
store read through the zarr API (diagnostic: the remote-store path); npy: one file per clip and array; hdf5:
one file, one dataset per array chunked by clip."""


# ---------------------------------------------------------------- writers: (root, ids, clips) -> path
def _write_zarr(root: Path, ids: list[str], clips: list[dict], shapes: StoreShapes) -> Path:
    path = root / "store.zarr"
    g = create_store(path, ids, shapes, {"bench": True})
    arrays = {name: g[name] for name in shapes.arrays()}
    done = g["done"]
    for i, clip in enumerate(clips):          # as stage one writes: one clip's chunks, then done[i]
        for name, a in clip.items():
            arrays[name][i] = a
        done[i] = True
    return path


def _write_npy(root: Path, ids: list[str], clips: list[dict], shapes: StoreShapes) -> Path:
    path = root / "npy"
    for name in shapes.arrays():
        (path / name.replace("/", "_")).mkdir(parents=True, exist_ok=True)
    for cid, clip in zip(ids, clips):
        for name, a in clip.items():
            np.save(path / name.replace("/", "_") / f"{cid}.npy", a)
    return path


def _write_hdf5(root: Path, ids: list[str], clips: list[dict], shapes: StoreShapes) -> Path:
    import h5py

    path = root / "feats.h5"
    n = len(ids)
    with h5py.File(path, "w") as f:
        dsets = {name: f.create_dataset(name, shape=(n, *s), dtype=d, chunks=(1, *s))
                 for name, (s, d) in shapes.arrays().items()}
        for i, clip in enumerate(clips):
            for name, a in clip.items():
                dsets[name][i] = a
    return path


# ---------------------------------------------------------------- readers: read each clip in `order`
def _read_zarr(path: Path, order: list[int], ids: list[str], names: list[str]) -> int:
    """As stage two reads: ClipReader, array handles opened once, chunk files read directly (CRC32C checked)."""
    reader = ClipReader(path, {n: n for n in names})
    if set(reader.paths().values()) != {"direct"}:
        raise AssertionError(f"ClipReader does not read this store directly: {reader.paths()}")
    total = 0
    for i in order:
        for a in reader.read(i).values():
            total += a.nbytes
    return total


def _read_zarr_api(path: Path, order: list[int], ids: list[str], names: list[str]) -> int:
    """Through the zarr API (zarr.open_group, one __getitem__ per clip and array)."""
    import zarr

    g = zarr.open_group(str(path), mode="r")
    arrays = {name: g[name] for name in names}
    total = 0
    for i in order:
        for a in arrays.values():
            total += np.asarray(a[i]).nbytes
    return total


def _read_npy(path: Path, order: list[int], ids: list[str], names: list[str]) -> int:
    total = 0
    for i in order:
        for name in names:
            total += np.load(path / name.replace("/", "_") / f"{ids[i]}.npy").nbytes
    return total


def _read_hdf5(path: Path, order: list[int], ids: list[str], names: list[str]) -> int:
    import h5py

    total = 0
    with h5py.File(path, "r") as f:
        dsets = {name: f[name] for name in names}
        for i in order:
            for d in dsets.values():
                total += d[i].nbytes
    return total


def _codecs(path: Path) -> list[str]:
    """The codec chain of the store's video tokens, from its zarr.json (what 'as shipped' is)."""
    import json

    return [c["name"] for c in json.loads((path / "vid/tokens/zarr.json").read_text())["codecs"]]


WRITERS = {"zarr": _write_zarr, "zarr_api": _write_zarr, "npy": _write_npy, "hdf5": _write_hdf5}
READERS = {"zarr": _read_zarr, "zarr_api": _read_zarr_api, "npy": _read_npy, "hdf5": _read_hdf5}


def _check_equal(layout: str, path: Path, ids: list[str], clips: list[dict], names: list[str]) -> None:
    """Spot-check that the layout returns the bytes written (a benchmark of a wrong reader is worthless)."""
    for i in (0, len(ids) - 1):
        got: dict[str, np.ndarray] = {}
        if layout == "zarr":
            got = ClipReader(path, {n: n for n in names}).read(i)
        elif layout == "zarr_api":
            import zarr

            g = zarr.open_group(str(path), mode="r")
            got = {n: np.asarray(g[n][i]) for n in names}
        elif layout == "npy":
            got = {n: np.load(path / n.replace("/", "_") / f"{ids[i]}.npy") for n in names}
        else:
            import h5py

            with h5py.File(path, "r") as f:
                got = {n: f[n][i] for n in names}
        for n in names:
            if not np.array_equal(got[n], clips[i][n], equal_nan=True):
                raise AssertionError(f"{layout}: clip {i} array {n} reads back different values")


def run(n_clips: int, shapes: StoreShapes, root: Path, seed: int = 0, layouts=LAYOUTS) -> dict:
    rng = np.random.default_rng(seed)
    ids = [f"clip{i:05d}" for i in range(n_clips)]
    clips = [random_clip(rng, shapes) for _ in range(n_clips)]
    names = list(shapes.arrays())
    per_clip = clip_bytes(shapes)
    order = rng.permutation(n_clips).tolist()
    out: dict = {"clips": n_clips, "clip_mb": per_clip / 1e6, "data_mb": per_clip * n_clips / 1e6,
                 "shapes": shapes.__dict__, "layouts": {}}
    for layout in layouts:
        t0 = time.perf_counter()
        path = WRITERS[layout](root, ids, clips, shapes)
        t1 = time.perf_counter()
        sync_and_drop(path)                       # also makes the next read cold-ish
        t2 = time.perf_counter()
        files, disk = tree_stats(path)
        if layout.startswith("zarr"):
            out["codecs"] = _codecs(path)
        read = READERS[layout]
        c0 = time.perf_counter()
        got = read(path, order, ids, names)
        c1 = time.perf_counter()
        read(path, order, ids, names)             # warm: pages now cached
        w1 = time.perf_counter()
        if got != per_clip * n_clips:
            raise AssertionError(f"{layout}: read {got} bytes, expected {per_clip * n_clips}")
        _check_equal(layout, path, ids, clips, names)
        out["layouts"][layout] = {
            "write_s": t1 - t0, "fsync_s": t2 - t1, "files": files, "disk_mb": disk / 1e6,
            "read_cold_s": c1 - c0, "read_warm_s": w1 - c1,
            "read_cold_mb_s": got / 1e6 / (c1 - c0), "read_warm_mb_s": got / 1e6 / (w1 - c1),
            "read_cold_ms_per_clip": 1e3 * (c1 - c0) / n_clips,
        }
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return out


def report(res: dict) -> str:
    lines = [f"Zarr codecs as shipped: {' + '.join(res.get('codecs', ['?']))}",
             f"{res['clips']} clips x {res['clip_mb']:.2f} MB = {res['data_mb']:.0f} MB, every clip read once in random order",
             f"{'layout':10s} {'cold MB/s':>10s} {'warm MB/s':>10s} {'ms/clip':>8s} {'write s':>8s} {'fsync s':>8s} "
             f"{'files':>6s} {'disk MB':>8s}"]
    for name, r in res["layouts"].items():
        lines.append(f"{name:10s} {r['read_cold_mb_s']:10.0f} {r['read_warm_mb_s']:10.0f} {r['read_cold_ms_per_clip']:8.2f} "
                     f"{r['write_s']:8.2f} {r['fsync_s']:8.2f} {r['files']:6d} {r['disk_mb']:8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_store", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=48, help="clips written in each layout (default 48, ~100 MB)")
    ap.add_argument("--small", action="store_true", help="small per-clip shapes instead of MAFW's (quick check)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated subset of {','.join(LAYOUTS)}")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    layouts = [x for x in args.layouts.split(",") if x]
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown:
        ap.error(f"unknown layouts {unknown}; choose from {LAYOUTS}")
    shapes = SMALL_SHAPES if args.small else MAFW_SHAPES
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_store_", dir=args.dir) as tmp:
        res = run(args.clips, shapes, Path(tmp), seed=args.seed, layouts=layouts)
    print(report(res))
    return res


if __name__ == "__main__":
    main()
