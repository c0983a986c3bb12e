"""Training steps/s on cached tensors vs the end-to-end way (decode the clips and run the frozen Video Swin
inside the loop), same model, same batches, same run; `--mafw-shapes`: the paper-sized step (784 x 1024 video
tokens, 12 layers x 768) with steps/s, peak memory and utilisation.

Utilisation = achieved FLOP/s of the training step (useful FLOPs: one forward + backward + update counted by
torch.utils.flop_counter on an extra step with gradient checkpointing off, so a checkpointed run's recompute is
not counted as work; times the median steps/s over the timed steps, after one untimed warm-up step at MAFW
shapes, which allocates the optimiser state and grows the heap) over this machine's dense matmul FLOP/s in the
step's compute dtype, measured in the same process. On the CPU the step runs as the training loop runs it: the
heap kept without checkpointing (train.keep_cpu_heap; `--system-heap` for glibc's default) and the model's
dropout masks (model.dropout_rng; `--dropout-rng torch` for torch's draws); `--compile` is train.compile. The MLM
masking is done before the clock starts, as the training loader's workers do it (`MaskedPairs`), so the step
timed is the step `pipeline.train.loop` runs.

    .venv/bin/python -m tests.bench.bench_train [--steps 6] [--clips 24]
    .venv/bin/python -m tests.bench.bench_train --mafw-shapes [--batch 4] [--steps 2] [--grad-checkpoint]
                                                [--system-heap] [--dropout-rng torch] [--compile]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

import numpy as np
import torch

from pipeline.device import keep_cpu_heap
from pipeline.train.loop import keeps_cpu_heap

UTILISATION_TARGET = 0.65
"""Issue 16: achieved / matmul FLOP/s at MAFW shapes, batch >= 4, on this CPU with 1 thread."""


def prepare(batch: dict, tok, seed: int = 0) -> dict:
    """The batch as the training loader gives it: MLM-masked per pair (`MaskedPairs`' masking), masked_ids,
    mlm_labels and mlm_index added by the collate."""
    from pipeline.train.data import _pad_rows
    from pipeline.train.losses import mask_tokens

    rows, labels = [], []
    for i, row in enumerate(batch["input_ids"]):
        row = row[row != tok.pad_id] if (row == tok.pad_id).any() else row
        ids, lab = mask_tokens(row[None], pad_id=tok.pad_id, special_ids=frozenset(tok.special_ids),
                               mask_id=tok.mask_id, vocab_size=tok.vocab_size,
                               generator=torch.Generator().manual_seed(seed * 1000 + i))
        rows.append(ids[0])
        labels.append(lab[0])
    L = batch["input_ids"].shape[1]
    out = dict(batch, masked_ids=_pad_rows(rows, L, tok.pad_id), mlm_labels=_pad_rows(labels, L, -100))
    out["mlm_index"] = (out["mlm_labels"] != -100).flatten().nonzero().squeeze(1)
    return out


def _step(model, opt, batch, tcfg, device, net=None) -> None:
    """One training step as `pipeline.train.loop._train_step` runs it (fixed unit weights): the forward through
    `net` (the torch.compile'd model with train.compile; default the model), the losses from the model."""
    from pipeline.train.losses import compute_losses, task_losses, total_loss

    batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
    out = (model if net is None else net)(batch, batch["masked_ids"], batch["mlm_labels"])
    loss = total_loss(compute_losses(out, batch, tcfg, model), {k: 1.0 for k in task_losses(tcfg)},
                      tcfg.lambda_sparse)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_steps(model, opt, batches: list[dict], tcfg, device, amp, warmup: int = 0,
                net=None) -> tuple[list[float], float]:
    """(seconds of each step over `batches` after the first `warmup` ones, peak memory in GiB after them all).
    The first step also allocates the optimiser state and grows the heap: the median over the timed steps is
    the figure."""
    times = []
    for b in batches[:warmup]:
        with amp:
            _step(model, opt, b, tcfg, device, net)
    for b in batches[warmup:]:
        with amp:
            _sync(device)
            t = time.perf_counter()
            _step(model, opt, b, tcfg, device, net)
            _sync(device)
        times.append(time.perf_counter() - t)
    return times, _peak_gib(device)


def count_flops(model, opt, batch: dict, tcfg, device, amp) -> int:
    """Useful FLOPs of one training step (one forward, one backward, the update) counted by
    torch.utils.flop_counter, with gradient checkpointing switched off for the count: its recomputed forward is
    hardware work, not model work, and counting it would flatter a checkpointed step's utilisation. Run after
    the memory is read (the count's step keeps every activation, so the peak grows)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    ckpt = getattr(model, "grad_checkpoint", False)
    model.grad_checkpoint = False
    try:
        with amp, counter:
            _step(model, opt, batch, tcfg, device)
    finally:
        model.grad_checkpoint = ckpt
    return int(counter.get_total_flops())


def matmul_flops_per_s(device, dtype: torch.dtype | None = None, n: int = 2048, repeats: int = 5) -> float:
    """This machine's dense matmul rate in `dtype` (default fp32 on CPU, bf16 on CUDA), n x n, best of
    `repeats`: the utilisation denominator, measured in the same process as the figure it divides."""
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def _peak_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def utilisation(flops: int, times: list[float], peak: float) -> dict:
    """Median steps/s over `times` and what it achieves against the matmul rate `peak`."""
    rate = 1.0 / statistics.median(times)
    return {"steps_per_s": rate, "step_s": [round(t, 3) for t in times], "flops_per_step": flops,
            "achieved_flops_per_s": flops * rate, "matmul_flops_per_s": peak, "utilisation": flops * rate / peak}


def cached_vs_e2e(steps: int, clips: int) -> dict:
    from pipeline.config import load_config
    from pipeline.data.manifest import read_manifest
    from pipeline.train.model import build_model
    from pipeline.extract.networks.extractors import build_extractors
    from pipeline.train.tokenizer import train_wordpiece
    from pipeline.train.data import CaptionPairs, FeatureSource, collate, match_clips, open_checked_store
    from pipeline.extract.video import decode_clip
    from pipeline.extract import stage as extract
    from pipeline.chain.plan import prepare_and_plan as plan

    root = tempfile.mkdtemp(prefix="bench_train_")
    cfg = load_config("demo", [f"data.root={root}/data", f"data.cache_root={root}/cache", f"data.demo_clips={clips}",
                               "extract.workers=0", "extract.random_init=true"])
    extract.run(cfg)
    store = plan(cfg, upto="extract")["extract"].out_dir / "store.zarr"
    manifest = read_manifest(cfg.manifest_path)
    g, shapes = open_checked_store(store)
    refs, _ = match_clips(g, store, manifest, ("train",))
    tok = train_wordpiece([c for r in refs for c in r.captions], cfg.model.vocab_size)
    device = torch.device("cpu")
    if keeps_cpu_heap(cfg.train, device):   # as pipeline.train.loop does (both sides of the ratio run here)
        keep_cpu_heap()
    torch.manual_seed(0)
    model = build_model(cfg.model, tok, num_emotions=len(cfg.data.emotions), shapes=shapes).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ds = CaptionPairs(refs, FeatureSource(store, [r.row for r in refs], True), tok, cfg.model.max_caption_len)
    bs = cfg.train.batch_size
    batches = [prepare(collate([ds[(i * bs + j) % len(ds)] for j in range(bs)], tok.pad_id), tok, seed=i)
               for i in range(steps + 1)]
    video_of = {c.id: c.video for c in manifest}
    ex = build_extractors(cfg.extract, len(cfg.data.emotions), device, seed=0)

    amp = torch.autocast("cpu", enabled=False)
    times, _ = timed_steps(model, opt, batches[1:], cfg.train, device, amp)
    util = utilisation(count_flops(model, opt, batches[0], cfg.train, device, amp), times, matmul_flops_per_s(device))
    cached = steps / sum(times)

    t = time.perf_counter()
    for b in batches[1:]:
        frames = [decode_clip(video_of[cid], cfg.extract.num_frames, cfg.extract.size, cfg.extract.crop).frames
                  for cid in b["clip_id"]]
        clip = torch.from_numpy(np.stack(frames)).permute(0, 4, 1, 2, 3).float() / 255.0   # (B, 3, T, H, W)
        b = dict(b, vid=ex.video(clip).half())
        _step(model, opt, b, cfg.train, device)
    e2e = steps / (time.perf_counter() - t)
    res = {"cached_steps_per_s": cached, "e2e_steps_per_s": e2e, "speedup": cached / e2e, "batch": bs,
           "video_tokens": shapes.tokens, "preset": "demo", "load_avg_1m": _load(), **util}
    print(f"demo preset, batch {bs}, {shapes.tokens} video tokens, CPU x{torch.get_num_threads()} threads "
          f"(load average {res['load_avg_1m']})")
    print(f"  cached tensors        : {cached:.2f} steps/s")
    print(f"  decode + Video Swin   : {e2e:.2f} steps/s  (frozen Swin inside the loop)")
    print(f"  ratio cached / e2e    : {cached / e2e:.1f}x")
    _print_util(util)
    return res


def _print_util(u: dict) -> None:
    print(f"  {u['flops_per_step'] / 1e9:.1f} GFLOP per step, median {1 / u['steps_per_s']:.2f} s/step -> "
          f"{u['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s vs {u['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s matmul: "
          f"utilisation {100 * u['utilisation']:.0f}%")


def projected_gpu_gib_per_clip(cfg, tokens: int, caption: int = 50, masked: int = 25, vocab: int = 30522) -> float:
    """Activation memory per clip of a bf16 GPU step with train.grad_checkpoint and the fused (memory-
    efficient) attention kernel, counted from the shapes (a projection, not a measurement): each layer's fp32
    input kept for the recompute; one layer's bf16 activations alive during its recompute (q, k, v, attention
    output, two dense outputs, the FFN's intermediate before and after GELU, LayerNorm statistics); the
    attention's fp32 log-sum-exp; the gradient of the learned bias (heads x L x L bf16) that the kernel writes
    for the sparse mask; the MLM logits of the masked tokens (fp32, with their gradient)."""
    m = cfg.model
    L = caption + tokens + 1 + m.top_k + 11
    H, inter, layers, heads = m.hidden, m.intermediate, m.layers, m.heads
    kept = layers * L * H * 4
    one_layer = (6 * L * H + 2 * L * inter) * 2 + heads * L * 4
    bias_grad = heads * L * L * 2 if m.sparse_attention else 0
    mlm = 2 * masked * vocab * 4
    return (kept + one_layer + bias_grad + mlm) / 2**30


def mafw_shapes(steps: int, batch: int, grad_checkpoint: bool = False, system_heap: bool = False,
                dropout_rng: str | None = None, compile: bool = False) -> dict:
    """`system_heap`: glibc's default allocation (train.keep_cpu_heap=false), the baseline of the heap row;
    `dropout_rng`: model.dropout_rng (default the preset's); `compile`: train.compile, the forward through
    torch.compile (the warm-up step pays the compilation; FLOPs counted on the eager model, the same maths)."""
    from pipeline.config import load_config
    from pipeline.train.model import ECPA

    cfg = load_config("mafw", [f"train.grad_checkpoint={grad_checkpoint}", f"train.keep_cpu_heap={not system_heap}",
                               f"train.compile={compile}"]
                      + ([f"model.dropout_rng={dropout_rng}"] if dropout_rng else []))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    heap_kept = keeps_cpu_heap(cfg.train, device) and keep_cpu_heap()   # as pipeline.train.loop decides
    torch.manual_seed(0)
    model = ECPA(cfg.model, vocab_size=30522, cls_id=101, sep_id=102, mask_id=103, pad_id=0, num_emotions=11,
                 video_tokens=784, video_channels=1024).to(device).train()
    model.grad_checkpoint = grad_checkpoint
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    class Tok:
        special_ids, mask_id, vocab_size, pad_id = frozenset({0, 100, 101, 102, 103}), 103, 30522, 0

    B = batch
    batches = []   # batches[0] is counted (flop_counter) after the others: batches[1] warms up, the rest are timed
    for s in range(steps + 2):
        g = torch.Generator().manual_seed(s)
        ids = torch.randint(1000, 30000, (B, 50), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102
        batches.append(prepare({
            "vid": torch.randn(B, 784, 1024, generator=g).half(), "er": torch.randn(B, 32, 2048, generator=g).half(),
            "au_feats": torch.randn(B, 8, 41, 512, generator=g).half(), "au_probs": torch.rand(B, 8, 41, generator=g),
            "emotion": torch.randint(0, 11, (B,), generator=g), "input_ids": ids}, Tok, seed=s))
    bf16 = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    net = torch.compile(model) if cfg.train.compile else None      # as pipeline.train.loop._wrap does
    times, gib = timed_steps(model, opt, batches[1:], cfg.train, device, amp, warmup=1, net=net)
    util = utilisation(count_flops(model, opt, batches[0], cfg.train, device, amp), times, matmul_flops_per_s(device))
    mem = f"{'CUDA max allocated' if bf16 else 'CPU peak RSS'} {gib:.2f} GiB"
    res = {"peak_memory": mem, "peak_gib": gib, "batch": B, "device": str(device), "grad_checkpoint": grad_checkpoint,
           "dtype": "bf16" if bf16 else "fp32", "load_avg_1m": _load(), "threads": torch.get_num_threads(),
           "heap_kept": heap_kept, "system_heap": system_heap, "dropout_rng": cfg.model.dropout_rng,
           "compiled": cfg.train.compile,
           "projected_gpu_gib_per_clip": projected_gpu_gib_per_clip(cfg, 784), **util}
    print(f"MAFW shapes: 784x1024 video tokens, 12 layers x 768, batch {B}, {device} x{res['threads']}, grad "
          f"checkpointing {'on' if grad_checkpoint else 'off'}, heap {'kept' if heap_kept else 'glibc default'}, "
          f"dropout masks {cfg.model.dropout_rng}{', torch.compile' if cfg.train.compile else ''}: {util['steps_per_s']:.3f} steps/s (median of "
          f"{len(times)} after a warm-up step), {mem} (load average {res['load_avg_1m']})")
    _print_util(util)
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--mafw-shapes", action="store_true")
    ap.add_argument("--grad-checkpoint", action="store_true", help="train.grad_checkpoint on (MAFW shapes)")
    ap.add_argument("--system-heap", action="store_true", help="glibc's default allocation, train.keep_cpu_heap=false "
                    "(MAFW shapes: the baseline of the kept heap)")
    ap.add_argument("--dropout-rng", choices=["fast", "torch"], default=None, help="model.dropout_rng (MAFW shapes)")
    ap.add_argument("--compile", action="store_true", help="train.compile: torch.compile the forward (MAFW shapes)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2 if not torch.cuda.is_available() else 16)))
    if a.mafw_shapes:
        return mafw_shapes(a.steps or 2, a.batch, a.grad_checkpoint, a.system_heap, a.dropout_rng, a.compile)
    return cached_vs_e2e(a.steps or 6, a.clips)


if __name__ == "__main__":
    main()
