"""Stage two's data: cached tensors from the Zarr store joined with the manifest's captions and labels.

A store that fits in memory (by `train.ram_cache_gb`) is read once into RAM (one bulk read per array);
otherwise each item reads its clip's chunks (one chunk per clip) and DataLoader workers overlap the reads.
Items are (clip, caption) pairs for training and clips for validation/captioning.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pipeline.errors import CacheMismatchError
from pipeline.store import StoreShapes, open_store, validate_store

FEATURE_ARRAYS = {"vid": "vid/tokens", "er": "er/feats", "au_feats": "au/feats", "au_probs": "au/probs"}
"""Batch key -> store array that stage two reads."""


@dataclass
class ClipRef:
    """One manifest clip that the store holds (row = its index along the store's clip axis)."""

    id: str
    row: int
    captions: list[str]
    emotion: int


def store_bytes(shapes: StoreShapes, n: int) -> int:
    """Bytes the arrays stage two reads take in memory for `n` clips."""
    arr = shapes.arrays()
    total = 0
    for name in FEATURE_ARRAYS.values():
        shape, dtype = arr[name]
        total += int(np.prod(shape)) * np.dtype(dtype).itemsize
    return total * n


def match_clips(group, store_path, clips, splits: tuple[str, ...]) -> tuple[list[ClipRef], list[str]]:
    """The manifest clips of `splits` that the store holds and has marked done, in manifest order, and the
    ids of those it does not hold or did not finish (failed extraction: they are left out)."""
    ids = [str(x) for x in np.asarray(group["clip_id"][:])]
    done = np.asarray(group["done"][:])
    row_of = {c: i for i, c in enumerate(ids)}
    refs, skipped = [], []
    for c in clips:
        if c.split not in splits:
            continue
        row = row_of.get(c.id)
        if row is None or not done[row]:
            skipped.append(c.id)
            continue
        refs.append(ClipRef(c.id, row, list(c.captions), int(c.emotion_index)))
    return refs, skipped


class FeatureSource:
    """Per-clip feature arrays by store row, from RAM (bulk-loaded) or from Zarr chunk reads."""

    def __init__(self, store_path: Path | str, rows: list[int], in_memory: bool):
        self.store_path = str(store_path)
        self.in_memory = in_memory
        self._group = None
        self._mem: dict[str, np.ndarray] = {}
        self._pos: dict[int, int] = {}
        if in_memory and rows:
            g = open_store(self.store_path)
            order = sorted(set(rows))
            self._pos = {r: i for i, r in enumerate(order)}
            lo, hi = order[0], order[-1] + 1
            for key, name in FEATURE_ARRAYS.items():
                block = np.asarray(g[name][lo:hi])      # one bulk read (all chunks of the range)
                self._mem[key] = np.ascontiguousarray(block[[r - lo for r in order]])

    def __getstate__(self):  # DataLoader workers re-open the store themselves
        state = dict(self.__dict__)
        state["_group"] = None
        return state

    def get(self, row: int) -> dict[str, np.ndarray]:
        if self.in_memory:
            i = self._pos[row]
            return {k: v[i] for k, v in self._mem.items()}
        if self._group is None:
            self._group = open_store(self.store_path)
        return {k: np.asarray(self._group[name][row]) for k, name in FEATURE_ARRAYS.items()}


class CaptionPairs(Dataset):
    """Training items: one per (clip, caption) pair, caption pre-tokenised ([CLS] .. [SEP])."""

    def __init__(self, refs: list[ClipRef], source: FeatureSource, tokenizer, max_len: int):
        self.refs, self.source = refs, source
        self.pairs = [(i, tokenizer.encode(cap, max_len)) for i, r in enumerate(refs) for cap in r.captions]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: int) -> dict:
        i, ids = self.pairs[idx]
        r = self.refs[i]
        return {**self.source.get(r.row), "emotion": r.emotion, "input_ids": ids, "clip_id": r.id}


class Clips(Dataset):
    """Validation/caption items: one per clip (features, emotion, id)."""

    def __init__(self, refs: list[ClipRef], source: FeatureSource):
        self.refs, self.source = refs, source

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, idx: int) -> dict:
        r = self.refs[idx]
        return {**self.source.get(r.row), "emotion": r.emotion, "clip_id": r.id}


def collate(items: list[dict], pad_id: int = 0) -> dict:
    """Stack features (kept in their stored dtype), pad `input_ids` with `pad_id` to the longest in the batch."""
    out: dict = {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in FEATURE_ARRAYS}
    out["emotion"] = torch.tensor([it["emotion"] for it in items], dtype=torch.long)
    out["clip_id"] = [it["clip_id"] for it in items]
    if "input_ids" in items[0]:
        L = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), L), pad_id, dtype=torch.long)
        for b, it in enumerate(items):
            ids[b, : len(it["input_ids"])] = torch.tensor(it["input_ids"], dtype=torch.long)
        out["input_ids"] = ids
    return out


class EpochSampler(Sampler[int]):
    """Seeded data order: a permutation drawn from (seed, epoch), padded to a multiple of `world` and dealt
    to ranks round-robin. Same seed and epoch -> same order, so a resumed run sees the same batches."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed * 100003 + self.epoch)
        return g

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator()).tolist() if self.shuffle else list(range(self.n))
        per_rank = -(-self.n // self.world) if self.n else 0
        order = (order + order[: per_rank * self.world - self.n]) if self.n else order
        return iter(order[self.rank :: self.world])

    def __len__(self) -> int:
        return -(-self.n // self.world) if self.n else 0


def open_checked_store(store_path: Path | str, expect: StoreShapes | None = None) -> tuple[object, StoreShapes]:
    """Open and validate a store for training; raises CacheMismatchError explaining any mismatch."""
    path = Path(str(store_path))
    if "://" not in str(store_path) and not path.exists():
        raise CacheMismatchError(f"{path}: no feature store here; run `ecpa extract` first")
    g = open_store(store_path)
    shapes = validate_store(g, store_path, expect=expect)
    return g, shapes
