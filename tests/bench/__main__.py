"""`make bench`: run every benchmark of the project, side by side in one run, and write one table.

    .venv/bin/python -m tests.bench [--only loader,store] [--skip train_mafw] [--budget 1800] [--out bench]

Each benchmark module (tests/bench/bench_*.py, `main(argv) -> dict`) runs in its own child process (so a
crash, an out-of-memory kill or a hang is caught, and `ru_maxrss` peaks are the benchmark's own), with modest
sizes so that the whole run fits about twenty minutes on 2 CPU cores (the four MAFW-shaped training runs take
nine of them). Its returned dict is turned into table rows: figure, baseline measured in the same child,
ratio (times better than baseline), target, holds. A benchmark that fails, times out, is missing, or returns a
dict without the expected keys becomes an error row: never silently dropped. Writes bench/results.md and bench/results.json (bench/ is git-ignored) and prints the table.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.bench._table import (IS_TRUE, REPORT, Results, Row, Target, at_least, error_row, fmt_num, machine_info,
                               under, within)

ROOT = Path(__file__).resolve().parents[2]


class MissingKey(KeyError):
    pass


def need(d: dict, *path: str):
    """d[path[0]][path[1]]...; a missing key raises MissingKey naming the keys that are there."""
    cur = d
    for i, k in enumerate(path):
        if not isinstance(cur, dict) or k not in cur:
            have = sorted(cur) if isinstance(cur, dict) else type(cur).__name__
            raise MissingKey(f"result has no {'/'.join(path[: i + 1])!r} (has: {have})")
        cur = cur[k]
    return cur


# ------------------------------------------------------------------------------------------- row mappers
def rows_store(r: dict) -> list[Row]:
    lay = need(r, "layouts")
    z = need(lay, "zarr")
    codecs = " + ".join(r.get("codecs") or ["?"])

    def desc(name: str, x: dict) -> str:
        return f"{name}: {x['files']} files, {x['disk_mb']:.0f} MB on disk, write {x['write_s']:.1f} s + fsync {x['fsync_s']:.1f} s"

    size = f"{r['clips']} MAFW-shaped clips ({r['data_mb']:.0f} MB)" if r.get("shapes", {}).get("tokens") == 784 \
        else f"{r['clips']} clips ({r['data_mb']:.0f} MB)"
    rows = []
    for temp, key in (("cold-ish", "read_cold_mb_s"), ("warm", "read_warm_mb_s")):
        for other, label in (("npy", "one .npy per clip and array"), ("hdf5", "one HDF5 file, chunk = clip")):
            o = need(lay, other)
            rows.append(Row(what=f"feature store as shipped (Zarr v3, {codecs}, read by ClipReader as stage two "
                                 f"does) read MB/s, {temp}, every clip once in random order, {size}; vs {label}",
                            figure=need(z, key), unit="MB/s", higher_is_better=True, baseline=need(o, key),
                            baseline_what=desc(other, o) if temp == "cold-ish" else other,
                            detail=desc(f"zarr {codecs}", z) if temp == "cold-ish" else "", target=REPORT,
                            bench="bench_store"))
    if "zarr_api" in lay:
        za = lay["zarr_api"]
        rows.append(Row(what="feature store read MB/s, warm: ClipReader's direct chunk reads (local stores, as "
                             "shipped) vs the zarr API (diagnostic: the path remote fsspec stores take)",
                        figure=need(z, "read_warm_mb_s"), unit="MB/s", higher_is_better=True,
                        baseline=need(za, "read_warm_mb_s"), baseline_what="same store through zarr.open_group",
                        detail=f"cold-ish {z['read_cold_mb_s']:.0f} vs {za['read_cold_mb_s']:.0f} MB/s",
                        target=REPORT, bench="bench_store"))
    return rows


LOADER_TARGET = "streaming data time per step within 10% of in-memory, or hidden behind compute"


def rows_loader(r: dict) -> list[Row]:
    """Rows of bench_loader: the in-RAM path and the streaming path (0 workers) against in-memory slicing, the
    streaming path with plan_loading's default workers behind simulated compute, and the design target
    (either of the two streaming rows holding), saying which one holds."""
    ms = need(r, "ms_per_batch")
    base = need(ms, "memory")
    codecs = " + ".join(r.get("codecs") or ["?"])
    paths = sorted(set((r.get("stream_paths") or {}).values())) or ["?"]
    shape = f"{'MAFW' if r.get('mafw_shapes', True) else 'SMALL'} shapes, batch {r['batch']} ({r['batch_mb']:.0f} MB)"
    bw = "same bytes sliced from in-memory arrays"
    rows = [
        Row(what=f"stage-two loading, in-RAM path (used rows fit train.ram_cache_gb), {shape}: data time per batch",
            figure=need(ms, "ram"), unit="ms", baseline=base, baseline_what=bw, target=within(0.10),
            detail=f"after a one-time bulk load of {r['ram_load_s']:.1f} s", bench="bench_loader"),
    ]
    direct = Row(what=f"stage-two loading, streaming path (ClipReader: {'/'.join(paths)} chunk reads of a "
                      f"{codecs} store), 0 workers, {shape}: data time per batch",
                 figure=need(ms, "stream"), unit="ms", baseline=base, baseline_what=bw, target=within(0.10),
                 bench="bench_loader")
    rows.append(direct)
    if "stream_zarr" in ms:
        rows.append(Row(what=f"stage-two loading, streaming through the zarr API (diagnostic: remote-store "
                             f"fallback), 0 workers, {shape}: data time per batch",
                        figure=ms["stream_zarr"], unit="ms", baseline=base, baseline_what=bw, target=REPORT,
                        bench="bench_loader"))
    h = r.get("hidden")
    hidden = None
    if h:
        c, mean = need(h, "compute_ms"), need(h, "mean_wait_ms")
        med = h.get("wait_ms", {})
        hidden = Row(
            what=f"stage-two loading, streaming path with {need(h, 'workers')} DataLoader workers "
                 f"({h.get('workers_from', 'plan_loading default')}) behind {c:.0f} ms of simulated GPU compute, "
                 f"{shape}: mean step time (wait + compute)",
            figure=need(mean, "stream") + c, unit="ms", baseline=need(mean, "memory") + c,
            baseline_what="in-memory slicing, same compute", target=within(0.10),
            detail=f"mean wait {mean['stream']:.1f} ms/step, median {med.get('stream', float('nan')):.1f} ms",
            bench="bench_loader")
        rows.append(hidden)
    ok_direct = direct.holds == "yes"
    ok_hidden = hidden is not None and hidden.holds == "yes"
    which = [f"0 workers within 10%: {direct.holds} ({fmt_num(direct.figure, 'ms')} vs {fmt_num(base, 'ms')})"]
    which.append("hidden behind compute: not measured" if hidden is None else
                 f"hidden behind compute: {hidden.holds} ({fmt_num(hidden.figure, 'ms')} vs "
                 f"{fmt_num(hidden.baseline, 'ms')} per step)")
    rows.append(Row(what=f"stage-two loading target: {LOADER_TARGET}", figure=ok_direct or ok_hidden,
                    target=IS_TRUE, detail="; ".join(which), bench="bench_loader"))
    return rows


def rows_loader_inloop(r: dict) -> list[Row]:
    """bench_loader --in-loop: training on cached features vs the frozen extractors in the loop, done fairly."""
    rate = need(r, "steps_per_s")
    return [Row(what=f"stage-two training steps/s on cached features vs frozen {' + '.join(r.get('extractors') or ['?'])} "
                     f"in the loop, {r.get('preset', '?')} preset, batch {need(r, 'batch')}",
                figure=need(rate, "cached"), unit="steps/s", higher_is_better=True, baseline=need(rate, "in_loop"),
                baseline_what=f"decode + faces in {need(r, 'workers')} DataLoader workers, the three extractors "
                              "in the loop (fair in-loop baseline)", target=REPORT,
                detail=f"median of {r.get('rounds')} interleaved runs of {r.get('steps')} steps each side, warm-up "
                       f"excluded ({r.get('warm_steps')})", bench="bench_loader --in-loop")]


def _load_note(r: dict) -> str:
    return f"load average {r['load_avg_1m']}" if r.get("load_avg_1m") is not None else ""


def rows_decode(r: dict) -> list[Row]:
    """bench_decode: captions/s for a whole split (batched, one context pass per batch) against the uncached
    decoder, captions identical, and the cached decoder's utilisation (compute or memory bound)."""
    split = f"{need(r, 'clips')} clips in batches of {r.get('batch')}"
    rows = [
        Row(what=f"greedy decoding of a whole split with the prefix cache, MAFW shapes (784 video tokens, 12 layers), "
                 f"{split}, max length {r.get('max_length')}: captions/s",
            figure=need(r, "cached_captions_per_s"), unit="captions/s", higher_is_better=True,
            baseline=need(r, "one_by_one_captions_per_s"), baseline_what="same clips decoded one by one (cached)",
            target=REPORT,
            detail="; ".join(x for x in (f"{r.get('tokens_generated')} tokens", _load_note(r)) if x),
            bench="bench_decode"),
        Row(what=f"greedy decoding with the prefix cache, batched ({split}) vs the uncached decoder: captions/s",
            figure=need(r, "cached_captions_per_s"), unit="captions/s", higher_is_better=True,
            baseline=need(r, "uncached_captions_per_s"), baseline_what="no cache (full forward per token), first clip",
            target=at_least(5), bench="bench_decode"),
        Row(what="greedy decoding: batched, one-by-one and uncached captions identical",
            figure=bool(need(r, "identical")), target=IS_TRUE, bench="bench_decode"),
    ]
    if "achieved_flops_per_s" in r:
        rows.append(Row(
            what="prefix-cached decoding utilisation: achieved GFLOP/s (flop_counter) vs this machine's matmul "
                 "GFLOP/s, same run",
            figure=r["achieved_flops_per_s"] / 1e9, unit="GFLOP/s", higher_is_better=True,
            baseline=need(r, "matmul_flops_per_s") / 1e9, baseline_what="dense 2048^2 matmul, best of 5",
            target=REPORT, detail=f"{r.get('bound', '?')}; " + _load_note(r), bench="bench_decode"))
    return rows


def rows_train(r: dict) -> list[Row]:
    rows = [Row(what=f"stage-two training step on cached tensors, {r.get('preset', '?')} preset, batch {r.get('batch')}: "
                     "steps/s",
                figure=need(r, "cached_steps_per_s"), unit="steps/s", higher_is_better=True,
                baseline=need(r, "e2e_steps_per_s"), baseline_what="same model, decode + frozen Video Swin in the loop",
                target=at_least(5), detail=_load_note(r), bench="bench_train")]
    if "utilisation" in r:
        rows.append(Row(
            what=f"training utilisation, {r.get('preset', '?')} preset, batch {r.get('batch')}: achieved GFLOP/s "
                 "(flop_counter x median steps/s) vs this machine's matmul GFLOP/s, same run",
            figure=need(r, "achieved_flops_per_s") / 1e9, unit="GFLOP/s", higher_is_better=True,
            baseline=need(r, "matmul_flops_per_s") / 1e9, baseline_what="dense 2048^2 fp32 matmul, best of 5",
            target=REPORT, detail=f"{need(r, 'flops_per_step') / 1e9:.1f} GFLOP per step; " + _load_note(r),
            bench="bench_train"))
    return rows


_GIB = re.compile(r"([0-9.]+)\s*GiB")


def peak_gib(r: dict) -> float:
    """bench_train --mafw-shapes reports peak memory as text ('CPU peak RSS 4.53 GiB'); its number."""
    mem = need(r, "peak_memory")
    if isinstance(mem, (int, float)):
        return float(mem)
    m = _GIB.search(str(mem))
    if m is None:
        raise MissingKey(f"peak_memory {mem!r} carries no GiB figure")
    return float(m.group(1))


UTILISATION_TARGET = 0.65
"""Issue 16: achieved / matmul FLOP/s of the training step at MAFW shapes, batch >= 4, this CPU, 1 thread."""

MEMORY_PER_CLIP_TARGET = 0.6
"""Issue 16: GiB of peak memory per clip at MAFW shapes with train.grad_checkpoint, this CPU."""


def rows_train_mafw(r: dict) -> list[Row]:
    mem = need(r, "peak_memory")
    gib = peak_gib(r)
    b = need(r, "batch")
    ckpt = ", gradient checkpointing" if r.get("grad_checkpoint") else ""
    dev = f"{r.get('device', '?')}, {r.get('dtype', 'fp32')}"
    base = _is_step_baseline(r)
    if base:
        dev += ", glibc's default heap and torch's dropout draws: the baseline"
    rows = [
        Row(what=f"peak memory of training at MAFW shapes, batch {b}{ckpt} ({dev})", figure=gib,
            unit="GiB", target=REPORT, detail="; ".join(x for x in (mem, _load_note(r)) if x),
            bench="bench_train --mafw-shapes"),
        Row(what=f"training steps/s at MAFW shapes, batch {b}{ckpt} ({dev}), median over {len(r.get('step_s', []))} "
                 "steps", figure=need(r, "steps_per_s"), unit="steps/s", higher_is_better=True, target=REPORT,
            detail=_load_note(r), bench="bench_train --mafw-shapes"),
    ]
    if "utilisation" in r:   # the ratio column is the utilisation: achieved FLOP/s over the matmul rate
        carries = b >= 4 and not ckpt and not base   # the target's row: checkpointing's recompute is not useful work
        note = (" (the target's row)" if carries else
                " (reported: the recompute costs time, not useful FLOPs; the target is on the row without "
                "checkpointing)" if ckpt and b >= 4 else "")
        rows.append(Row(
            what=f"training utilisation at MAFW shapes, batch {b}{ckpt}: achieved GFLOP/s (useful FLOPs: torch "
                 f"flop_counter over one forward + backward + update, no recompute, x median steps/s) vs this "
                 f"machine's 2048^2 matmul GFLOP/s, same run{note}",
            figure=need(r, "flops_per_step") * need(r, "steps_per_s") / 1e9, unit="GFLOP/s", higher_is_better=True,
            baseline=need(r, "matmul_flops_per_s") / 1e9, baseline_what="dense matmul, best of 5",
            target=at_least(UTILISATION_TARGET) if carries else REPORT,
            detail=f"{need(r, 'flops_per_step') / 1e9:.0f} GFLOP per step; " + _load_note(r),
            bench="bench_train --mafw-shapes"))
    return rows


def _is_step_baseline(r: dict) -> bool:
    """A MAFW-shaped step run as before issue 16's CPU step work: glibc's default heap asked for (--system-heap)
    or torch's dropout draws. A checkpointed run also has glibc's heap (train.keep_cpu_heap is not applied with
    checkpointing) but is not a baseline."""
    return bool(r.get("system_heap")) or r.get("dropout_rng") == "torch"


def rows_extract(r: dict) -> list[Row]:
    shared, separate = need(r, "shared"), need(r, "separate")
    return [Row(what=f"extraction, one decode for all three extractors, {r.get('mode', '?')} preset, "
                     f"{r.get('clips')} clips ({r.get('device', '?')}): clips/s",
                figure=need(shared, "clips_per_s"), unit="clips/s", higher_is_better=True,
                baseline=need(separate, "clips_per_s"), baseline_what="one decode per extractor",
                detail=f"decode+faces {shared.get('decode_s', 0):.1f} s, extractors {shared.get('compute_s', 0):.1f} s",
                target=at_least(2), bench="bench_extract")] + rows_extract_runner(r)


def rows_extract_runner(r: dict) -> list[Row]:
    """The production runner against the serial loop (clips/s, where the time goes), and the look-ahead bound."""
    if "runner" not in r:     # an older bench_extract result: the first row alone
        return []
    run, serial, mem = need(r, "runner"), need(r, "serial"), need(r, "lookahead")
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in need(r, "shares").items())
    bound = need(mem, "bound")
    return [
        Row(what=f"extraction as stage one runs it (extract_into_store: {run.get('workers')} decoding workers, "
                 f"bounded look-ahead, writer thread), {r.get('mode', '?')} preset, {r.get('clips')} clips "
                 f"({r.get('device', '?')}): clips/s", figure=need(run, "clips_per_s"), unit="clips/s",
            higher_is_better=True, baseline=need(serial, "clips_per_s"),
            baseline_what="one thread: decode, faces, models, write in turn", target=REPORT,
            detail=f"serial time shares: {shares}; the runner's loop waited {run.get('wait_s', 0):.1f} s of "
                   f"{run.get('seconds', 0):.1f} s for decoded clips", bench="bench_extract"),
        Row(what=f"extraction with the models slowed by {mem.get('delay_ms', 0):.0f} ms per batch of "
                 f"{mem.get('batch')}, {mem.get('clips')} clips, {mem.get('workers')} workers: most decoded clips "
                 "held in memory at once", figure=need(mem, "peak_bounded"), unit="clips",
            baseline=need(mem, "peak_unbounded"), baseline_what="unbounded look-ahead (Pool.imap, as before)",
            target=Target("under", bound + 0.5, f"<= {bound} (look-ahead + batch)"),
            detail=f"{mem.get('clip_mb', 0):.2f} MB of frames and face crops per clip", bench="bench_extract"),
    ]


def rows_score(r: dict) -> list[Row]:
    rows = [Row(what=f"scoring {need(r, 'captions')} captions, 1 reference each, all four metrics: seconds",
                figure=need(r, "seconds"), unit="s", target=under(20, "s"), bench="bench_score",
                baseline=r.get("baseline_seconds"),
                baseline_what="pycocoevalcap's own pipeline" if "baseline_seconds" in r else "")]
    if "same_numbers" in r:
        rows.append(Row(what="scoring: same numbers as pycocoevalcap's own pipeline", figure=bool(r["same_numbers"]),
                        target=IS_TRUE, bench="bench_score"))
    return rows


def rows_extract_mafw(r: dict) -> list[Row]:
    res = need(r, "result")
    mem = r.get("gpu_mem_gib")
    return [Row(what=f"extraction at MAFW shapes (32x224^2, swin3d_b + ResNet50-ER + ANFL, random weights), "
                     f"{r.get('clips')} clips ({r.get('device', '?')}): clips/s",
                figure=need(res, "clips_per_s"), unit="clips/s", higher_is_better=True, target=REPORT,
                detail=(f"peak GPU memory {mem:.2f} GiB; " if mem is not None else "")
                + f"decode+faces {res.get('decode_s', 0):.1f} s, extractors {res.get('compute_s', 0):.1f} s",
                bench="bench_extract --mafw-shapes")]


# ------------------------------------------------------------------------------------------- registry
@dataclass
class Spec:
    name: str                      # table/--only name
    module: str                    # tests.bench.<module>
    argv: list[str]                # modest sizes: the whole run fits ~10 minutes on 2 cores
    rows: Callable[[dict], list[Row]]
    timeout_s: float
    what: str                      # the target's wording, for error rows
    quick_argv: list[str] = field(default_factory=list)


def train_decode_specs() -> list[Spec]:
    """The training and decoding benchmarks (issue 16): the demo preset's step, a whole split decoded, MAFW
    shapes with gradient checkpointing at batch 1 and 4 (memory per clip from the two), and batch 4 without
    checkpointing (the utilisation target: checkpointing's recomputed forward is not useful work)."""
    return [
        Spec("train", "bench_train", [], rows_train, 150, "stage-two training step on cached tensors"),
        Spec("decode", "bench_decode", ["--clips", "4", "--batch", "4", "--max-length", "20"], rows_decode, 300,
             "greedy decoding of a whole split with the prefix cache, MAFW shapes", ["--clips", "2", "--batch", "2"]),
        Spec("train_mafw", "bench_train", ["--mafw-shapes", "--batch", "1", "--steps", "1", "--grad-checkpoint"],
             rows_train_mafw, 150, "training at MAFW shapes, batch 1, gradient checkpointing (CPU)"),
        Spec("train_mafw_b4", "bench_train", ["--mafw-shapes", "--batch", "4", "--steps", "2", "--grad-checkpoint"],
             rows_train_mafw, 480, "training at MAFW shapes, batch 4, gradient checkpointing (CPU): memory"),
        Spec("train_mafw_b4_full", "bench_train", ["--mafw-shapes", "--batch", "4", "--steps", "2"],
             rows_train_mafw, 480, "training at MAFW shapes, batch 4, no checkpointing (CPU): utilisation"),
        Spec("train_mafw_b4_base", "bench_train", ["--mafw-shapes", "--batch", "4", "--steps", "2", "--system-heap",
                                                   "--dropout-rng", "torch"],
             rows_train_mafw, 480, "the same step with glibc's default heap and torch's dropout draws (CPU): the "
             "baseline of the kept heap and the fast masks"),
    ]


SPECS = [
    Spec("store", "bench_store", ["--clips", "32"], rows_store, 90,
         "feature store as shipped (Zarr, bytes + crc32c) vs .npy per clip vs one HDF5 file: read MB/s, files", ["--clips", "16", "--small"]),
    Spec("loader", "bench_loader", ["--clips", "96", "--rounds", "6", "--steps", "10"], rows_loader, 150,
         "stage-two data loading from the feature store (in RAM, streaming, streaming behind compute), MAFW shapes, batch 32",
         ["--clips", "64", "--small", "--rounds", "3", "--steps", "3"]),
    Spec("loader_inloop", "bench_loader", ["--in-loop", "--clips", "24", "--batch", "8", "--steps", "4", "--rounds", "2"],
         rows_loader_inloop, 200, "stage-two training on cached features vs the three frozen extractors in the loop",
         ["--in-loop", "--clips", "12", "--batch", "4", "--steps", "2", "--rounds", "2"]),
    Spec("score", "bench_score", [], rows_score, 90, "scoring 1,600 captions, all four metrics"),
    Spec("extract", "bench_extract", ["--repeats", "2"], rows_extract, 240,
         "extraction: one decode for all three extractors; the runner vs the serial loop; look-ahead bound"),
    *train_decode_specs(),
]


def derived_rows(results: dict[str, dict]) -> list[Row]:
    """Rows computed from several benchmarks' results: the peak memory per clip of a MAFW-shaped training step
    with gradient checkpointing, from the peaks at two batch sizes (peak = fixed + per-clip x batch: weights,
    optimiser state and libraries are the fixed part; activations grow linearly with the batch), the batch-32
    estimate, and the projected GPU figure."""
    rows = _step_speedup_rows(results)
    a, b = results.get("train_mafw"), results.get("train_mafw_b4")
    if not a or not b:
        return rows
    ba, bb = need(a, "batch"), need(b, "batch")
    if ba == bb:
        return rows
    ga, gb = peak_gib(a), peak_gib(b)
    per_clip = (gb - ga) / (bb - ba)
    est = ga + per_clip * (32 - ba)
    ckpt = "with gradient checkpointing" if a.get("grad_checkpoint") and b.get("grad_checkpoint") else "no checkpointing"
    rows += [Row(what=f"peak memory per clip of training at MAFW shapes, {ckpt} (CPU): slope between batches {ba} "
                     f"and {bb}", figure=per_clip, unit="GiB", target=under(MEMORY_PER_CLIP_TARGET, "GiB"),
                detail=f"{ga:.2f} GiB at batch {ba}, {gb:.2f} GiB at batch {bb}; batch 32 estimated at {est:.1f} GiB",
                bench="bench_train --mafw-shapes")]
    if "projected_gpu_gib_per_clip" in b:
        rows.append(Row(what="projected GPU activation memory per clip at MAFW shapes, bf16, gradient checkpointing, "
                             "fused attention (counted from the shapes, not measured)",
                        figure=b["projected_gpu_gib_per_clip"], unit="GiB", target=REPORT,
                        detail=f"batch 32 ~ {32 * b['projected_gpu_gib_per_clip']:.1f} GiB of activations plus "
                               "weights and AdamW state", bench="bench_train --mafw-shapes"))
    return rows


def _step_speedup_rows(results: dict[str, dict]) -> list[Row]:
    """The MAFW-shaped step as the loop runs it (heap kept, fast dropout masks) over the same step with glibc's
    default heap and torch's dropout draws, same batches, same run."""
    new, old = results.get("train_mafw_b4_full"), results.get("train_mafw_b4_base")
    if not new or not old or _is_step_baseline(new) or not _is_step_baseline(old):
        return []
    return [Row(what=f"training steps/s at MAFW shapes, batch {need(new, 'batch')} (CPU): heap kept "
                     "(train.keep_cpu_heap) and fast dropout masks (model.dropout_rng=fast) vs glibc's default heap "
                     "and torch's draws", figure=need(new, "steps_per_s"), unit="steps/s", higher_is_better=True,
                baseline=need(old, "steps_per_s"), baseline_what="glibc default heap, torch dropout draws",
                target=REPORT, detail=f"{_load_note(new)}; baseline {_load_note(old)}",
                bench="bench_train --mafw-shapes [--system-heap --dropout-rng torch]")]


GPU_SPECS = [
    Spec("extract_mafw", "bench_extract", ["--mafw-shapes", "--clips", "16", "--batch", "4"], rows_extract_mafw, 150,
         "extraction at MAFW shapes on the GPU"),
    Spec("train_mafw", "bench_train", ["--mafw-shapes", "--batch", "32", "--steps", "10"], rows_train_mafw, 150,
         "training at MAFW shapes, batch 32, on the GPU (bf16)"),
    Spec("decode", "bench_decode", ["--device", "cuda", "--clips", "64", "--batch", "32", "--max-length", "20"], rows_decode, 120,
         "greedy decoding with the prefix cache, MAFW shapes, on the GPU"),
]
"""`--gpu` (tests/bench/gpu_check.sh): the GPU variants at MAFW shapes, random weights."""


# ------------------------------------------------------------------------------------------- running
def _child(module: str, out: str, argv: list[str]) -> int:
    """In the child process: run module.main(argv), write {"result": ...} or {"error": traceback} to `out`."""
    try:
        res = importlib.import_module(f"tests.bench.{module}").main(argv)
        payload = {"result": res}
        code = 0
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which records it as an error row
        traceback.print_exc()
        payload = {"error": f"{type(e).__name__}: {e}".strip(), "traceback": traceback.format_exc()}
        code = 1
    from tests.bench._table import _json_default

    Path(out).write_text(json.dumps(payload, default=_json_default))
    return code


def run_spec(spec: Spec, argv: list[str], timeout_s: float, threads: int = 0) -> tuple[dict | None, str | None, float]:
    """(result, error, seconds) of one benchmark in a child process of its own process group; `threads` > 0
    sets OMP_NUM_THREADS / MKL_NUM_THREADS for it (torch's intra-op threads)."""
    if importlib.util.find_spec(f"tests.bench.{spec.module}") is None:
        return None, f"tests/bench/{spec.module}.py is missing (not written yet)", 0.0
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "tests.bench", "--child", spec.module, str(out), "--", *argv]
        t0 = time.perf_counter()
        env = dict(os.environ)
        if threads > 0:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, env=env)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)   # the child and its DataLoader workers, nothing else
            proc.wait()
            return None, f"timed out after {timeout_s:.0f} s (its share of the run's budget)", time.perf_counter() - t0
        secs = time.perf_counter() - t0
        if not out.is_file():
            why = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
            hint = " (out of memory?)" if rc == -signal.SIGKILL else ""
            return None, f"{why}{hint} before returning a result", secs
        payload = json.loads(out.read_text())
    if "error" in payload:
        return None, payload["error"], secs
    return payload["result"], None, secs


def run_inprocess(spec: Spec, argv: list[str]) -> tuple[dict | None, str | None, float]:
    t0 = time.perf_counter()
    try:
        return importlib.import_module(f"tests.bench.{spec.module}").main(argv), None, time.perf_counter() - t0
    except ModuleNotFoundError as e:
        if e.name == f"tests.bench.{spec.module}":
            return None, f"tests/bench/{spec.module}.py is missing (not written yet)", 0.0
        raise
    except Exception as e:  # noqa: BLE001 - recorded as an error row and printed with its traceback
        traceback.print_exc()
        return None, f"{type(e).__name__}: {e}", time.perf_counter() - t0


def rows_for(spec: Spec, result: dict | None, error: str | None) -> list[Row]:
    """The benchmark's rows, or one error row saying why there are none."""
    if error is not None:
        return [error_row(spec.module, spec.what, error)]
    try:
        rows = spec.rows(result)
    except (MissingKey, KeyError, TypeError, ValueError) as e:
        return [error_row(spec.module, spec.what, f"unexpected result from {spec.module}.main: {e}")]
    for r in rows:
        r.bench = r.bench or spec.module
    return rows


def main(argv: list[str] | None = None) -> Results | int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        module, out, rest = argv[1], argv[2], argv[3:]
        return _child(module, out, rest[1:] if rest[:1] == ["--"] else rest)
    gpu = "--gpu" in argv
    specs = GPU_SPECS if gpu else SPECS
    names = [s.name for s in specs]
    ap = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(names)}")
    ap.add_argument("--skip", default="", help="comma-separated benchmarks to leave out (recorded as skipped)")
    ap.add_argument("--budget", type=float, default=1800.0, help="seconds for the whole run (default 1800)")
    ap.add_argument("--gpu", action="store_true", help="the GPU variants at MAFW shapes instead (gpu_check.sh)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes where a benchmark has them (smoke run)")
    ap.add_argument("--inprocess", action="store_true", help="call each main() in this process (debugging)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per benchmark (default 1: on a shared machine, 2 threads of small ops wait "
                         "on each other at every op and distort ratios; 0: leave torch's default)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench", help="folder for results.md / results.json")
    args = ap.parse_args(argv)
    only = [x for x in args.only.split(",") if x]
    skip = [x for x in args.skip.split(",") if x]
    unknown = sorted(set(only + skip) - set(names))
    if unknown:
        ap.error(f"unknown benchmarks {unknown}; choose from {names}")

    if args.inprocess and args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    machine = machine_info()
    machine["bench_threads"] = args.threads or machine["torch_threads"]
    deadline = time.monotonic() + args.budget
    rows: list[Row] = []
    runs: list[dict] = []
    for spec in specs:
        if (only and spec.name not in only) or spec.name in skip:
            continue
        bargv = (spec.quick_argv or spec.argv) if args.quick else spec.argv
        left = deadline - time.monotonic()
        print(f"\n=== {spec.name}: python -m tests.bench.{spec.module} {' '.join(bargv)}", flush=True)
        if left < 5:
            result, error, secs = None, f"not run: the run's budget of {args.budget:.0f} s was spent", 0.0
        elif args.inprocess:
            result, error, secs = run_inprocess(spec, bargv)
        else:
            result, error, secs = run_spec(spec, bargv, min(spec.timeout_s, left), args.threads)
        if error:
            print(f"=== {spec.name}: ERROR {error}", file=sys.stderr, flush=True)
        rows += rows_for(spec, result, error)
        runs.append({"name": spec.name, "module": spec.module, "argv": bargv, "seconds": round(secs, 2),
                     "error": error, "result": result})
    rows += derived_rows({b["name"]: b["result"] for b in runs if b["result"]})
    if hasattr(os, "getloadavg"):
        machine["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    res = Results(rows=rows, machine=machine, benchmarks=runs,
                  command="make bench  # .venv/bin/python -m tests.bench " + " ".join(argv))
    md, js = res.write(args.out, stem="results_gpu" if args.gpu else "results")
    print("\n" + res.markdown())
    print(f"wrote {md} and {js}")
    return res


if __name__ == "__main__":
    out = main()
    # exit 1 when a benchmark could not be measured (error rows); targets that do not hold are in the table
    sys.exit(out if isinstance(out, int) else int(any(r.error for r in out.rows)))
