"""Small helpers shared by this folder's own benchmarks (bench_store, bench_loader): MAFW-shaped random
clips, on-disk accounting, page-cache dropping. Not a benchmark itself."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.extract.store import StoreShapes

MAFW_SHAPES = StoreShapes(tokens=784, channels=1024, frames=32, er_dim=2048, emotions=11,
                          au_frames=8, aus=41, au_dim=512)
"""Per-clip shapes of the MAFW preset: 32x224^2 Swin-B tokens (16*7*7 = 784 x 1024), 32 ER frames,
8 AU frames x 41 OpenGraphAU units."""

SMALL_SHAPES = StoreShapes(tokens=98, channels=256, frames=8, er_dim=2048, emotions=11,
                           au_frames=4, aus=41, au_dim=512)
"""A quick variant for `--small` runs."""


def clip_bytes(shapes: StoreShapes, names: list[str] | None = None) -> int:
    """Uncompressed bytes of one clip's arrays (all of them, or `names`)."""
    arr = shapes.arrays()
    return sum(int(np.prod(s)) * np.dtype(d).itemsize for n, (s, d) in arr.items() if names is None or n in names)


def random_clip(rng: np.random.Generator, shapes: StoreShapes) -> dict[str, np.ndarray]:
    """One clip's arrays, values like real features (unit normal after a LayerNorm; probabilities in [0, 1]),
    so compressors see realistic (poorly compressible) data rather than zeros."""
    out = {}
    for name, (shape, dtype) in shapes.arrays().items():
        if name == "au/probs":
            out[name] = rng.random(shape, dtype=np.float32)
        elif name == "face/boxes":
            out[name] = (rng.random(shape, dtype=np.float32) * 224).astype(np.float32)
        else:
            out[name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    return out


def tree_stats(path: Path) -> tuple[int, int]:
    """(files, bytes allocated on disk) under `path` (a file or a folder)."""
    path = Path(path)
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return len(paths), sum(p.stat().st_blocks * 512 for p in paths)


def sync_and_drop(path: Path) -> None:
    """fsync every file under `path`, then ask the kernel to drop their cached pages (POSIX_FADV_DONTNEED),
    so the next read comes from disk (or at least from the hypervisor's cache: "cold-ish"). No root needed."""
    path = Path(path)
    for p in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
