"""Benchmark: stage-two data loading from the feature store as shipped (pipeline.extract.store: Zarr v3, one clip per
chunk, uncompressed with a CRC32C checksum per chunk) through pipeline.train.data's production path, at MAFW
shapes (784x1024 f16 tokens per clip, plus ER/AU arrays), batch 32, against slicing the same bytes from
in-memory numpy arrays.

What it times, interleaved round by round so a noisy (shared) machine slows every variant alike, 0 workers:
  memory       baseline: one numpy array per batch key in RAM; a batch = fancy-index the 32 rows
  ram          the in-RAM path (the used rows fit `train.ram_cache_gb`): FeatureSource(in_memory=True) +
               CaptionPairs + collate in a DataLoader, as pipeline.train.loop builds it
  stream       the streaming path: FeatureSource(in_memory=False), i.e. ClipReader reading each clip's chunk
               files directly and verifying their CRC32C (local store)
  stream_zarr  diagnostic: the same with the zarr API fallback that remote (fsspec) stores take (direct=False)
Then whether the streaming path's reads hide behind compute with the workers pipeline.train.loop gets from
`plan_loading` for a store that does not fit in RAM (train.num_workers=0 -> min(2, CPUs) workers, its
prefetch factor): a loop that sleeps `--compute-ms` per step (default 150 ms, standing in for a MAFW-shaped
GPU step, which leaves the CPU to the workers) and measures how long each step waits for its batch, against
the in-memory baseline under the same compute. Also the in-RAM path's one-time bulk load (seconds, MB/s).
Every variant's batches are checked equal to the baseline's.

    .venv/bin/python -m tests.bench.bench_loader [--clips 128] [--rounds 8] [--compute-ms 150] [--workers N]

--in-loop: the cached-vs-in-loop ratio, fairly. Training steps/s on cached features (the in-RAM path with
plan_loading's options) against the same steps with the three frozen extractors in the loop, as a user who
does not cache would run them: decoding, face finding and cropping (pipeline.extract.runner.prepare_clip) in
DataLoader workers (one per usable core), then Video Swin, ResNet50-ER and ANFL (run_extractors, inference
mode) and the step in the main process. Demo preset (random-init extractors of the demo's sizes), batch
--batch. Each run starts a fresh DataLoader; warm-up is excluded on both sides (worker start-up, the prefetch
buffer's first fill, first-step allocations: the first prefetch x workers + 2 steps), then --steps timed steps;
runs alternate cached / in-loop for --rounds rounds, median rate of each.

    .venv/bin/python -m tests.bench.bench_loader --in-loop [--clips 24] [--batch 8] [--steps 4] [--rounds 2]
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.extract.store import StoreShapes, create_store
from pipeline.train.tokenizer import train_wordpiece
from pipeline.train.data import (FEATURE_ARRAYS, CaptionPairs, ClipRef, EpochSampler, FeatureSource, LoadPlan,
                                 collate, plan_loading)
from tests.bench._util import MAFW_SHAPES, SMALL_SHAPES, clip_bytes, random_clip

WORDS = "a man woman smiles frowns speaks to the camera with open mouth wide eyes raised brows looks down".split()
MAX_LEN = 20


@dataclass
class Setup:
    store: Path
    shapes: StoreShapes
    refs: list[ClipRef]
    mem: dict[str, np.ndarray]        # batch key -> (N, ...) array: the baseline's bytes
    tokenizer: object
    clip_mb: float                    # MB of the arrays stage two reads, per clip


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
    return Setup(path, shapes, refs, mem, tok, clip_bytes(shapes, list(FEATURE_ARRAYS.values())) / 1e6)


def store_codecs(store: Path) -> list[str]:
    """The codec chain of the store's video tokens as written in its zarr.json (what 'as shipped' means)."""
    meta = json.loads((store / FEATURE_ARRAYS["vid"] / "zarr.json").read_text())
    return [c["name"] for c in meta["codecs"]]


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


def _cycle(loader: DataLoader, sampler: EpochSampler):
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


def _loader(ds, sampler, batch: int, pad: int, plan: LoadPlan | None = None) -> DataLoader:
    """A DataLoader as pipeline.train.loop builds it (collate, and the plan's workers/prefetch when given)."""
    kw = plan.loader_kwargs() if plan is not None else {"num_workers": 0}
    return DataLoader(ds, batch_size=batch, sampler=sampler, collate_fn=functools.partial(collate, pad_id=pad), **kw)


def _check_same(name: str, a: dict, b: dict) -> None:
    """Every variant must deliver the baseline's bytes (else its timing means nothing)."""
    for k in FEATURE_ARRAYS:
        if not torch.equal(a[k], b[k]):
            raise AssertionError(f"{name}: delivered different '{k}' values than the in-memory baseline")


def time_sync(s: Setup, batch: int, rounds: int, seed: int) -> tuple[dict, float, dict]:
    """Median seconds per batch of each variant with 0 workers, rounds interleaved in random order. Also the
    in-RAM path's one-time bulk load (seconds) and the read path ClipReader took per array for `stream`."""
    rows = [r.row for r in s.refs]
    t0 = time.perf_counter()
    ram_source = FeatureSource(s.store, rows, in_memory=True)
    load_s = time.perf_counter() - t0
    stream_source = FeatureSource(s.store, rows, in_memory=False)            # production: direct where it applies
    zarr_source = FeatureSource(s.store, rows, in_memory=False, direct=False)  # the remote-store fallback
    paths = stream_source.reader.paths()
    pad = s.tokenizer.pad_id
    iters = {}
    for name, src in (("ram", ram_source), ("stream", stream_source), ("stream_zarr", zarr_source)):
        ds = CaptionPairs(s.refs, src, s.tokenizer, MAX_LEN)
        sampler = EpochSampler(len(ds), seed)
        iters[name] = _cycle(_loader(ds, sampler, batch, pad), sampler)
    iters["memory"] = _memory_batches(s, EpochSampler(len(s.refs), seed), batch)
    times: dict[str, list[float]] = {k: [] for k in iters}
    rnd = random.Random(seed)
    names = list(iters)
    first = {k: next(it) for k, it in iters.items()}      # warm-up (opens stores, imports) + equality check
    for k, b in first.items():
        _check_same(k, b, first["memory"])
    for _ in range(rounds):
        rnd.shuffle(names)
        got = {}
        for k in names:
            t = time.perf_counter()
            got[k] = next(iters[k])
            times[k].append(time.perf_counter() - t)
        for k in names:
            _check_same(k, got[k], got["memory"])
    return {k: statistics.median(v) for k, v in times.items()}, load_s, paths


def time_hidden(s: Setup, batch: int, plan: LoadPlan, compute_s: float, steps: int, blocks: int, seed: int) -> dict:
    """Median and mean wait per step (seconds) for its batch when every step also 'computes' for `compute_s`
    (a sleep: a GPU step leaves the CPU to the workers): the streaming path with the plan's DataLoader options,
    and the in-memory baseline. Blocks of `steps` steps alternate between the two."""
    source = FeatureSource(s.store, [r.row for r in s.refs], in_memory=plan.in_memory)
    ds = CaptionPairs(s.refs, source, s.tokenizer, MAX_LEN)
    sampler = ManyEpochs(EpochSampler(len(ds), seed), epochs=1 + (blocks * steps + 1) * batch // len(ds))
    it = iter(_loader(ds, sampler, batch, s.tokenizer.pad_id, plan))
    memory = _memory_batches(s, EpochSampler(len(s.refs), seed), batch)
    _check_same("stream behind compute", next(it), next(memory))   # start-up (worker fork) is not a per-step cost
    waits: dict[str, list[float]] = {"stream": [], "memory": []}
    for _ in range(blocks):
        for k, src in (("stream", it), ("memory", memory)):
            for _ in range(steps):
                t = time.perf_counter()
                next(src)
                waits[k].append(time.perf_counter() - t)
                time.sleep(compute_s)
    del it                        # ends the loader's workers
    return {"median": {k: statistics.median(v) for k, v in waits.items()},
            "mean": {k: statistics.fmean(v) for k, v in waits.items()}}


# ---- the fair in-loop baseline (--in-loop) ----------------------------------------------------------

class _NoFeatures:
    """A FeatureSource stand-in that reads nothing: the in-loop side computes its features."""

    def get(self, row: int) -> dict:
        return {}


class InLoopPairs(torch.utils.data.Dataset):
    """CaptionPairs items with the clip decoded, its faces found and cropped (runs in the DataLoader workers)."""

    def __init__(self, pairs: CaptionPairs, video_of: dict[str, str], ex):
        self.pairs, self.video_of, self.ex = pairs, video_of, ex

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: int) -> dict:
        from pipeline.extract.runner import ClipTask, Failed, prepare_clip

        item = self.pairs[idx]
        p = prepare_clip(ClipTask(idx, item["clip_id"], self.video_of[item["clip_id"]]), self.ex)
        if isinstance(p, Failed):
            raise RuntimeError(p.reason)
        return {**item, "prepared": p}


def _in_loop_batch(items: list[dict], ext, ex, pad_id: int) -> dict:
    """The three frozen extractors on the batch's decoded clips, then the same collate as the cached side."""
    from pipeline.extract.runner import run_extractors

    arrays = run_extractors(ext, [it.pop("prepared") for it in items], ex, torch.device("cpu"))
    return collate([{**it, **{k: a[name] for k, name in FEATURE_ARRAYS.items()}} for it, a in zip(items, arrays)],
                   pad_id)


def _timed_run(loader: DataLoader, to_batch, step, warm: int, steps: int) -> float:
    """Steps/s over `steps` steps after `warm` untimed ones, on a fresh iterator of `loader`."""
    it = iter(loader)
    for _ in range(warm):
        step(to_batch(next(it)))
    t = time.perf_counter()
    for _ in range(steps):
        step(to_batch(next(it)))
    rate = steps / (time.perf_counter() - t)
    del it                                          # ends this run's workers
    return rate


def in_loop_setup(root: Path, clips: int):
    """Demo data, its store (written by the production runner) and what both sides share."""
    from pipeline.config import load_config
    from pipeline.data.manifest import ensure_manifest, read_manifest
    from pipeline.extract.networks.extractors import build_extractors
    from pipeline.extract.runner import extract_into_store
    from pipeline.train.model import build_model

    cfg = load_config("demo", [f"data.root={root / 'data'}", f"data.cache_root={root / 'cache'}",
                               f"data.demo_clips={clips}", "extract.random_init=true"])
    ensure_manifest(cfg)
    manifest = read_manifest(cfg.manifest_path)
    ex = cfg.extract
    ext = build_extractors(ex, len(cfg.data.emotions), "cpu", seed=0)
    store = root / "store.zarr"
    g = create_store(store, [c.id for c in manifest], ext.shapes(ex.num_frames, ex.au_frames, ex.crop), {})
    extract_into_store(g, [_task(i, c) for i, c in enumerate(manifest)], ext, ex, "cpu")
    from pipeline.train.data import match_clips, open_checked_store

    g, shapes = open_checked_store(store)
    refs, _ = match_clips(g, store, manifest, ("train",))
    tok = train_wordpiece([c for r in refs for c in r.captions], cfg.model.vocab_size)
    torch.manual_seed(0)
    model = build_model(cfg.model, tok, num_emotions=len(cfg.data.emotions), shapes=shapes).train()
    return cfg, ext, store, shapes, refs, tok, model, {c.id: c.video for c in manifest}


def _task(i: int, clip):
    from pipeline.extract.runner import ClipTask

    return ClipTask(i, clip.id, clip.video)


def in_loop(clips: int, batch: int, steps: int, rounds: int) -> dict:
    from pipeline.extract.runner import decode_workers
    from tests.bench.bench_train import _step, prepare   # the same training step as bench_train's cached rows

    with tempfile.TemporaryDirectory(prefix="bench_inloop_") as tmp:
        cfg, ext, store, shapes, refs, tok, model, video_of = in_loop_setup(Path(tmp), clips)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        rows = [r.row for r in refs]
        plan = plan_loading(shapes, rows, ram_cache_gb=cfg.train.ram_cache_gb, num_workers=cfg.train.num_workers)
        cached_ds = CaptionPairs(refs, FeatureSource(store, rows, in_memory=plan.in_memory), tok, cfg.model.max_caption_len)
        raw_ds = InLoopPairs(CaptionPairs(refs, _NoFeatures(), tok, cfg.model.max_caption_len), video_of, cfg.extract)
        workers = decode_workers(-1)
        many = lambda n: ManyEpochs(EpochSampler(n, 0), epochs=64)   # noqa: E731 - never runs dry mid-run
        cached = _loader(cached_ds, many(len(cached_ds)), batch, tok.pad_id, plan)
        raw = DataLoader(raw_ds, batch_size=batch, sampler=many(len(raw_ds)), collate_fn=list, num_workers=workers,
                         persistent_workers=False, prefetch_factor=2)
        warm = {"cached": 2 * max(plan.num_workers, 1) + 2, "in_loop": 2 * workers + 2}
        step = lambda b: _step(model, opt, prepare(b, tok), cfg.train, torch.device("cpu"))   # noqa: E731
        sides = {"cached": (cached, lambda b: b), "in_loop": (raw, lambda items: _in_loop_batch(items, ext, cfg.extract,
                                                                                                   tok.pad_id))}
        rates: dict[str, list[float]] = {"cached": [], "in_loop": []}
        for r in range(rounds):
            for name in (("cached", "in_loop") if r % 2 == 0 else ("in_loop", "cached")):
                loader, to_batch = sides[name]
                rates[name].append(_timed_run(loader, to_batch, step, warm[name], steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    res = {"in_loop": True, "preset": "demo", "batch": batch, "clips": clips, "steps": steps, "rounds": rounds,
           "workers": workers, "cached_workers": plan.num_workers, "warm_steps": warm,
           "steps_per_s": med, "runs": rates, "ratio": med["cached"] / med["in_loop"],
           "extractors": [cfg.extract.swin, cfg.extract.er_model, cfg.extract.au_model]}
    print(f"demo preset, batch {batch}: cached {med['cached']:.3f} steps/s vs in-loop (decode in {workers} DataLoader "
          f"workers, {' + '.join(res['extractors'])} frozen) {med['in_loop']:.3f} steps/s: {res['ratio']:.1f}x "
          f"(median of {rounds} interleaved runs of {steps} steps; warm-up {warm} steps excluded)")
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_loader", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=128, help="clips in the temporary store (default 128, ~270 MB)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=8, help="timed batches per variant with 0 workers")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers behind compute (default: what plan_loading gives a streamed store "
                         "with train.num_workers=0; 0 skips the test)")
    ap.add_argument("--compute-ms", type=float, default=150.0,
                    help="simulated compute per step (default 150 ms, about a MAFW-shaped step on one GPU)")
    ap.add_argument("--steps", type=int, default=8, help="steps per block behind compute (2 blocks each)")
    ap.add_argument("--small", action="store_true", help="small per-clip shapes instead of MAFW's (quick check)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the store (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--in-loop", action="store_true", help="cached vs frozen extractors in the loop (demo preset)")
    args = ap.parse_args(argv)
    if args.in_loop:
        return in_loop(args.clips, args.batch, args.steps, args.rounds)
    shapes = SMALL_SHAPES if args.small else MAFW_SHAPES
    if args.clips < args.batch:
        ap.error("--clips must be at least --batch")
    torch.set_num_threads(1)      # collation copies are memory-bound; keep the second core for the OS / workers
    rows = list(range(args.clips))
    # the plan pipeline.train.loop makes for a store that does not fit: ram_cache_gb=0, num_workers=0 (the default)
    plan = plan_loading(shapes, rows, ram_cache_gb=0.0, num_workers=0 if args.workers is None else args.workers)
    if plan.in_memory:
        raise AssertionError("plan_loading chose RAM for ram_cache_gb=0; the streaming test would not stream")
    with tempfile.TemporaryDirectory(prefix="bench_loader_", dir=args.dir) as tmp:
        t0 = time.perf_counter()
        s = build(Path(tmp), args.clips, shapes, args.seed)
        build_s = time.perf_counter() - t0
        codecs = store_codecs(s.store)
        sync, load_s, paths = time_sync(s, args.batch, args.rounds, args.seed)
        hidden = (time_hidden(s, args.batch, plan, args.compute_ms / 1e3, args.steps, 2, args.seed)
                  if plan.num_workers > 0 else None)
    mb = s.clip_mb * args.batch
    res = {
        "mafw_shapes": not args.small, "clips": args.clips, "batch": args.batch, "batch_mb": mb,
        "store_mb": s.clip_mb * args.clips, "codecs": codecs, "stream_paths": paths,
        "build_s": build_s, "ram_load_s": load_s, "ram_load_mb_s": s.clip_mb * args.clips / load_s,
        "ms_per_batch": {k: 1e3 * v for k, v in sync.items()},
        "mb_s": {k: mb / v for k, v in sync.items()},
        "hidden": None if hidden is None else {
            "workers": plan.num_workers, "workers_from": "plan_loading default" if args.workers is None else "--workers",
            "prefetch_factor": plan.loader_kwargs()["prefetch_factor"], "compute_ms": args.compute_ms,
            "wait_ms": {k: 1e3 * v for k, v in hidden["median"].items()},
            "mean_wait_ms": {k: 1e3 * v for k, v in hidden["mean"].items()}},
    }
    print(report(res))
    return res


def report(res: dict) -> str:
    base = res["ms_per_batch"]["memory"]
    lines = [f"store codecs {' + '.join(res['codecs'])}; streaming reads: "
             + ", ".join(f"{k} {v}" for k, v in res["stream_paths"].items()),
             f"batch {res['batch']} x {res['batch_mb'] / res['batch']:.2f} MB (vid/er/au arrays) = {res['batch_mb']:.0f} MB; "
             f"store {res['clips']} clips, {res['store_mb']:.0f} MB",
             f"{'variant (0 workers)':20s} {'ms/batch':>9s} {'MB/s':>7s} {'time/memory':>12s}"]
    for k, v in res["ms_per_batch"].items():
        lines.append(f"{k:20s} {v:9.1f} {res['mb_s'][k]:7.0f} {v / base:11.2f}x")
    lines.append(f"in-RAM path bulk load: {res['ram_load_s']:.2f} s ({res['ram_load_mb_s']:.0f} MB/s), once per run")
    h = res["hidden"]
    if h:
        lines.append(f"behind compute: {h['workers']} workers ({h['workers_from']}, prefetch {h['prefetch_factor']}), "
                     f"{h['compute_ms']:.0f} ms compute/step: median (mean) wait per step")
        for k, v in h["wait_ms"].items():
            lines.append(f"  {k:18s} {v:7.1f} ms ({h['mean_wait_ms'][k]:.1f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
