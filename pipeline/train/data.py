"""Stage two's data: cached tensors from the Zarr store joined with the manifest's captions and labels.

Items are (clip, caption) pairs for training and clips for validation/captioning. `plan_loading` decides how
features come in, from the bytes of the rows actually used (train + val, not the whole store):

- in RAM: the rows fit `train.ram_cache_gb`; they are read once into RAM and batches are sliced from there.
- streaming: each item reads its clip's chunks (one chunk per clip and array) and DataLoader workers overlap
  the reads with compute (`train.num_workers`; 0 becomes min(2, CPUs) when streaming, said once).

Either way a clip is read by `ClipReader`: array handles opened once per process (lazily, so DataLoader workers
re-open after fork/spawn) and, for local stores in the layout pipeline.extract.store writes, a direct path that reads
the chunk file and decodes it with the codec pipeline recorded in the array's zarr.json (bytes, crc32c, blosc,
zstd, gzip), verifying the CRC32C checksum as zarr does. Anything else (remote fsspec stores, sharding,
transpose, other key encodings) goes through the zarr API; the path taken is logged once at debug level. Both
paths give byte-identical arrays (tests/pipeline/test_train_data.py). A damaged chunk (checksum mismatch,
truncated) raises CacheMismatchError naming the clip and the repair.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pipeline.errors import CacheMismatchError
from pipeline.extract.store import StoreShapes, open_store, validate_store

log = logging.getLogger(__name__)

FEATURE_ARRAYS = {"vid": "vid/tokens", "er": "er/feats", "au_feats": "au/feats", "au_probs": "au/probs"}
"""Batch key -> store array that stage two reads."""

STREAM_WORKERS = 2
"""DataLoader workers used when the store streams and `train.num_workers` is 0 (capped by the CPU count)."""

STREAM_PREFETCH = 4
"""Batches each streaming worker keeps ready (DataLoader prefetch_factor)."""


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


@dataclass(frozen=True)
class LoadPlan:
    """How stage two feeds a store: in RAM or streamed, and the DataLoader options that go with it."""

    in_memory: bool
    bytes_used: int          # bytes of the feature arrays of the distinct rows used
    num_workers: int
    note: str                # one line for the log/summary when a default was applied, else ""

    def loader_kwargs(self) -> dict:
        """num_workers / persistent_workers / prefetch_factor for torch's DataLoader."""
        w = self.num_workers
        return {"num_workers": w, "persistent_workers": w > 0,
                "prefetch_factor": (STREAM_PREFETCH if not self.in_memory else 2) if w > 0 else None}


_said: set[str] = set()


def _once(level: int, msg: str) -> None:
    if msg not in _said:
        _said.add(msg)
        log.log(level, msg)


def plan_loading(shapes: StoreShapes, rows: list[int], ram_cache_gb: float, num_workers: int) -> LoadPlan:
    """In RAM when the distinct `rows` used fit `ram_cache_gb` GiB, else streamed. A streamed store with
    `num_workers` 0 gets min(STREAM_WORKERS, CPUs) workers (logged once): reads then overlap compute."""
    used = store_bytes(shapes, len(set(rows)))
    in_memory = used <= ram_cache_gb * 2**30
    workers, note = int(num_workers), ""
    if not in_memory and workers == 0:
        workers = max(1, min(STREAM_WORKERS, os.cpu_count() or 1))
        note = (f"features of {len(set(rows))} clips ({used / 2**30:.1f} GiB) exceed train.ram_cache_gb="
                f"{ram_cache_gb:g}: streaming from the store with {workers} DataLoader workers "
                "(train.num_workers was 0)")
        _once(logging.INFO, note)
    return LoadPlan(in_memory, used, workers, note)


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


# ---- reading one clip's chunk ----

class DamagedChunk(Exception):
    """A chunk file that does not decode (checksum mismatch, wrong size, codec error); turned into a
    CacheMismatchError naming the clip by ClipReader."""


def _local_root(store_path: str) -> Path | None:
    """The folder of a local store, or None for a remote fsspec URL (those go through zarr)."""
    if store_path.startswith("file://"):
        return Path(store_path[len("file://"):])
    return None if "://" in store_path else Path(store_path)


def _crc32c_check(buf) -> np.ndarray:
    """Strip and verify the 4-byte little-endian CRC32C that zarr's crc32c codec appends."""
    import google_crc32c  # zarr's own Crc32cCodec needs it too

    data = np.frombuffer(buf, np.uint8)       # a view (google_crc32c refuses memoryviews, takes arrays)
    if data.size < 4:
        raise DamagedChunk(f"{data.size} bytes, shorter than its checksum")
    inner = data[:-4]
    if google_crc32c.value(inner) != int.from_bytes(data[-4:].tobytes(), "little"):
        raise DamagedChunk("CRC32C checksum mismatch")
    return inner


def _numcodecs_decoder(name: str) -> Callable:
    import numcodecs

    codec = {"blosc": numcodecs.Blosc, "zstd": numcodecs.Zstd, "gzip": numcodecs.GZip}[name]()

    def decode(buf):
        try:
            return codec.decode(buf)
        except (RuntimeError, ValueError, OSError) as e:   # what numcodecs raises on a corrupt frame
            raise DamagedChunk(f"{name} cannot decode it ({e})") from None
    return decode


_BYTES_CODECS = {"crc32c": lambda: _crc32c_check, "blosc": lambda: _numcodecs_decoder("blosc"),
                 "zstd": lambda: _numcodecs_decoder("zstd"), "gzip": lambda: _numcodecs_decoder("gzip")}
"""Bytes-to-bytes codecs the direct reader decodes (zarr v3 names)."""


@dataclass
class _DirectArray:
    """One array's direct chunk reader: chunk (row, 0, 0, ...) lives at folder/<key>, decoded by `decoders`
    (applied in order: the reverse of zarr.json's codec list) and viewed as `dtype` with `shape`."""

    folder: Path
    key: Callable[[int], str]
    decoders: list[Callable]
    dtype: np.dtype
    shape: tuple[int, ...]

    def read(self, row: int) -> np.ndarray | None:
        """The clip's chunk, or None if the chunk file does not exist (zarr then gives the fill value)."""
        f = self.folder / self.key(row)
        try:
            with open(f, "rb", buffering=0) as fh:
                buf = bytearray(os.fstat(fh.fileno()).st_size)   # writable, one copy from the kernel
                view, n = memoryview(buf), 0
                while n < len(buf):
                    got = fh.readinto(view[n:])
                    if not got:
                        raise DamagedChunk(f"short read ({n} of {len(buf)} bytes)")
                    n += got
        except FileNotFoundError:
            return None
        data = buf
        for dec in self.decoders:
            data = dec(data)
        need = int(np.prod(self.shape)) * self.dtype.itemsize
        mv = memoryview(data).cast("B")
        if mv.nbytes != need:
            raise DamagedChunk(f"{mv.nbytes} bytes decoded, {need} expected")
        out = np.frombuffer(mv, dtype=self.dtype).reshape(self.shape)
        if not out.dtype.isnative:
            out = out.astype(out.dtype.newbyteorder("="))
        elif not out.flags.writeable:
            out = out.copy()
        return out


def direct_array(root: Path, name: str) -> tuple[_DirectArray | None, str]:
    """A direct reader of array `name` of the local store at `root`, or (None, why not) when its zarr.json
    describes anything this reader does not handle exactly like zarr."""
    try:
        meta = json.loads((root / name / "zarr.json").read_text())
    except (OSError, ValueError) as e:
        return None, f"zarr.json unreadable ({e})"
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        return None, "not a zarr v3 array"
    if meta.get("storage_transformers"):
        return None, "storage transformers"
    shape = list(meta.get("shape", []))
    grid = meta.get("chunk_grid", {})
    chunks = grid.get("configuration", {}).get("chunk_shape")
    if grid.get("name") != "regular" or not shape or chunks != [1, *shape[1:]]:
        return None, f"chunks {chunks} of shape {shape} are not one clip each"
    try:
        dtype = np.dtype(meta.get("data_type"))
    except TypeError:
        return None, f"data type {meta.get('data_type')!r}"
    if dtype.kind not in "biuf":
        return None, f"data type {meta.get('data_type')!r}"
    enc = meta.get("chunk_key_encoding", {})
    sep = enc.get("configuration", {}).get("separator")
    tail = [0] * (len(shape) - 1)
    if enc.get("name") == "default":
        sep = sep or "/"
        key = lambda row, s=sep: s.join(["c", str(row), *map(str, tail)])  # noqa: E731
    elif enc.get("name") == "v2":
        sep = sep or "."
        key = lambda row, s=sep: s.join([str(row), *map(str, tail)])  # noqa: E731
    else:
        return None, f"chunk key encoding {enc.get('name')!r}"
    codecs = meta.get("codecs", [])
    if not codecs or codecs[0].get("name") != "bytes":
        return None, f"codecs {[c.get('name') for c in codecs]} do not start with 'bytes'"
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    if endian not in ("little", "big"):
        return None, f"endian {endian!r}"
    rest = [c.get("name") for c in codecs[1:]]
    if any(c not in _BYTES_CODECS for c in rest):
        return None, f"codecs {['bytes', *rest]} (direct reader knows bytes + {', '.join(_BYTES_CODECS)})"
    decoders = [_BYTES_CODECS[c]() for c in reversed(rest)]
    dtype = dtype.newbyteorder("<" if endian == "little" else ">") if dtype.itemsize > 1 else dtype
    return _DirectArray(root / name, key, decoders, dtype, tuple(shape[1:])), "direct"


class ClipReader:
    """Reads one clip's arrays (`names`: batch key -> store array) by store row. Handles are opened lazily
    once per process (a forked or spawned DataLoader worker opens its own). `direct=None` picks the direct
    chunk reader wherever it applies, True requires it, False always uses the zarr API."""

    def __init__(self, store_path: Path | str, names: dict[str, str] | None = None, direct: bool | None = None):
        self.store_path = str(store_path)
        self.names = dict(FEATURE_ARRAYS if names is None else names)
        self.direct = direct
        self._pid: int | None = None
        self._group = None
        self._arrays: dict = {}
        self._direct: dict[str, _DirectArray] = {}

    def __getstate__(self):
        return {**self.__dict__, "_pid": None, "_group": None, "_arrays": {}, "_direct": {}}

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        self._group = open_store(self.store_path)
        self._arrays = {k: self._group[name] for k, name in self.names.items()}
        self._direct = {}
        root = _local_root(self.store_path)
        for k, name in self.names.items():
            rd, why = (None, "zarr API requested") if self.direct is False else (
                direct_array(root, name) if root is not None else (None, "remote store"))
            if rd is None and self.direct is True:
                raise ValueError(f"{self.store_path}: {name}: no direct chunk reader ({why})")
            if rd is not None:
                self._direct[k] = rd
            _once(logging.DEBUG, f"{self.store_path}: {name} read via "
                                 f"{'direct chunk files' if rd is not None else 'zarr API: ' + why}")
        self._pid = os.getpid()

    def paths(self) -> dict[str, str]:
        """Batch key -> 'direct' or 'zarr': the path each array is read by in this process."""
        self._open()
        return {k: "direct" if k in self._direct else "zarr" for k in self.names}

    def _read_one(self, k: str, row: int) -> np.ndarray:
        try:
            arr = self._direct[k].read(row) if k in self._direct else None
            if arr is None:            # zarr path, or a chunk file that is absent: zarr's fill value
                arr = np.asarray(self._arrays[k][row])
        except DamagedChunk as e:
            raise self.damaged(row, self.names[k], str(e)) from None
        except (ValueError, RuntimeError) as e:      # zarr's crc32c / codec errors on a damaged chunk
            raise self.damaged(row, self.names[k], f"{type(e).__name__}: {e}") from e
        return arr

    def read(self, row: int) -> dict[str, np.ndarray]:
        """One clip's arrays (batch key -> array)."""
        self._open()
        return {k: self._read_one(k, row) for k in self.names}

    def read_rows(self, rows: list[int]) -> dict[str, np.ndarray]:
        """Stacked arrays of `rows` (in that order, increasing, no repeats): direct arrays clip by clip into
        preallocated memory, zarr-path arrays in one selection per array (zarr fetches its chunks concurrently)."""
        self._open()
        out = {}
        for k, a in self._arrays.items():
            if k in self._direct or not rows:
                out[k] = np.empty((len(rows), *a.shape[1:]), a.dtype)
                for i, r in enumerate(rows):
                    out[k][i] = self._read_one(k, r)
                continue
            try:
                out[k] = np.asarray(a.get_orthogonal_selection((np.asarray(rows),)))
            except (ValueError, RuntimeError):           # a damaged chunk: find and name its clip
                for r in rows:
                    self._read_one(k, r)
                raise
        return out

    def damaged(self, row: int, name: str, why: str) -> CacheMismatchError:
        try:
            clip = str(np.asarray(self._group["clip_id"][row]))
        except (KeyError, ValueError, RuntimeError, IndexError) as e:
            clip = f"<clip id unreadable: {e}>"
        return CacheMismatchError(
            f"{self.store_path}: clip {clip} (row {row}): its {name} chunk is damaged ({why}); "
            "run `ecpa extract --verify` to recompute it")


class FeatureSource:
    """Per-clip feature arrays by store row, from RAM (read once) or streamed chunk by chunk (ClipReader)."""

    def __init__(self, store_path: Path | str, rows: list[int], in_memory: bool, direct: bool | None = None):
        self.store_path = str(store_path)
        self.in_memory = in_memory
        self.reader = ClipReader(self.store_path, FEATURE_ARRAYS, direct=direct)
        self._mem: dict[str, np.ndarray] = {}
        self._pos: dict[int, int] = {}
        if in_memory and rows:
            order = sorted(set(rows))
            self._pos = {r: i for i, r in enumerate(order)}
            self._mem = self.reader.read_rows(order)        # only the rows used, nothing more in RAM

    def get(self, row: int) -> dict[str, np.ndarray]:
        if self.in_memory:
            i = self._pos[row]
            return {k: v[i] for k, v in self._mem.items()}
        return self.reader.read(row)


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
    """Stack features (kept in their stored dtype), pad `input_ids` with `pad_id` to the longest in the batch.
    Items masked by `MaskedPairs` also give `masked_ids` (padded likewise), `mlm_labels` (padded with -100) and
    `mlm_index` (N,): the flat positions (row-major in (B, L)) of the predicted tokens, computed here on the
    host so that the training step never waits for the device to count them."""
    out: dict = {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in FEATURE_ARRAYS}
    out["emotion"] = torch.tensor([it["emotion"] for it in items], dtype=torch.long)
    out["clip_id"] = [it["clip_id"] for it in items]
    if "input_ids" in items[0]:
        L = max(len(it["input_ids"]) for it in items)
        out["input_ids"] = _pad_rows([it["input_ids"] for it in items], L, pad_id)
        if "mlm_labels" in items[0]:
            out["masked_ids"] = _pad_rows([it["masked_ids"] for it in items], L, pad_id)
            out["mlm_labels"] = _pad_rows([it["mlm_labels"] for it in items], L, -100)
            out["mlm_index"] = (out["mlm_labels"] != -100).flatten().nonzero().squeeze(1)
    return out


def _pad_rows(rows: list, L: int, fill: int) -> torch.Tensor:
    """(B, L) long tensor of the rows (lists or 1-d tensors), right-padded with `fill`."""
    out = torch.full((len(rows), L), fill, dtype=torch.long)
    for b, row in enumerate(rows):
        out[b, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def item_seed(seed: int, epoch: int, rank: int, index: int) -> int:
    """The MLM masking seed of one training pair in one epoch on one rank: independent of the batch it lands
    in and of the DataLoader worker that masks it, so a resumed run masks exactly as an uninterrupted one."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101 + 7 + index * 2_654_435_761) % (2**63 - 1)


class EpochTagged(Sampler):
    """Wraps an `EpochSampler`: yields (epoch, index), so a dataset in a DataLoader worker (persistent ones
    included, which never see `set_epoch`) knows the epoch it draws for."""

    def __init__(self, sampler: "EpochSampler"):
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        e = self.sampler.epoch
        return ((e, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class MaskedPairs(Dataset):
    """Training pairs with SwinBERT's MLM masking applied in the DataLoader workers (not in the training step).
    `mask(ids (1, L), generator) -> (masked ids, labels)` is `losses.mask_tokens` with the tokenizer's ids bound;
    each pair is masked with its own generator seeded by `item_seed(seed, epoch, rank, index)`. Indexed by the
    (epoch, index) keys of `EpochTagged`."""

    def __init__(self, pairs: CaptionPairs, mask: Callable, seed: int, rank: int = 0):
        self.pairs, self.mask, self.seed, self.rank = pairs, mask, seed, rank

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, idx = key
        item = self.pairs[idx]
        g = torch.Generator().manual_seed(item_seed(self.seed, epoch, self.rank, idx))
        ids, labels = self.mask(torch.as_tensor([item["input_ids"]], dtype=torch.long), generator=g)
        return {**item, "masked_ids": ids[0], "mlm_labels": labels[0]}


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
