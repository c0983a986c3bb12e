"""Stage one over many processes or machines with `dask.distributed` (DESIGN.md, "Scale").

The driver (pipeline/extract/stage.py) creates the store and holds the folder's lock; this module splits the
clips that are not done into contiguous shards and submits one task per shard. Each task, on a dask
worker, builds the extractors itself (same deterministic seed in every process, or the same
checkpoint files), opens the same Zarr store by its path string (a local path or any fsspec URL
every worker can reach, e.g. s3://bucket/cache/...), and writes its own clips: one clip per chunk,
so no two workers ever touch the same chunk and no lock is needed. A task returns its counts and
failures; the driver merges them, writes errors.jsonl and the stage record.

`Client(address)` joins a running scheduler (`--scheduler tcp://host:8786`); otherwise a
`LocalCluster(n_workers=N, threads_per_worker=1, processes=True)` is started for the run (`--workers N`).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Callable, Sequence

from pipeline.config import ExtractConfig
from pipeline.extract.runner import ClipTask, ExtractResult

_EXTRACTORS: dict[str, object] = {}
"""Per worker process: extractors by (extract config, emotions, seed), built once and reused by later shards."""


def shard(tasks: Sequence[ClipTask], n_shards: int) -> list[list[ClipTask]]:
    """Contiguous, near-equal ranges of `tasks` (at most n_shards, none empty)."""
    n_shards = max(1, min(n_shards, len(tasks)))
    size, rem = divmod(len(tasks), n_shards)
    out, start = [], 0
    for i in range(n_shards):
        end = start + size + (1 if i < rem else 0)
        out.append(list(tasks[start:end]))
        start = end
    return [s for s in out if s]


def run_shard(store_path: str, tasks: list[ClipTask], ex_dict: dict, num_emotions: int, seed: int) -> ExtractResult:
    """One dask task: extract `tasks` into the store at `store_path` (runs on a worker)."""
    import torch
    from pipeline.extract.store import open_store

    from pipeline.extract.runner import extract_into_store, resolve_device
    from pipeline.extract.networks.extractors import build_extractors

    torch.set_num_threads(1)  # one thread per dask worker process (threads_per_worker=1)
    ex = ExtractConfig(**ex_dict)
    device = resolve_device(ex.device)
    memo = json.dumps([ex_dict, num_emotions, seed, str(device)], sort_keys=True)
    if memo not in _EXTRACTORS:
        _EXTRACTORS.clear()
        _EXTRACTORS[memo] = build_extractors(ex, num_emotions, device, seed=seed)
    g = open_store(store_path, mode="r+")  # also makes zarr write every chunk (integrity checks rely on it)
    return extract_into_store(g, tasks, _EXTRACTORS[memo], ex, device, workers=0)


def extract_distributed(store_path: str, tasks: Sequence[ClipTask], ex: ExtractConfig, num_emotions: int, *,
                        seed: int = 0, scheduler: str | None = None, n_workers: int | None = None,
                        shards_per_worker: int = 4, progress: bool | Callable = False) -> ExtractResult:
    """Extract `tasks` on dask workers into the existing store at `store_path`; merged result. `progress`: a
    factory `(what, total, **kw) -> pipeline.progress.Progress` (the command's), or a bool (count only)."""
    from dask.distributed import Client, LocalCluster, as_completed

    from pipeline.progress import quiet

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=n_workers or 1, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    result = ExtractResult()
    try:
        n = max(1, len(client.scheduler_info().get("workers", {})) or (n_workers or 1))
        shards = shard(tasks, n * shards_per_worker)
        ex_dict = asdict(ex)
        futures = {client.submit(run_shard, store_path, s, ex_dict, num_emotions, seed, pure=False): len(s)
                   for s in shards}
        import time

        t0 = time.perf_counter()
        make = progress if callable(progress) else quiet
        with make(f"extract on {n} dask workers", len(tasks)) as bar:
            for fut in as_completed(futures):
                result.merge(fut.result())
                bar.advance(futures[fut])
        result.seconds = time.perf_counter() - t0
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return result
