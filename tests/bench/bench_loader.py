"""Benchmark: stage-two data loading from the Zarr feature store at MAFW shapes (784x1024 f16 tokens per
clip, plus ER/AU arrays), batch 32, against slicing the same bytes from in-memory numpy arrays.

What it times, interleaved round by round so a noisy (shared) machine slows every variant alike:
  memory        baseline: one numpy array per batch key in RAM; a batch = fancy-index the 32 rows
  ram           pipeline.train_data as training uses it for a store that fits `train.ram_cache_gb`:
                FeatureSource(in_memory=True) + CaptionPairs + collate in a DataLoader, 0 workers
  stream        the same with FeatureSource(in_memory=False): per-clip Zarr chunk reads, 0 workers
  stream_handles  candidate fix: per-clip reads through array handles opened once (no group lookup,
                i.e. no zarr.json read and parse, per array per item)
  stream_batch  candidate fix: one orthogonal selection per array per batch (Dataset.__getitems__)
  stream_direct candidate fix (local stores): read each chunk file and Blosc-decode it with numcodecs
Then whether DataLoader workers hide the streaming reads behind compute: a loop that sleeps
`--compute-ms` per step (standing in for a GPU step, which leaves the CPU free) and measures how long each
step waits for its batch, for the streaming loader (as shipped, and the handle / direct-chunk readers) with
`--workers` workers vs the in-memory baseline.
Also the in-RAM path's one-time bulk load (seconds, MB/s).

    .venv/bin/python -m tests.bench.bench_loader [--clips 128] [--rounds 8] [--workers 2] [--compute-ms 150]
"""
from __future__ import annotations

import argparse
import functools
import itertools
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.store import StoreShapes, create_store, open_store
from pipeline.tokenizer import train_wordpiece
from pipeline.train_data import FEATURE_ARRAYS, CaptionPairs, ClipRef, EpochSampler, FeatureSource, collate
from tests.bench._util import MAFW_SHAPES, SMALL_SHAPES, clip_bytes, random_clip

WORDS = "a man woman smiles frowns speaks to the camera with open mouth wide eyes raised brows looks down".split()


@dataclass
class Setup:
    store: Path
    refs: list[ClipRef]
    mem: dict[str, np.ndarray]        # batch key -> (N, ...) array: the baseline's bytes
    tokenizer: object
    batch_mb: float


def build(root: Path, n: int, shapes: StoreShapes, seed: int) -> Setup:
    """Write an n-clip store as stage one does (chunks of clip i, then done[i]) and keep the same bytes in RAM."""
    rng = np.random.default_rng(seed)
    ids = [f"clip{i:05d}" for i in range(n)]
    path = root / "store.zarr"
    g = create_store(path, ids, shapes, {"emotions": [f"e{k}" for k in range(shapes.emotions)], "bench": True})
    arrays = {name: g[name] for name in shapes.arrays()}
    mem = {k: np.empty((n, *shapes.arrays()[name][0]), shapes.arrays()[name][1]) for k, name in FEATURE_ARRAYS.items()}
    for i in range(n):
        clip = random_clip(rng, shapes)
        for name, a in clip.items():
            arrays[name][i] = a
        g["done"][i] = True
        for k, name in FEATURE_ARRAYS.items():
            mem[k][i] = clip[name]
    caps = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 15)))) for _ in range(n)]
    refs = [ClipRef(cid, i, [caps[i]], i % shapes.emotions) for i, cid in enumerate(ids)]
    tok = train_wordpiece(caps, 200)
    batch_mb = clip_bytes(shapes, list(FEATURE_ARRAYS.values())) / 1e6
    return Setup(path, refs, mem, tok, batch_mb)


class HandlePairs(CaptionPairs):
    """Candidate fix 1: per-clip reads through array handles opened once per process."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._arrays = None

    def _open(self):
        if self._arrays is None:
            g = open_store(self.source.store_path)
            self._arrays = {k: g[name] for k, name in FEATURE_ARRAYS.items()}
        return self._arrays

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    def __getitem__(self, idx: int) -> dict:
        i, ids = self.pairs[idx]
        r = self.refs[i]
        feats = {k: np.asarray(a[r.row]) for k, a in self._open().items()}
        return {**feats, "emotion": r.emotion, "input_ids": ids, "clip_id": r.id}


class BatchPairs(HandlePairs):
    """Candidate fix 2: the DataLoader hands the whole batch's indices to __getitems__, which reads each
    array once for all rows (zarr fetches the chunks of one selection concurrently)."""

    def __getitems__(self, idxs: list[int]) -> list[dict]:
        rows = [self.refs[self.pairs[j][0]].row for j in idxs]
        uniq = sorted(set(rows))
        pos = {r: p for p, r in enumerate(uniq)}
        sel = np.asarray(uniq)
        block = {k: a.get_orthogonal_selection((sel,)) for k, a in self._open().items()}
        out = []
        for j, row in zip(idxs, rows):
            i, ids = self.pairs[j]
            r = self.refs[i]
            out.append({**{k: v[pos[row]] for k, v in block.items()}, "emotion": r.emotion, "input_ids": ids,
                        "clip_id": r.id})
        return out


class DirectChunkPairs(CaptionPairs):
    """Candidate fix 3 (local stores only): read each clip's chunk file and Blosc-decode it with numcodecs,
    bypassing zarr's per-read machinery. Valid only for the layout pipeline.store writes (regular chunks of
    one clip, default '/' chunk keys, codecs bytes(little) + blosc): checked against zarr.json, else it raises."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        import json

        from numcodecs import Blosc

        self._blosc = Blosc()
        self._meta = {}
        for k, name in FEATURE_ARRAYS.items():
            meta = json.loads((Path(self.source.store_path) / name / "zarr.json").read_text())
            codecs = [c["name"] for c in meta["codecs"]]
            chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
            sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
            if (codecs != ["bytes", "blosc"] or meta["codecs"][0]["configuration"]["endian"] != "little"
                    or chunks[0] != 1 or list(chunks[1:]) != list(meta["shape"][1:]) or sep != "/"):
                raise ValueError(f"{name}: layout {codecs}, chunks {chunks} is not the one this reader knows")
            tail = "/".join("0" for _ in chunks[1:])
            self._meta[k] = (Path(self.source.store_path) / name, np.dtype(meta["data_type"]).newbyteorder("<"),
                             tuple(chunks[1:]), tail)

    def _read(self, k: str, row: int) -> np.ndarray:
        folder, dtype, shape, tail = self._meta[k]
        raw = (folder / "c" / str(row) / tail).read_bytes()
        return np.frombuffer(self._blosc.decode(raw), dtype=dtype).reshape(shape)

    def __getitem__(self, idx: int) -> dict:
        i, ids = self.pairs[idx]
        r = self.refs[i]
        return {**{k: self._read(k, r.row) for k in FEATURE_ARRAYS}, "emotion": r.emotion, "input_ids": ids,
                "clip_id": r.id}


class ManyEpochs(torch.utils.data.Sampler[int]):
    """The seeded orders of `epochs` consecutive epochs as one long sampler, so a DataLoader's workers keep
    prefetching across epoch ends (a short benchmark store has only a few batches per epoch, and a new epoch's
    first batch is never prefetched; in real training that happens once per hundreds of batches)."""

    def __init__(self, base: EpochSampler, epochs: int):
        self.base, self.epochs = base, epochs

    def __iter__(self):
        for e in range(self.epochs):
            self.base.set_epoch(e)
            yield from list(self.base)

    def __len__(self) -> int:
        return len(self.base) * self.epochs


def _cycle(loader: DataLoader, sampler: EpochSampler | ManyEpochs):
    """Batches forever, a new seeded order per epoch (as the training loop does)."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from loader


def _memory_batches(s: Setup, sampler: EpochSampler, batch: int):
    """Baseline: the same batches (same sampler order) sliced from in-memory arrays."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        order = list(sampler)
        for lo in range(0, len(order), batch):
            idx = np.asarray([s.refs[j].row for j in order[lo: lo + batch]])
            out = {k: torch.from_numpy(v[idx]) for k, v in s.mem.items()}
            out["emotion"] = torch.tensor([s.refs[j].emotion for j in order[lo: lo + batch]])
            yield out


def _loader(ds, sampler, batch, pad, workers=0):
    return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                      collate_fn=functools.partial(collate, pad_id=pad), persistent_workers=workers > 0,
                      prefetch_factor=2 if workers > 0 else None)


def _check_same(a: dict, b: dict) -> None:
    """Every variant must deliver the baseline's bytes (else its timing means nothing)."""
    for k in FEATURE_ARRAYS:
        if not torch.equal(a[k], b[k]):
            raise AssertionError(f"loader variant delivered different '{k}' values than the in-memory baseline")


def time_sync(s: Setup, batch: int, rounds: int, seed: int) -> tuple[dict, float]:
    """Median seconds per batch of each synchronous variant (0 workers), rounds interleaved in random order.
    Also returns the in-RAM path's one-time bulk load in seconds."""
    rows = [r.row for r in s.refs]
    t0 = time.perf_counter()
    ram_source = FeatureSource(s.store, rows, in_memory=True)
    load_s = time.perf_counter() - t0
    stream_source = FeatureSource(s.store, rows, in_memory=False)
    max_len, pad = 20, s.tokenizer.pad_id
    iters = {}
    for name, ds in [("ram", CaptionPairs(s.refs, ram_source, s.tokenizer, max_len)),
                     ("stream", CaptionPairs(s.refs, stream_source, s.tokenizer, max_len)),
                     ("stream_handles", HandlePairs(s.refs, stream_source, s.tokenizer, max_len)),
                     ("stream_batch", BatchPairs(s.refs, stream_source, s.tokenizer, max_len)),
                     ("stream_direct", DirectChunkPairs(s.refs, stream_source, s.tokenizer, max_len))]:
        sampler = EpochSampler(len(ds), seed)
        iters[name] = _cycle(_loader(ds, sampler, batch, pad), sampler)
    iters["memory"] = _memory_batches(s, EpochSampler(len(s.refs), seed), batch)
    times: dict[str, list[float]] = {k: [] for k in iters}
    rnd = random.Random(seed)
    names = list(iters)
    first = {k: next(it) for k, it in iters.items()}      # warm-up (opens stores, imports) + equality check
    for k, b in first.items():
        _check_same(b, first["memory"])
    for _ in range(rounds):
        rnd.shuffle(names)
        got = {}
        for k in names:
            t = time.perf_counter()
            got[k] = next(iters[k])
            times[k].append(time.perf_counter() - t)
        for k in names:
            _check_same(got[k], got["memory"])
    return {k: statistics.median(v) for k, v in times.items()}, load_s


HIDE_VARIANTS = {"stream": CaptionPairs, "stream_handles": HandlePairs, "stream_direct": DirectChunkPairs}
"""Streaming datasets tried behind compute with workers: as shipped, and the two cheaper readers."""


def time_hidden(s: Setup, batch: int, workers: int, compute_s: float, steps: int, blocks: int, seed: int,
                variants: list[str]) -> dict:
    """Median wait per step (seconds) for its batch when every step also 'computes' for `compute_s` (a sleep:
    a GPU step leaves the CPU to the workers), for each streaming variant with `workers` workers and for the
    in-memory baseline. One variant's loader at a time; its blocks of `steps` steps alternate with the baseline's."""
    stream_source = FeatureSource(s.store, [r.row for r in s.refs], in_memory=False)
    memory = _memory_batches(s, EpochSampler(len(s.refs), seed), batch)
    next(memory)
    waits: dict[str, list[float]] = {"memory": []}
    for name in variants:
        ds = HIDE_VARIANTS[name](s.refs, stream_source, s.tokenizer, 20)
        sampler = ManyEpochs(EpochSampler(len(ds), seed), epochs=1 + (blocks * steps + 1) * batch // len(ds))
        it = iter(_loader(ds, sampler, batch, s.tokenizer.pad_id, workers))
        next(it)                  # start-up (worker fork, first reads) is not a per-step cost
        waits[name] = []
        for _ in range(blocks):
            for k, src in ((name, it), ("memory", memory)):
                for _ in range(steps):
                    t = time.perf_counter()
                    next(src)
                    waits[k].append(time.perf_counter() - t)
                    time.sleep(compute_s)
        del it                    # ends this loader's workers before the next variant starts
    return {"median": {k: statistics.median(v) for k, v in waits.items()},
            "mean": {k: statistics.fmean(v) for k, v in waits.items()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_loader", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=128, help="clips in the temporary store (default 128, ~270 MB)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=8, help="timed batches per synchronous variant")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the hiding test (0: skip it)")
    ap.add_argument("--compute-ms", type=float, default=150.0,
                    help="simulated compute per step (default 150 ms, about a MAFW-shaped step on one GPU)")
    ap.add_argument("--steps", type=int, default=8, help="steps per block in the hiding test")
    ap.add_argument("--hide-variants", default=",".join(HIDE_VARIANTS),
                    help=f"streaming variants for the hiding test (of {','.join(HIDE_VARIANTS)})")
    ap.add_argument("--small", action="store_true", help="small per-clip shapes instead of MAFW's (quick check)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the store (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    shapes = SMALL_SHAPES if args.small else MAFW_SHAPES
    if args.clips < args.batch:
        ap.error("--clips must be at least --batch")
    torch.set_num_threads(1)      # collation copies are memory-bound; keep the second core for the OS / workers
    with tempfile.TemporaryDirectory(prefix="bench_loader_", dir=args.dir) as tmp:
        t0 = time.perf_counter()
        s = build(Path(tmp), args.clips, shapes, args.seed)
        build_s = time.perf_counter() - t0
        sync, load_s = time_sync(s, args.batch, args.rounds, args.seed)
        variants = [v for v in args.hide_variants.split(",") if v]
        bad = sorted(set(variants) - set(HIDE_VARIANTS))
        if bad:
            ap.error(f"unknown --hide-variants {bad}")
        hidden = (time_hidden(s, args.batch, args.workers, args.compute_ms / 1e3, args.steps, 2, args.seed, variants)
                  if args.workers > 0 and variants else None)
    mb = s.batch_mb * args.batch
    res = {
        "mafw_shapes": not args.small, "clips": args.clips, "batch": args.batch, "batch_mb": mb, "store_mb": s.batch_mb * args.clips,
        "build_s": build_s, "ram_load_s": load_s, "ram_load_mb_s": s.batch_mb * args.clips / load_s,
        "ms_per_batch": {k: 1e3 * v for k, v in sync.items()},
        "mb_s": {k: mb / v for k, v in sync.items()},
        "hidden": None if hidden is None else {
            "workers": args.workers, "compute_ms": args.compute_ms,
            "wait_ms": {k: 1e3 * v for k, v in hidden["median"].items()},
            "mean_wait_ms": {k: 1e3 * v for k, v in hidden["mean"].items()}},
    }
    print(report(res))
    return res


def report(res: dict) -> str:
    base = res["ms_per_batch"]["memory"]
    lines = [f"batch {res['batch']} x {res['batch_mb'] / res['batch']:.2f} MB (vid/er/au arrays) = {res['batch_mb']:.0f} MB; "
             f"store {res['clips']} clips, {res['store_mb']:.0f} MB",
             f"{'variant':16s} {'ms/batch':>9s} {'MB/s':>7s} {'time/memory':>12s}"]
    for k, v in res["ms_per_batch"].items():
        lines.append(f"{k:16s} {v:9.1f} {res['mb_s'][k]:7.0f} {v / base:11.2f}x")
    lines.append(f"in-RAM path bulk load: {res['ram_load_s']:.2f} s ({res['ram_load_mb_s']:.0f} MB/s), once per run")
    h = res["hidden"]
    if h:
        lines.append(f"hiding test, {h['workers']} workers, {h['compute_ms']:.0f} ms compute/step: median (mean) wait per step")
        for k, v in h["wait_ms"].items():
            lines.append(f"  {k:16s} {v:7.1f} ms ({h['mean_wait_ms'][k]:.1f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
