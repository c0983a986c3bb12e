"""Benchmark: greedy decoding with and without the prefix cache at the MAFW preset's shapes.

784 video tokens of 1024 channels (Swin-B, 32x224^2), ER prompt + 3 AU prompts + 11 class tokens, a 12-layer
768-wide transformer, bert-base-uncased's vocabulary size, random weights, max length 20. Both paths run in
the same process on the same clips; the captions must be identical.

    .venv/bin/python -m tests.bench.bench_decode [--clips 2] [--max-length 20] [--device cpu|cuda] [--beam 1]
        [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch

from pipeline.config import load_config
from pipeline.caption.decoding import decode
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


def _timed(fn, device) -> tuple[object, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=20)
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for both paths (0: torch's default). 1 by default: on a shared 2-core "
                         "machine a second thread stalls the many small ops of cached decoding and slows both paths")
    args = ap.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    model = build(device)
    batch = {k: v.to(device) for k, v in batch_for(args.clips, device).items()}
    kw = dict(beam_size=args.beam, max_length=args.max_length)

    decode(model, {k: v[:1] for k, v in batch.items()}, max_length=3)  # warm-up (kernels, allocator)
    cached, t_cached = _timed(lambda: decode(model, batch, use_cache=True, **kw), device)
    uncached, t_uncached = _timed(lambda: decode(model, batch, use_cache=False, **kw), device)
    identical = cached == uncached
    tokens = sum(len(c) for c in cached)
    out = {
        "device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"),
        "clips": args.clips, "beam": args.beam, "max_length": args.max_length, "tokens_generated": tokens,
        "cached_s": round(t_cached, 3), "uncached_s": round(t_uncached, 3),
        "cached_captions_per_s": round(args.clips / t_cached, 3),
        "uncached_captions_per_s": round(args.clips / t_uncached, 3),
        "speedup": round(t_uncached / t_cached, 2), "identical": identical,
    }
    print(f"decode bench ({out['device']}; {args.clips} clips, beam {args.beam}, max length {args.max_length}, "
          f"{tokens} tokens generated)")
    print(f"  prefix cache : {out['cached_captions_per_s']:8.3f} captions/s ({t_cached:.2f} s)")
    print(f"  uncached     : {out['uncached_captions_per_s']:8.3f} captions/s ({t_uncached:.2f} s)")
    print(f"  speedup      : {out['speedup']:.2f}x   identical captions: {identical}")
    assert identical, "prefix-cached captions differ from the uncached ones"
    return out


if __name__ == "__main__":
    main()
