"""Stage two's training loop on cached tensors: AdamW, warm-up + linear decay, gradient clipping, autocast,
DWA or fixed loss weights, a checkpoint every epoch with exact resume, per-epoch validation (captions + CIDEr,
emotion accuracy) keeping best.pt by CIDEr, metrics.jsonl and a loss-curve PNG. Runs under torchrun (DDP).

Run folder (written by rank 0):

    tokenizer.json  checkpoints/last.pt  checkpoints/best.pt  metrics.jsonl  loss_curves.png  val/epoch_<e>.json

Exact resume: the data order, the MLM masking and dropout are reseeded from (seed, epoch, rank) at the start of
every epoch, and last.pt carries model, optimiser, scheduler, DWA history, best score and the RNG states, so a
run resumed from epoch e's checkpoint ends with the same weights as an uninterrupted one (on CPU).

Ablations (Tables IV-VI of the paper) are config fields; `ABLATIONS` names the rows (`ablation_sets(name)`):

    baseline   plain SwinBERT: no ER/AU prompts, no class tokens, no word mask, no L_ER, no AU-word alignment
    vep        + VEP (ER prompt and AU prompts)
    vep_tep    + VEP + TEP (class tokens, word mask)
    ecpa       + ECA: L_ER and L_AUCL (the full model, the defaults)
    no_er_align / no_au_align        Table V: ECPA without ER-sentence / without AU-word alignment
    er_global / er_sim_ce            Table VI, upper half: other ER-sentence alignment losses
    au_ce / au_contrastive           Table VI, lower half: other AU-word alignment losses
    visual_sentence                  the [CLASS-k] tokens in the context (never see the caption): L_ER visual-only
"""
from __future__ import annotations

import functools
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pipeline.config import Config, ModelConfig
from pipeline.errors import CacheMismatchError, UserError
from pipeline.train.losses import (
    AU_LOSSES, ER_LOSSES, LossWeights, compute_losses, emotion_readout, fixed_weights, mask_tokens, task_losses,
    total_loss,
)
from pipeline.train.attention import DROPOUT_RNGS
from pipeline.train.model import ECPA, SENTENCE_PROMPTS, SPARSE_MASKS, build_model
from pipeline.progress import quiet
from pipeline.records import atomic_write_text, save_figure
from pipeline.extract.store import StoreShapes
from pipeline.train.tokenizer import (
    TOKENIZER_FILE, CaptionTokenizer, build_tokenizer, decoding_length, load_tokenizer, piece_counts,
)
from pipeline.train.data import (
    CaptionPairs, Clips, EpochSampler, EpochTagged, FeatureSource, MaskedPairs, collate, match_clips,
    open_checked_store, plan_loading,
)

CKPT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curves.png"

_BASE_OFF = ["model.use_er_prompt=false", "model.use_au_prompts=false", "model.use_class_tokens=false",
             "model.use_word_mask=false", "train.align_er=false", "train.align_au=false"]
ABLATIONS: dict[str, list[str]] = {
    "baseline": _BASE_OFF,
    "vep": ["model.use_class_tokens=false", "model.use_word_mask=false", "train.align_er=false", "train.align_au=false"],
    "vep_tep": ["train.align_er=false", "train.align_au=false"],
    "ecpa": [],
    "no_er_align": ["train.align_er=false"],
    "no_au_align": ["train.align_au=false"],
    "er_global": ["train.er_loss=global"],
    "er_sim_ce": ["train.er_loss=sim_ce"],
    "au_ce": ["train.au_loss=ce"],
    "au_contrastive": ["train.au_loss=contrastive"],
    "visual_sentence": ["model.sentence_prompt=context"],
}


def ablation_sets(name: str) -> list[str]:
    """`--set` overrides of a named ablation row (see the module docstring)."""
    if name not in ABLATIONS:
        raise UserError(f"unknown ablation {name!r} (one of {', '.join(ABLATIONS)})")
    return list(ABLATIONS[name])


def check_config(cfg: Config) -> None:
    """Refuse switch combinations that cannot train, before anything is read."""
    m, t = cfg.model, cfg.train
    if t.align_er and not (m.use_er_prompt or m.use_class_tokens):
        raise UserError("train.align_er needs model.use_er_prompt or model.use_class_tokens (L_ER reads P_ER / P_S)")
    if t.align_au and not m.use_au_prompts:
        raise UserError("train.align_au needs model.use_au_prompts (the AU-word alignment aligns AU prompts)")
    if t.er_loss not in ER_LOSSES:
        raise UserError(f"train.er_loss={t.er_loss!r}: one of {', '.join(ER_LOSSES)}")
    if t.au_loss not in AU_LOSSES:
        raise UserError(f"train.au_loss={t.au_loss!r}: one of {', '.join(AU_LOSSES)}")
    if t.align_er and ER_LOSSES[t.er_loss].readout == "similarity" and not (m.use_er_prompt and m.use_class_tokens):
        raise UserError(f"train.er_loss={t.er_loss} compares the ER prompt with the class tokens: it needs "
                        "model.use_er_prompt and model.use_class_tokens")
    if m.sparse_mask not in SPARSE_MASKS:
        raise UserError(f"model.sparse_mask={m.sparse_mask!r}: one of {', '.join(SPARSE_MASKS)}")
    if m.dropout_rng not in DROPOUT_RNGS:
        raise UserError(f"model.dropout_rng={m.dropout_rng!r}: one of {', '.join(DROPOUT_RNGS)}")
    if m.sentence_prompt not in SENTENCE_PROMPTS:
        raise UserError(f"model.sentence_prompt={m.sentence_prompt!r}: one of {', '.join(SENTENCE_PROMPTS)}")
    if t.weighting not in ("dwa", "fixed"):
        raise UserError(f"train.weighting={t.weighting!r}: dwa or fixed")
    if m.er_pool not in ("mean", "max"):
        raise UserError(f"model.er_pool={m.er_pool!r}: mean or max")
    if m.hidden % m.heads:
        raise UserError(f"model.hidden={m.hidden} is not a multiple of model.heads={m.heads}")


# ------------------------------------------------------------------ devices, precision, distributed

from pipeline.device import autocast_dtype, keep_cpu_heap, resolve_device, to_device  # noqa: E402,F401  (one home)


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: torch.device) -> bool:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA). Returns True when distributed."""
    rank, world, _ = dist_env()
    if world <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return True


def _barrier(distributed: bool) -> None:
    if distributed:
        dist.barrier()


def _all_mean(values: dict[str, float], distributed: bool) -> dict[str, float]:
    if not distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    """Independent seeds per (epoch, rank, stream): stream 0 = dropout/global, 1 = MLM masking."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101 + stream) % (2**63 - 1)


# ------------------------------------------------------------------ optimiser and schedule

def make_optimizer(model: nn.Module, lr: float, weight_decay: float, fused: bool = False) -> torch.optim.AdamW:
    """AdamW; biases, LayerNorm weights, embeddings, prompt tokens and the sparse mask get no decay. `fused`:
    the fused kernel where this torch build has one for the parameters' device (else the for-each one)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embeddings" in name or "class_tokens" in name or "sparse_logits" in name
         else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if fused and fused_adamw_supported(next(model.parameters()).device):
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    return torch.optim.AdamW(groups, lr=lr)


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether this torch build has a fused AdamW kernel for `device` (CUDA; CPU since torch 2.4)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return device.type in _get_fused_kernels_supported_devices()


def warmup_linear(total_steps: int, warmup: float):
    """LR factor: linear warm-up over the first `warmup` share of the steps, then linear decay to 0."""
    warm = max(1, int(round(warmup * total_steps)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return factor


# ------------------------------------------------------------------ checkpoints

def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _finish_checkpoints(run_dir: Path, best_epoch: int | None, last_epoch: int) -> None:
    """A finished run needs no resume state: last.pt drops the optimiser moments (2x the model), scheduler,
    DWA history and RNG states; and when the best epoch is the last one, last.pt becomes a hard link to
    best.pt (one copy of the weights on disk, not two)."""
    last, best = run_dir / CKPT_DIR / "last.pt", run_dir / CKPT_DIR / "best.pt"
    if best_epoch == last_epoch and best.is_file():
        tmp = last.with_suffix(".pt.link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(best, tmp)
            os.replace(tmp, last)
            return
        except OSError:   # no hard links on this filesystem: a slim copy instead
            tmp.unlink(missing_ok=True)
    ck = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
    if "optimizer" in ck:
        _atomic_save({k: ck[k] for k in ("model", "epoch", "best", "meta")}, last)


def model_meta(model: ECPA, shapes: StoreShapes) -> dict:
    """What `load_trained` needs to rebuild the model."""
    from dataclasses import asdict

    return {"model_config": asdict(model.cfg), "num_emotions": model.num_emotions, "shapes": asdict(shapes),
            "emotion_readout": model.emotion_readout}


def load_trained(run_dir: Path | str, which: str = "best", device: str | torch.device = "cpu") -> tuple[ECPA, CaptionTokenizer, dict]:
    """A trained model in eval mode, its tokenizer, and the checkpoint's metadata (epoch, score, ...).
    `which`: best (by validation CIDEr) or last."""
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        raise UserError(f"checkpoint {which!r}: best or last")
    path = run_dir / CKPT_DIR / f"{which}.pt"
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint; run `ecpa train` for this run first")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    tok = load_tokenizer(run_dir)
    meta = ck["meta"]
    model = build_model(ModelConfig(**meta["model_config"]), tok, num_emotions=meta["num_emotions"],
                        shapes=StoreShapes(**meta["shapes"]), emotion_readout=meta.get("emotion_readout", "head"))
    model.load_state_dict(ck["model"])  # strict: every key must match
    model.to(device).eval()
    info = {k: v for k, v in ck.items() if k not in ("model", "optimizer", "scheduler", "rng")}
    return model, tok, info


# ------------------------------------------------------------------ metrics and plot

def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(rows: list[dict], png: Path) -> None:
    """Per-loss curves (train epoch means) and validation CIDEr / emotion accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted({k for r in rows for k in r.get("loss", {})})
    for k in names:
        ax1.plot(epochs, [r["loss"].get(k, float("nan")) for r in rows], marker="o", label=f"L_{k}")
    ax1.set_xlabel("epoch"); ax1.set_ylabel("mean training loss"); ax1.set_yscale("log"); ax1.legend()
    ax1.set_title("training losses")
    if any("val" in r and r["val"].get("CIDEr") is not None for r in rows):
        ax2.plot(epochs, [r.get("val", {}).get("CIDEr", float("nan")) for r in rows], marker="o", label="val CIDEr")
    if any("val" in r and r["val"].get("emotion_acc") is not None for r in rows):
        ax2.plot(epochs, [r.get("val", {}).get("emotion_acc", float("nan")) for r in rows], marker="s",
                 label="val emotion acc")
    ax2.set_xlabel("epoch"); ax2.set_title("validation")
    if ax2.lines:
        ax2.legend()
    fig.tight_layout()
    save_figure(fig, png, dpi=90)


# ------------------------------------------------------------------ validation

@torch.no_grad()
def validate(model: ECPA, loader, tokenizer: CaptionTokenizer, cfg: Config, device: torch.device,
             refs: dict[str, list[str]], max_length: int) -> tuple[dict, dict[str, str]]:
    """Greedy captions of the val clips (prefix-cached `decode_with_emotion`), their CIDEr against the
    references, and emotion accuracy (the emotion read over the generated caption, as at test time).
    Returns (scores, captions by clip id)."""
    from pipeline.caption.decoding import decode_with_emotion
    from pipeline.score.coco import score_captions

    model.eval()
    res: dict[str, str] = {}
    correct = total = 0
    for batch in loader:
        batch = to_device(batch, device)
        ids, logits = decode_with_emotion(
            model, batch, tokenizer, beam_size=1, max_length=max_length, use_cache=True,
            words_only=cfg.caption.vocabulary == "train" and tokenizer.caption_pieces is not None)
        for cid, seq in zip(batch["clip_id"], ids):
            res[cid] = tokenizer.decode(seq)
        if logits is not None:
            pred = logits.argmax(-1)
            known = batch["emotion"] >= 0
            correct += int((pred[known] == batch["emotion"][known]).sum())
            total += int(known.sum())
    gts = {k: refs[k] for k in res}
    # Python tokenisation: a JVM start per epoch would cost more than the epoch; final scores use PTB
    scores = dict(score_captions(gts, {k: (v if v else ".") for k, v in res.items()}, metrics=("CIDEr",),
                                 meteor=False, ptb=False))
    scores["emotion_acc"] = correct / total if total else None
    return scores, res


# ------------------------------------------------------------------ the loop: setup, resume, step, end of epoch

@dataclass
class _Run:
    """Everything `_setup` builds for one training run (nanoGPT's module-level globals, as one object)."""
    cfg: Config
    run_dir: Path
    rank: int
    world: int
    distributed: bool
    device: torch.device
    shapes: StoreShapes
    train_refs: list
    val_refs: list
    skipped: int
    load: object                     # data.LoadPlan
    tokenizer: CaptionTokenizer
    model: ECPA                      # the bare model: state dicts, validation
    net: nn.Module                   # what the step calls: the model, DDP-wrapped and/or compiled
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    weighting: LossWeights
    scaler: torch.amp.GradScaler | None
    amp: torch.dtype | None
    val_loader: DataLoader | None
    val_length: int
    t_start: float = field(default_factory=time.time)
    start_epoch: int = 0
    best: dict = field(default_factory=lambda: {"CIDEr": None, "epoch": None})
    last_scores: dict = field(default_factory=dict)
    epoch_times: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)


def _open_data(cfg: Config, store_path, clips: list, expect_shapes, rank: int, note) -> tuple:
    """(shapes, train refs, val refs, skipped clips, load plan, feature source) of the store for the manifest."""
    group, shapes = open_checked_store(store_path, expect_shapes)
    if shapes.emotions != len(cfg.data.emotions):
        raise CacheMismatchError(f"{store_path}: the store has {shapes.emotions} emotion classes, the config "
                                 f"{len(cfg.data.emotions)} ({', '.join(cfg.data.emotions)})")
    train_refs, skipped_train = match_clips(group, store_path, clips, ("train",))
    val_refs, skipped_val = match_clips(group, store_path, clips, ("val",))
    if not train_refs:
        raise CacheMismatchError(f"{store_path}: no extracted training clips (of {len(clips)} manifest clips)")
    rows_used = [r.row for r in train_refs + val_refs]
    load = plan_loading(shapes, rows_used, cfg.train.ram_cache_gb, cfg.train.num_workers)  # RAM if rows fit
    if load.note and rank == 0 and note is not None:
        note(load.note)
    source = FeatureSource(store_path, rows_used, in_memory=load.in_memory)
    return shapes, train_refs, val_refs, skipped_train + skipped_val, load, source


def _run_tokenizer(cfg: Config, run_dir: Path, train_refs: list, resume: bool, rank: int,
                   distributed: bool) -> CaptionTokenizer:
    """Reloaded from the run when resuming, else built (rank 0) and saved with the run."""
    if rank == 0 and not (resume and (run_dir / TOKENIZER_FILE).is_file()):
        tok = build_tokenizer(cfg.model.tokenizer, [c for r in train_refs for c in r.captions], cfg.model.vocab_size)
        tok.save(run_dir)
    _barrier(distributed)
    return load_tokenizer(run_dir)


def _train_loader(cfg: Config, pairs: CaptionPairs, tokenizer: CaptionTokenizer, rank: int, world: int,
                  load, device: torch.device) -> DataLoader:
    """Seeded epoch order, MLM masking in the workers (`MaskedPairs`), padding and mlm_index in the collate."""
    tc = cfg.train
    mask = functools.partial(mask_tokens, pad_id=tokenizer.pad_id, special_ids=frozenset(tokenizer.special_ids),
                             mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size, mask_prob=tc.mask_prob,
                             max_masked=tc.max_masked)
    sampler = EpochTagged(EpochSampler(len(pairs), tc.seed, rank, world))
    return DataLoader(MaskedPairs(pairs, mask, tc.seed, rank), batch_size=tc.batch_size, sampler=sampler,
                      collate_fn=functools.partial(collate, pad_id=tokenizer.pad_id), drop_last=False,
                      pin_memory=device.type == "cuda", **load.loader_kwargs())


def _wrap(model: ECPA, tc, device: torch.device, distributed: bool) -> nn.Module:
    """The module the step calls: DDP across ranks, then torch.compile with train.compile."""
    net: nn.Module = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=model.emotion_head is not None and not (tc.align_er and emotion_readout(tc) == "head"))
    if tc.compile:
        net = torch.compile(net)
    return net


def keeps_cpu_heap(tc, device: torch.device) -> bool:
    """Whether a run keeps freed memory in the process heap (train.keep_cpu_heap): on the CPU, and not with
    gradient checkpointing, which asks for memory over speed (the kept heap fragments under its recompute)."""
    return device.type == "cpu" and bool(tc.keep_cpu_heap) and not tc.grad_checkpoint


def _setup(cfg: Config, store_path, clips: list, run_dir: Path, resume: bool, expect_shapes, note) -> _Run:
    """Data, tokenizer, model, optimiser, schedule, loss weighting, loaders: the run before its first step."""
    tc, mc = cfg.train, cfg.model
    rank, world, local_rank = dist_env()
    device = resolve_device(tc.device, local_rank)
    if keeps_cpu_heap(tc, device):
        keep_cpu_heap()
    distributed = init_distributed(device)
    t_start = time.time()
    shapes, train_refs, val_refs, skipped, load, source = _open_data(cfg, store_path, clips, expect_shapes, rank, note)
    tokenizer = _run_tokenizer(cfg, run_dir, train_refs, resume, rank, distributed)

    seed_everything(tc.seed)
    model = build_model(mc, tokenizer, num_emotions=len(cfg.data.emotions), shapes=shapes,
                        emotion_readout=emotion_readout(tc))
    model.grad_checkpoint = tc.grad_checkpoint
    if mc.init_from:
        from pipeline.train.bert_init import load_bert_init

        load_bert_init(model, mc.init_from)
    model = model.to(device)
    loader = _train_loader(cfg, CaptionPairs(train_refs, source, tokenizer, mc.max_caption_len), tokenizer,
                           rank, world, load, device)
    optimizer = make_optimizer(model, tc.lr, tc.weight_decay, fused=tc.fused_adamw)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(len(loader) * tc.epochs, tc.warmup))
    amp = autocast_dtype(tc.precision, device)
    val_loader = None
    if tc.validate and val_refs and rank == 0:
        val_loader = DataLoader(Clips(val_refs, source), batch_size=cfg.caption.batch_size, shuffle=False,
                                collate_fn=functools.partial(collate, pad_id=tokenizer.pad_id), num_workers=0)
    val_length = cfg.caption.max_length or decoding_length(   # caption.max_length=0: from the training captions
        piece_counts(tokenizer, [c for r in train_refs for c in r.captions]), mc.max_caption_len)
    return _Run(cfg=cfg, run_dir=run_dir, rank=rank, world=world, distributed=distributed, device=device,
                shapes=shapes, train_refs=train_refs, val_refs=val_refs, skipped=skipped, load=load,
                tokenizer=tokenizer, model=model, net=_wrap(model, tc, device, distributed), loader=loader,
                optimizer=optimizer, scheduler=scheduler,
                weighting=LossWeights(tc.weighting, task_losses(tc), tc.dwa_temperature, fixed_weights(tc)),
                scaler=torch.amp.GradScaler("cuda") if amp == torch.float16 else None, amp=amp,
                val_loader=val_loader, val_length=val_length, t_start=t_start)


def _resume(run: _Run, resume: bool) -> None:
    """Load last.pt (model, optimiser, schedule, DWA history, scaler, RNG states) when resuming; drop metric
    lines after it. A fresh run clears metrics.jsonl."""
    last_path = run.run_dir / CKPT_DIR / "last.pt"
    if not (resume and last_path.is_file()):
        if run.is_main:
            (run.run_dir / METRICS_FILE).unlink(missing_ok=True)
        return
    ck = torch.load(last_path, map_location="cpu", weights_only=False)
    run.model.load_state_dict(ck["model"])
    run.start_epoch, run.best = ck["epoch"] + 1, ck["best"]
    epochs = run.cfg.train.epochs
    if "optimizer" not in ck:   # a finished run's last.pt (`_finish_checkpoints`): nothing left to resume
        if run.start_epoch < epochs:
            raise UserError(f"{last_path}: the checkpoint of a finished run ({run.start_epoch} epochs) holds no "
                            f"optimiser state to resume to {epochs} epochs; retrain with --force")
    else:
        run.optimizer.load_state_dict(ck["optimizer"])
        run.scheduler.load_state_dict(ck["scheduler"])
        run.weighting.load_state_dict(ck["weighting"])
        if run.scaler is not None and ck.get("scaler"):
            run.scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"])
    if run.is_main:  # drop metric lines of epochs after the checkpoint (a crash between the two writes)
        rows = [r for r in read_metrics(run.run_dir) if r["epoch"] <= ck["epoch"]]
        atomic_write_text(run.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))


def _step_inputs(batch: dict) -> dict:
    """The tensors the model reads (clip ids left out: a compiled model would guard on every string)."""
    return {k: v for k, v in batch.items() if torch.is_tensor(v)}


def _train_step(run: _Run, batch: dict, weights: dict[str, float]) -> dict[str, Tensor]:
    """One optimisation step; returns the (detached) losses, still on the device: nothing here waits for it
    (no float(loss), no boolean indexing: the masking and mlm_index came from the loader's workers)."""
    tc = run.cfg.train
    batch = to_device(_step_inputs(batch), run.device)
    with (torch.autocast(run.device.type, dtype=run.amp) if run.amp else nullcontext()):
        out = run.net(batch, batch["masked_ids"], batch["mlm_labels"])
        losses = compute_losses(out, batch, tc, run.model)
        loss = total_loss(losses, weights, tc.lambda_sparse)
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(run.optimizer)
    else:
        loss.backward()
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    return {k: v.detach() for k, v in losses.items()}


def _step_status(epoch: int, epochs: int, step: int, steps: int, losses: dict[str, Tensor], lr: float) -> str:
    """'epoch 3/40 step 20/400, mlm 2.345 er 1.204, lr 9.50e-05' (the plain progress line's middle); one host
    copy for all the losses, and only on the steps that log."""
    values = torch.stack([v.float() for v in losses.values()]).tolist()
    parts = " ".join(f"{k} {v:.3f}" for k, v in zip(losses, values))
    return f"epoch {epoch + 1}/{epochs} step {step + 1}/{steps}, {parts}, lr {lr:.2e}"


def _train_epoch(run: _Run, epoch: int, bar) -> tuple[dict[str, float], dict[str, float], float]:
    """One epoch of steps: (mean loss per name across ranks, the loss weights used, the last step's lr). Loss
    sums stay on the device (float64, as the Python floats they replace) until the epoch ends."""
    tc = run.cfg.train
    run.loader.sampler.set_epoch(epoch)
    torch.manual_seed(epoch_seed(tc.seed, epoch, run.rank, 0))      # dropout
    weights = run.weighting.weights()
    sums: dict[str, Tensor] = {}
    steps, lr = run.steps_per_epoch, run.scheduler.get_last_lr()[0]
    run.model.train()
    for step, batch in enumerate(run.loader):
        lr = run.scheduler.get_last_lr()[0]      # the lr this step uses (read before the schedule moves on)
        losses = _train_step(run, batch, weights)
        for k, v in losses.items():
            sums[k] = sums[k] + v.double() if k in sums else v.double()
        log = (step + 1) % max(tc.log_every, 1) == 0 or step + 1 == steps
        bar.advance(1, status=_step_status(epoch, tc.epochs, step, steps, losses, lr) if log else None)
    totals = dict(zip(sums, torch.stack(list(sums.values())).tolist())) if sums else {}
    means = _all_mean({k: v / max(steps, 1) for k, v in totals.items()}, run.distributed)
    run.weighting.end_epoch(means)
    return means, weights, lr


def _end_of_epoch(run: _Run, epoch: int, means: dict, weights: dict, lr: float, epoch_s: float) -> None:
    """Rank 0: validation (captions, CIDEr, emotion accuracy), best.pt by CIDEr, last.pt, a metrics line."""
    steps = run.steps_per_epoch
    row = {"epoch": epoch, "step": (epoch + 1) * steps, "loss": means, "weights": weights, "lr": lr,
           "time_s": epoch_s}
    improved = True
    if run.val_loader is not None:
        scores, caps = validate(run.model, run.val_loader, run.tokenizer, run.cfg, run.device,
                                {r.id: r.captions for r in run.val_refs}, run.val_length)
        row["val"] = run.last_scores = scores
        atomic_write_text(run.run_dir / "val" / f"epoch_{epoch:03d}.json",
                          json.dumps({"epoch": epoch, "scores": scores, "captions": caps}, indent=1))
        # a tie keeps the later epoch: equal CIDEr, more training (README: "best.pt")
        improved = run.best["CIDEr"] is None or scores["CIDEr"] >= run.best["CIDEr"]
        if improved:
            run.best = {"CIDEr": scores["CIDEr"], "epoch": epoch}
    else:
        run.best = {"CIDEr": None, "epoch": epoch}   # no validation: best = last
    meta = model_meta(run.model, run.shapes)
    model_state = run.model.state_dict()
    if improved:
        _atomic_save({"model": model_state, "epoch": epoch, "best": run.best, "meta": meta,
                      "scores": row.get("val")}, run.run_dir / CKPT_DIR / "best.pt")
    _atomic_save({"model": model_state, "optimizer": run.optimizer.state_dict(),
                  "scheduler": run.scheduler.state_dict(), "weighting": run.weighting.state_dict(),
                  "scaler": run.scaler.state_dict() if run.scaler is not None else None, "rng": _rng_state(),
                  "epoch": epoch, "best": run.best, "meta": meta}, run.run_dir / CKPT_DIR / "last.pt")
    with open(run.run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def _summary(run: _Run) -> dict:
    times, tc = run.epoch_times, run.cfg.train
    finished = run.start_epoch + len(times) == tc.epochs
    # the plot is redrawn at the end of every (resumed) run; a run killed after its last epoch's checkpoint
    # but before finishing has no epoch left to run, yet still needs its plot and its slim last.pt
    if run.is_main and (times or (finished and not (run.run_dir / PLOT_FILE).is_file())):
        plot_metrics(read_metrics(run.run_dir), run.run_dir / PLOT_FILE)
    if run.is_main and finished:
        _finish_checkpoints(run.run_dir, run.best.get("epoch"), tc.epochs - 1)
    return {
        "epochs_run": len(times), "start_epoch": run.start_epoch, "steps_per_epoch": run.steps_per_epoch,
        "train_clips": len(run.train_refs), "train_pairs": len(run.loader.dataset), "val_clips": len(run.val_refs),
        "skipped_clips": run.skipped, "in_memory": run.load.in_memory, "loader_workers": run.load.num_workers,
        "world_size": run.world, "device": str(run.device), "best": run.best, "last_val": run.last_scores,
        "params": sum(p.numel() for p in run.model.parameters()), "train_s": time.time() - run.t_start,
        "steps_per_s": (run.steps_per_epoch * len(times) / sum(times)) if times else None, "model": run.model,
    }


def train(
    cfg: Config,
    *,
    store_path: Path | str,
    clips: list,
    run_dir: Path | str,
    progress: bool | Callable = True,
    resume: bool = True,
    expect_shapes: StoreShapes | None = None,
    stop_after_epoch: int | None = None,
    note: Callable[[str], None] | None = None,
) -> dict:
    """Train on the store at `store_path` for the manifest `clips` (objects with id, captions, emotion_index,
    split) into `run_dir`. Resumes from `run_dir/checkpoints/last.pt` when `resume`. `stop_after_epoch`
    (tests) ends the run after that epoch as if it were killed. `progress`: a factory
    `(what, total, **kw) -> pipeline.progress.Progress` (the command's: a bar on a terminal, a plain line every
    train.log_every steps otherwise); a bool only counts. `note(text)` receives notes for the user. Returns a
    summary dict."""
    check_config(cfg)
    tc = cfg.train
    run = _setup(cfg, store_path, clips, Path(run_dir), resume, expect_shapes, note)
    _resume(run, resume)
    make_progress = progress if callable(progress) and run.is_main else quiet
    with make_progress("train", (tc.epochs - run.start_epoch) * run.steps_per_epoch, unit="step",
                       every_n=tc.log_every, every_s=math.inf) as bar:
        for epoch in range(run.start_epoch, tc.epochs):
            t_epoch = time.time()
            means, weights, lr = _train_epoch(run, epoch, bar)
            run.epoch_times.append(time.time() - t_epoch)
            if run.is_main:
                _end_of_epoch(run, epoch, means, weights, lr, run.epoch_times[-1])
            _barrier(run.distributed)
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
    return _summary(run)
