"""Training steps/s on cached tensors vs the end-to-end way (decode the clips and run the frozen Video Swin
inside the loop), same model, same batches, same run; `--mafw-shapes`: the paper-sized step (784 x 1024 video
tokens, 12 layers x 768, batch 32 by default) with steps/s and peak memory.

    .venv/bin/python -m tests.bench.bench_train [--steps 6] [--clips 24]
    .venv/bin/python -m tests.bench.bench_train --mafw-shapes [--batch 32] [--steps 2]
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np
import torch


def _step(model, opt, batch, tok, tcfg, device):
    from pipeline.train.losses import compute_losses, fixed_weights, mask_tokens, total_loss

    ids, labels = mask_tokens(batch["input_ids"], pad_id=tok.pad_id, special_ids=tok.special_ids, mask_id=tok.mask_id,
                              vocab_size=tok.vocab_size, generator=torch.Generator().manual_seed(0))
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    out = model(batch, ids.to(device), labels.to(device))
    weights = {k: 1.0 for k in fixed_weights(tcfg)}
    loss = total_loss(compute_losses(out, batch, tcfg, model), weights, tcfg.lambda_sparse)
    opt.zero_grad()
    loss.backward()
    opt.step()


def matmul_flops_per_s(device, n: int = 2048, repeats: int = 5) -> float:
    """This machine's dense fp32 matmul rate (bf16 on CUDA), n x n, best of `repeats`: the utilisation
    denominator, measured in the same process as the figure it divides."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def step_flops(model, opt, batch, tok, tcfg, device) -> int:
    """FLOPs of one training step (forward + backward) counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _step(model, opt, batch, tok, tcfg, device)
    return int(counter.get_total_flops())


def _peak_mem(device) -> str:
    if device.type == "cuda":
        return f"CUDA max allocated {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"CPU peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


def cached_vs_e2e(steps: int, clips: int) -> dict:
    from pipeline.config import load_config
    from pipeline.data.manifest import read_manifest
    from pipeline.train.model import build_model
    from pipeline.extract.networks.extractors import build_extractors
    from pipeline.train.tokenizer import train_wordpiece
    from pipeline.train.data import CaptionPairs, FeatureSource, collate, match_clips, open_checked_store
    from pipeline.extract.video import decode_clip
    from stages import extract
    from stages.plan import plan

    root = tempfile.mkdtemp(prefix="bench_train_")
    cfg = load_config("demo", [f"data.root={root}/data", f"data.cache_root={root}/cache", f"data.demo_clips={clips}",
                               "extract.workers=0", "extract.random_init=true"])
    extract.run(cfg, progress=False)
    store = plan(cfg, upto="extract")["extract"].out_dir / "store.zarr"
    manifest = read_manifest(cfg.manifest_path)
    g, shapes = open_checked_store(store)
    refs, _ = match_clips(g, store, manifest, ("train",))
    tok = train_wordpiece([c for r in refs for c in r.captions], cfg.model.vocab_size)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(cfg.model, tok, num_emotions=len(cfg.data.emotions), shapes=shapes).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ds = CaptionPairs(refs, FeatureSource(store, [r.row for r in refs], True), tok, cfg.model.max_caption_len)
    bs = cfg.train.batch_size
    batches = [collate([ds[(i * bs + j) % len(ds)] for j in range(bs)], tok.pad_id) for i in range(steps + 1)]
    video_of = {c.id: c.video for c in manifest}
    ex = build_extractors(cfg.extract, len(cfg.data.emotions), device, seed=0)

    _step(model, opt, batches[0], tok, cfg.train, device)       # warm-up
    t = time.perf_counter()
    for b in batches[1:]:
        _step(model, opt, b, tok, cfg.train, device)
    cached = steps / (time.perf_counter() - t)

    t = time.perf_counter()
    for b in batches[1:]:
        frames = [decode_clip(video_of[cid], cfg.extract.num_frames, cfg.extract.size, cfg.extract.crop).frames
                  for cid in b["clip_id"]]
        clip = torch.from_numpy(np.stack(frames)).permute(0, 4, 1, 2, 3).float() / 255.0   # (B, 3, T, H, W)
        b = dict(b, vid=ex.video(clip).half())
        _step(model, opt, b, tok, cfg.train, device)
    e2e = steps / (time.perf_counter() - t)
    res = {"cached_steps_per_s": cached, "e2e_steps_per_s": e2e, "speedup": cached / e2e, "batch": bs,
           "video_tokens": shapes.tokens, "preset": "demo"}
    print(f"demo preset, batch {bs}, {shapes.tokens} video tokens, CPU x{torch.get_num_threads()} threads")
    print(f"  cached tensors        : {cached:.2f} steps/s")
    print(f"  decode + Video Swin   : {e2e:.2f} steps/s  (frozen Swin inside the loop)")
    print(f"  ratio cached / e2e    : {cached / e2e:.1f}x")
    return res


def mafw_shapes(steps: int, batch: int, grad_checkpoint: bool = False) -> dict:
    from pipeline.config import load_config
    from pipeline.train.model import ECPA

    cfg = load_config("mafw")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = ECPA(cfg.model, vocab_size=30522, cls_id=101, sep_id=102, mask_id=103, pad_id=0, num_emotions=11,
                 video_tokens=784, video_channels=1024).to(device).train()
    model.grad_checkpoint = grad_checkpoint
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    class Tok:
        special_ids, mask_id, vocab_size, pad_id = frozenset({0, 100, 101, 102, 103}), 103, 30522, 0

    B = batch
    ids = torch.randint(1000, 30000, (B, 50))
    ids[:, 0], ids[:, -1] = 101, 102
    b = {"vid": torch.randn(B, 784, 1024).half(), "er": torch.randn(B, 32, 2048).half(),
         "au_feats": torch.randn(B, 8, 41, 512).half(), "au_probs": torch.rand(B, 8, 41),
         "emotion": torch.randint(0, 11, (B,)), "input_ids": ids}
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with amp:
        _step(model, opt, b, Tok, cfg.train, device)            # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            _step(model, opt, b, Tok, cfg.train, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
    rate = steps / (time.perf_counter() - t)
    mem = _peak_mem(device)
    with amp:
        flops = step_flops(model, opt, b, Tok, cfg.train, device)
    peak = matmul_flops_per_s(device)
    util = flops * rate / peak
    print(f"MAFW shapes: 784x1024 video tokens, 12 layers x 768, batch {B}, {device}, grad checkpointing "
          f"{'on' if grad_checkpoint else 'off'}: {rate:.3f} steps/s, {mem}")
    print(f"  {flops / 1e9:.0f} GFLOP per step ({flops / B / 1e9:.0f} per clip) -> {flops * rate / 1e9:.1f} GFLOP/s "
          f"achieved vs {peak / 1e9:.1f} GFLOP/s matmul peak: utilisation {100 * util:.0f}%")
    return {"steps_per_s": rate, "peak_memory": mem, "batch": B, "device": str(device), "flops_per_step": flops,
            "matmul_flops_per_s": peak, "utilisation": util, "grad_checkpoint": grad_checkpoint}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mafw-shapes", action="store_true")
    ap.add_argument("--grad-checkpoint", action="store_true", help="train.grad_checkpoint on (MAFW shapes)")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2 if not torch.cuda.is_available() else 16)))
    if a.mafw_shapes:
        return mafw_shapes(a.steps or 2, a.batch, a.grad_checkpoint)
    return cached_vs_e2e(a.steps or 6, a.clips)


if __name__ == "__main__":
    main()
