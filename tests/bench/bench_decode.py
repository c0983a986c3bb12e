"""Benchmark: greedy decoding of a whole split at the MAFW preset's shapes, batched across clips with the
prefix cache (one context pass per batch gives the caption prefix and the emotion), against the same clips
decoded one by one, and against the uncached decoder on the first clip (captions must be identical).

784 video tokens of 1024 channels (Swin-B, 32x224^2), ER prompt + 3 AU prompts + 11 class tokens, a 12-layer
768-wide transformer, bert-base-uncased's vocabulary size, random weights, max length 20.

Utilisation: FLOPs of the batched run (torch.utils.flop_counter, on the untimed warm-up) over its time,
against this machine's matmul rate measured in the same run; split into the context pass and the token steps.
A phase is memory bound when its arithmetic intensity (FLOPs per byte it must read: weights, and the cached
keys/values in the steps) is below the machine balance (matmul FLOP/s over copy bandwidth, both measured here).

    .venv/bin/python -m tests.bench.bench_decode [--clips 8] [--batch 8] [--max-length 20] [--device cpu|cuda]
        [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from pipeline.config import load_config
from pipeline.caption.decoding import decode, decode_with_emotion
from pipeline.train.model import ECPA

BERT_VOCAB = 30522  # bert-base-uncased: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103


def build(device: torch.device, seed: int = 0) -> ECPA:
    torch.manual_seed(seed)
    cfg = load_config("mafw")
    m = ECPA(cfg.model, vocab_size=BERT_VOCAB, cls_id=101, sep_id=102, mask_id=103, pad_id=0,
             num_emotions=len(cfg.data.emotions), video_tokens=784, video_channels=1024, er_dim=2048,
             au_dim=512, num_aus=41)
    return m.to(device).eval()


def batch_for(n: int, device: torch.device, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "vid": torch.randn(n, 784, 1024, generator=g).half(),
        "er": torch.randn(n, 32, 2048, generator=g).half(),
        "au_feats": torch.randn(n, 8, 41, 512, generator=g).half(),
        "au_probs": torch.rand(n, 8, 41, generator=g),
    }


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device) -> tuple[object, float]:
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


class _PhaseClock:
    """Wraps the model's context pass to time it and count the token steps (the rest of a decode is steps)."""

    def __init__(self, model, device):
        self.model, self.device, self.context_s, self.steps = model, device, 0.0, 0
        self._ctx, self._step = model.context_cache, model.caption_step

    def __enter__(self):
        def ctx(*a, **k):
            out, s = _timed(lambda: self._ctx(*a, **k), self.device)
            self.context_s += s
            return out

        def step(*a, **k):
            self.steps += 1
            return self._step(*a, **k)

        self.model.context_cache, self.model.caption_step = ctx, step
        return self

    def __exit__(self, *exc):
        del self.model.context_cache, self.model.caption_step


def split_decode(model, clips: dict, batch: int, **kw) -> tuple[list, torch.Tensor]:
    """Captions and emotions of every clip, decoded in batches of `batch`."""
    n = clips["vid"].shape[0]
    ids, emo = [], []
    for i in range(0, n, batch):
        c, e = decode_with_emotion(model, {k: v[i:i + batch] for k, v in clips.items()}, **kw)
        ids += c
        emo.append(e)
    return ids, torch.cat(emo)


def copy_bandwidth(device, mb: int = 256) -> float:
    """Bytes/s of a large tensor copy (read + write), best of 3: the memory side of the machine balance."""
    a = torch.empty(mb * 2**20 // 4, device=device)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(3):
        _, s = _timed(lambda: b.copy_(a), device)
        best = min(best, s)
    return 2 * a.numel() * 4 / best


def _phase_bytes(model, clips: int, batch: int, steps: int, max_length: int) -> tuple[float, float]:
    """Bytes the context pass and the token steps must read at least: the weights once per batch (context) or
    per step, plus per step the cached context and caption keys/values of the clips in the batch."""
    w = sum(p.numel() * p.element_size() for p in model.parameters())
    layers, H = len(model.encoder.layer), model.cfg.hidden
    Lc = model.video_tokens + model.num_prompts
    kv = 2 * layers * batch * (Lc + max_length) * H * 4
    batches = -(-clips // batch)
    return batches * w, steps * (w + kv)


def _verdict(what: str, flops: float, nbytes: float, seconds: float, peak: float, bw: float) -> str:
    """Roofline words for a phase: which roof bounds it (compute when FLOPs/byte >= the machine balance), and
    how close it gets; far below both roofs means per-op overhead (many small kernels) is what limits it."""
    intensity = flops / nbytes
    roof = min(peak, intensity * bw)
    kind = "compute" if intensity * bw >= peak else "memory"
    eff = flops / seconds / roof
    tail = "" if eff >= 0.3 else ": far below it, per-op overhead bound (many small ops)"
    return f"{what} {kind} bound ({intensity:.1f} FLOP/B), at {100 * eff:.0f}% of that roof{tail}"


def utilisation(model, clips: dict, batch: int, device, kw: dict) -> dict:
    from torch.utils.flop_counter import FlopCounterMode
    from tests.bench.bench_train import matmul_flops_per_s

    ctx_counter, all_counter = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with all_counter:
        split_decode(model, clips, batch, **kw)                    # warm-up, counted
    with ctx_counter:
        model.context_cache({k: v[:batch] for k, v in clips.items()}, kw["max_length"])
    batches = -(-clips["vid"].shape[0] // batch)
    flops = all_counter.get_total_flops()
    ctx_flops = min(flops, ctx_counter.get_total_flops() * batches)
    with _PhaseClock(model, device) as clock:
        (captions, _), total_s = _timed(lambda: split_decode(model, clips, batch, **kw), device)
    peak, bw = matmul_flops_per_s(device), copy_bandwidth(device)
    ctx_bytes, step_bytes = _phase_bytes(model, clips["vid"].shape[0], batch, clock.steps, kw["max_length"])
    step_s = max(total_s - clock.context_s, 1e-9)
    balance = peak / bw
    bound = (_verdict("context pass", ctx_flops, ctx_bytes, clock.context_s, peak, bw)
             + f" ({100 * clock.context_s / total_s:.0f}% of the time); "
             + _verdict("token steps", flops - ctx_flops, step_bytes, step_s, peak, bw)
             + f"; machine balance {balance:.1f} FLOP/B")
    return {"flops": flops, "achieved_flops_per_s": flops / total_s, "matmul_flops_per_s": peak, "total_s": total_s,
            "copy_bytes_per_s": bw, "context_s": clock.context_s, "steps_s": step_s, "token_steps": clock.steps,
            "utilisation": flops / total_s / peak, "bound": bound, "captions": captions}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8, help="clips in the split")
    ap.add_argument("--batch", type=int, default=8, help="clips per decoding batch (caption.batch_size)")
    ap.add_argument("--max-length", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: torch's default). 1 by default: on a shared 2-core machine a second "
                         "thread stalls the many small ops of cached decoding")
    args = ap.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    model = build(device)
    clips = {k: v.to(device) for k, v in batch_for(args.clips, device).items()}
    kw = dict(beam_size=1, max_length=args.max_length)

    util = utilisation(model, clips, args.batch, device, kw)          # warm-up (counted), then the timed run
    t_batched = util["total_s"]
    cached = util.pop("captions")
    (single, _), t_single = _timed(lambda: split_decode(model, clips, 1, **kw), device)
    first = {k: v[:1] for k, v in clips.items()}
    uncached, t_uncached = _timed(lambda: decode(model, first, use_cache=False, **kw), device)
    identical = cached == single and cached[:1] == uncached
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    out = {
        "device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"),
        "clips": args.clips, "batch": args.batch, "beam": 1, "max_length": args.max_length,
        "tokens_generated": sum(len(c) for c in cached), "cached_s": round(t_batched, 3),
        "cached_captions_per_s": round(args.clips / t_batched, 3),
        "one_by_one_captions_per_s": round(args.clips / t_single, 3),
        "uncached_captions_per_s": round(1 / t_uncached, 4), "uncached_s": round(t_uncached, 3),
        "speedup": round(t_uncached * args.clips / t_batched, 2), "identical": identical, "load_avg_1m": load, **util,
    }
    print(f"decode bench ({out['device']}; {args.clips} clips in batches of {args.batch}, max length "
          f"{args.max_length}, {out['tokens_generated']} tokens; load average {load})")
    print(f"  prefix cache, batched    : {out['cached_captions_per_s']:8.3f} captions/s ({t_batched:.2f} s)")
    print(f"  prefix cache, one by one : {out['one_by_one_captions_per_s']:8.3f} captions/s ({t_single:.2f} s)")
    print(f"  uncached (first clip)    : {out['uncached_captions_per_s']:8.4f} captions/s ({t_uncached:.2f} s)")
    print(f"  identical captions: {identical}; utilisation {100 * util['utilisation']:.0f}% "
          f"({util['achieved_flops_per_s'] / 1e9:.1f} of {util['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s)")
    print(f"  {util['bound']}")
    assert identical, "batched / one-by-one / uncached captions differ"
    return out


if __name__ == "__main__":
    main()
