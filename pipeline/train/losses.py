"""ECPA's training objective: MLM masking and loss (SwinBERT), L_ER and L_AUCL (ECA), the Table VI
alternatives to L_AUCL, SwinBERT's sparse-attention L1 term, and Dynamic Weight Averaging.

References: SwinBERT (Lin et al. 2022) for MLM masking (mask_prob 0.5, at most 45 tokens, 80/10/10);
ECPA (Wang, Liu et al.) eq. for L_AUCL; DWA from Liu, Johns, Davison 2019 ("End-to-End Multi-Task
Learning with Attention"): w_k = K exp(r_k/T) / sum_i exp(r_i/T), r_k = L_k(t-1) / L_k(t-2).

Table VI as printed: its upper half are alternatives for the ER-sentence alignment (train.er_loss), its
lower half for the AU-word alignment (train.au_loss). Each is logged under its own name (`loss_name`).

ER-sentence (P_ER = the ER prompt's last-layer state, C_k = the state of [CLASS-k], y = the clip's emotion):

* ce (paper, Eq. 8; logged `er`): cross-entropy of y from Linear(Concat(P_ER, P_S)), P_S = mean_k C_k.
* global (Table VI "global similarity"; `er_global`): 1 - cos(P_ER, C_y).
* sim_ce ("similarity-based cross-entropy"; `er_sim_ce`): softmax over k of cos(P_ER, C_k) / 0.1, target y.
  With global or sim_ce the emotion is read as argmax_k cos(P_ER, C_k) (the model's `similarity` readout).

AU-word, between the AU prompts A (B, K, H) and the word prompts W (the caption's word vectors, B, Lt, H,
only real words), with D = cos(A_i, W_j) and the Hungarian matching pi of AU prompts to words maximising
sum D (scipy linear_sum_assignment on detached D):

* aucl (paper; `aucl`): over the matched pairs (i, pi(i)), Y = [D > T_C], loss (1-Y) D^2 + Y max(0, m - D)^2, mean.
* ce ("cross-entropy"; `au_ce`): each AU prompt classified over the vocabulary (logits A_i . E^T with the
  word embedding table E), target the token id of its matched word.
* contrastive ("normal contrastive", Hadsell et al.; `au_contrastive`): on every (i, j) pair with distance
  d = 1 - D and Y_ij = [j = pi(i)]: Y d^2 + (1 - Y) max(0, m - d)^2, mean.

Alignment losses run in fp32 with autocast off (under bf16 autocast the cosine matrix would be bf16, which
numpy cannot take for the matching).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

SIM_CE_TEMPERATURE = 0.1
"""Temperature of the similarity-based cross-entropy alternative."""


def _no_autocast(fn):
    """Run `fn` with autocast off on every device type (its inputs are cast to fp32 inside)."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapped


# ------------------------------------------------------------------ MLM masking (SwinBERT)

def mask_tokens(
    input_ids: Tensor,
    *,
    pad_id: int,
    special_ids: set[int] | frozenset[int],
    mask_id: int,
    vocab_size: int,
    mask_prob: float = 0.5,
    max_masked: int = 45,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """SwinBERT's MLM masking (`caption_tensorizer.py`). A caption row is `[CLS] w1 .. wn [SEP] [PAD]..`;
    with `seq_len` = n + 2 its non-[PAD] length, the candidates are positions 1 .. seq_len-1: every word
    piece *and [SEP]* ("it is important to mask [SEP]": it is the end-of-sentence token the decoder must
    learn to emit), never [CLS] or [PAD]. n_masked = min(max(round(mask_prob * seq_len), 1), max_masked)
    (round half to even, as Python's round; [CLS] and [SEP] counted in seq_len, as SwinBERT does) of them are chosen uniformly;
    each becomes [MASK] with p 0.8, a random token with p 0.1, stays itself with p 0.1. The random token is
    drawn from the non-special ids (SwinBERT draws from the whole vocabulary, so it can put [CLS]/[PAD]
    inside a caption; not worth copying).

    Returns (masked input_ids, labels) with labels = original id where chosen, -100 elsewhere."""
    B, L = input_ids.shape
    special = torch.tensor(sorted(special_ids), dtype=input_ids.dtype)
    normal = torch.ones(vocab_size, dtype=torch.bool)
    normal[special[special < vocab_size]] = False
    normal_ids = normal.nonzero().squeeze(1)
    seq_len = (input_ids != pad_id).sum(dim=1)                                  # (B,)
    pos = torch.arange(L)
    cand = (pos[None] >= 1) & (pos[None] < seq_len[:, None])                    # (B, L)
    n = torch.round(mask_prob * seq_len.double()).long().clamp(min=1, max=max_masked)
    n = torch.minimum(n, (seq_len - 1).clamp(min=0))
    # a uniform random subset of n candidates per row: the n candidates with the smallest random keys
    keys = torch.rand(B, L, generator=generator).masked_fill_(~cand, 2.0)
    rank = torch.empty(B, L, dtype=torch.long).scatter_(1, keys.argsort(dim=1), pos.expand(B, L).contiguous())
    chosen = cand & (rank < n[:, None])
    u = torch.rand(B, L, generator=generator)
    random_words = normal_ids[torch.randint(len(normal_ids), (B, L), generator=generator)].to(input_ids.dtype)
    ids = torch.where(chosen & (u < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    ids = torch.where(chosen & (u >= 0.8) & (u < 0.9), random_words, ids)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    return ids, labels


def loss_mlm(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the predicted (masked) positions: logits (N, V), targets (N,)."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets)


# ------------------------------------------------------------------ ECA

def loss_er(emotion_logits: Tensor, emotion: Tensor) -> Tensor:
    """L_ER: cross-entropy of the emotion class from concat(P_ER, P_S) (the model's emotion head).
    Clips without an emotion label (index -1) are left out."""
    per = F.cross_entropy(emotion_logits.float(), emotion.clamp(min=0), reduction="none")   # (B,)
    return _known_mean(per, emotion)


def _known_mean(per_clip: Tensor, emotion: Tensor) -> Tensor:
    """Mean of `per_clip` (B,) over the clips with an emotion label (index >= 0); 0 (with a graph) when none.
    Computed on the device, no host sync (a boolean index or `bool(any)` would wait for the GPU)."""
    known = (emotion >= 0).to(per_clip.dtype)
    return (per_clip * known).sum() / known.sum().clamp(min=1.0)


# ------------------------------------------------------------------ the alignment-loss registry
# One entry per Table VI row: adding an alignment loss is one function plus one line in ER_LOSSES / AU_LOSSES
# (its config name, its logged name, and what it needs); `check_config`, the emotion readout, DDP's unused-
# parameter switch, the loss weights and `compute_losses` all read the tables.

@dataclass(frozen=True)
class ERLoss:
    """An ER-sentence alignment: fn(cos or logits inputs) -> scalar; `readout` is how the emotion is then read
    (the head it trains, or the similarity of the ER prompt to the class tokens, which needs both prompts)."""
    fn: Callable[..., Tensor]
    logged: str
    readout: str   # "head" | "similarity"


@dataclass(frozen=True)
class AULoss:
    """An AU-word alignment: fn(D (B, K, Lt) cosines, matches (b, i, j), context) -> scalar."""
    fn: Callable[..., Tensor]
    logged: str


def _er_cos(er_state: Tensor, class_states: Tensor) -> Tensor:
    """cos(P_ER, C_k): (B, E) from er_state (B, H) and class_states (B, E, H), fp32."""
    return torch.einsum("beh,bh->be", F.normalize(class_states.float(), dim=-1, eps=1e-8),
                        F.normalize(er_state.float(), dim=-1, eps=1e-8))


def _er_ce(emotion, emotion_logits=None, **_) -> Tensor:
    return loss_er(emotion_logits, emotion)


def _er_global(emotion, er_state=None, class_states=None, **_) -> Tensor:
    cos_y = _er_cos(er_state, class_states).gather(1, emotion.clamp(min=0)[:, None]).squeeze(1)   # (B,)
    return _known_mean(1 - cos_y, emotion)


def _er_sim_ce(emotion, er_state=None, class_states=None, **_) -> Tensor:
    logits = _er_cos(er_state, class_states) / SIM_CE_TEMPERATURE
    return _known_mean(F.cross_entropy(logits, emotion.clamp(min=0), reduction="none"), emotion)


ER_LOSSES: dict[str, ERLoss] = {
    "ce": ERLoss(_er_ce, "er", "head"),
    "global": ERLoss(_er_global, "er_global", "similarity"),
    "sim_ce": ERLoss(_er_sim_ce, "er_sim_ce", "similarity"),
}


def _au_aucl(D, match, ctx) -> Tensor:
    bi, ri, ci = match
    return aucl_pairs(D[bi, ri, ci], ctx["tau_c"], ctx["margin"]).mean()


def _au_ce(D, match, ctx) -> Tensor:
    bi, ri, ci = match
    logits = ctx["au_prompts"][bi, ri].float() @ ctx["embedding_weight"].float().t()
    return F.cross_entropy(logits, ctx["word_ids"][bi, ci])


def _au_contrastive(D, match, ctx) -> Tensor:
    """Every (AU prompt, valid word) pair of the clips that have a word."""
    bi, ri, ci = match
    Y = torch.zeros_like(D)
    Y[bi, ri, ci] = 1.0
    d = 1 - D
    per_pair = Y * d.pow(2) + (1 - Y) * (ctx["margin"] - d).clamp(min=0).pow(2)
    pairs = ctx["word_valid"][:, None, :].expand_as(D).to(D.dtype)
    return (per_pair * pairs).sum() / pairs.sum()


AU_LOSSES: dict[str, AULoss] = {
    "aucl": AULoss(_au_aucl, "aucl"),
    "ce": AULoss(_au_ce, "au_ce"),
    "contrastive": AULoss(_au_contrastive, "au_contrastive"),
}


def loss_name(side: str, name: str) -> str:
    """The logged name of an alignment loss: the paper's keep `er` / `aucl`, alternatives get their own."""
    return (ER_LOSSES if side == "er" else AU_LOSSES)[name].logged


@_no_autocast
def er_align_loss(name: str, *, emotion: Tensor, emotion_logits: Tensor | None = None,
                  er_state: Tensor | None = None, class_states: Tensor | None = None) -> Tensor:
    """ER-sentence alignment `name` (module docstring). emotion (B,) with -1 for unlabelled clips (left out;
    0 when none has a label); ce reads emotion_logits (B, E); global / sim_ce read er_state (B, H) and
    class_states (B, E, H). No host sync: the unlabelled clips are weighted out on the device."""
    if name not in ER_LOSSES:
        raise ValueError(f"unknown ER-sentence loss {name!r} (one of {', '.join(ER_LOSSES)})")
    entry = ER_LOSSES[name]
    if entry.readout == "similarity" and (er_state is None or class_states is None):
        raise ValueError(f"ER-sentence loss {name!r} needs the ER prompt and the class tokens")
    return entry.fn(emotion, emotion_logits=emotion_logits, er_state=er_state, class_states=class_states)


def aucl_pairs(D_matched: Tensor, tau_c: float, margin: float) -> Tensor:
    """The paper's L_AUCL term on matched similarities: Y = D > T_C, (1-Y) D^2 + Y max(0, m - D)^2 (per pair)."""
    Y = (D_matched > tau_c).to(D_matched.dtype).detach()
    return (1 - Y) * D_matched.pow(2) + Y * (margin - D_matched).clamp(min=0).pow(2)


def match_all(D: Tensor, word_valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hungarian matching of every clip at once: D (B, K, Lt) cosines, word_valid (B, Lt). ONE device-to-host
    copy (D with the valid-word row stacked under it); per clip, scipy's linear_sum_assignment over its valid
    words (maximising sum D). Returns the matched (clip, AU prompt, word position) index tensors on D's device."""
    K = D.shape[1]
    both = torch.cat([D.detach().float(), word_valid[:, None, :].float()], dim=1).cpu().numpy()  # (B, K+1, Lt)
    D_np, valid_np = both[:, :K], both[:, K] > 0.5
    bs, rs, cs = [], [], []
    for b in range(D_np.shape[0]):
        cols = np.flatnonzero(valid_np[b])
        if cols.size == 0:
            continue
        r, c = linear_sum_assignment(D_np[b][:, cols], maximize=True)
        bs.append(np.full(r.size, b))
        rs.append(r)
        cs.append(cols[c])
    if not bs:
        empty = torch.zeros(0, dtype=torch.long, device=D.device)
        return empty, empty, empty
    return tuple(torch.as_tensor(np.concatenate(x), dtype=torch.long).to(D.device, non_blocking=True)
                 for x in (bs, rs, cs))


@_no_autocast
def au_align_loss(
    name: str,
    au_prompts: Tensor,
    word_prompts: Tensor,
    word_valid: Tensor,
    *,
    tau_c: float = 0.3,
    margin: float = 0.5,
    word_ids: Tensor | None = None,
    embedding_weight: Tensor | None = None,
) -> Tensor:
    """AU-word alignment loss `name` (see the module docstring) in fp32, the mean over every term of every
    clip. au_prompts (B, K, H), word_prompts (B, Lt, H), word_valid (B, Lt) bool; `ce` also needs word_ids
    (B, Lt) and the word embedding table (V, H). Captions without a real word contribute nothing.

    Batched: one (B, K, Lt) cosine matrix, one host copy for all the matchings (`match_all`), no per-clip
    tensor ops."""
    if name not in AU_LOSSES:
        raise ValueError(f"unknown AU-word loss {name!r} (one of {', '.join(AU_LOSSES)})")
    if name == "ce" and (word_ids is None or embedding_weight is None):
        raise ValueError("AU-word loss 'ce' needs word_ids and embedding_weight")
    a = F.normalize(au_prompts.float(), dim=-1, eps=1e-8)
    w = F.normalize(word_prompts.float(), dim=-1, eps=1e-8)
    D = a @ w.transpose(1, 2)                                      # (B, K, Lt)
    match = match_all(D, word_valid)
    if match[0].numel() == 0:   # a host-side count (the indices came from the host): no sync
        return au_prompts.float().sum() * 0.0 + word_prompts.float().sum() * 0.0
    ctx = {"tau_c": tau_c, "margin": margin, "au_prompts": au_prompts, "word_ids": word_ids,
           "embedding_weight": embedding_weight, "word_valid": word_valid}
    return AU_LOSSES[name].fn(D, match, ctx)


# ------------------------------------------------------------------ all losses of one step

def task_losses(tcfg) -> list[str]:
    """Names of the weighted task losses a config switches on (mlm, then the ER and AU alignment)."""
    return (["mlm"] + ([loss_name("er", tcfg.er_loss)] if tcfg.align_er else [])
            + ([loss_name("au", tcfg.au_loss)] if tcfg.align_au else []))


def fixed_weights(tcfg) -> dict[str, float]:
    """train.lambda_* by loss name: lambda_er for the ER side, lambda_aucl for the AU side."""
    return {"mlm": tcfg.lambda_mlm, loss_name("er", tcfg.er_loss): tcfg.lambda_er,
            loss_name("au", tcfg.au_loss): tcfg.lambda_aucl}


def emotion_readout(tcfg) -> str:
    """How the emotion is read: the head trained by L_ER, or the similarity to the class tokens (the ER loss's
    registry entry says which)."""
    return ER_LOSSES[tcfg.er_loss].readout


def compute_losses(out: dict, batch: dict, tcfg, model) -> dict[str, Tensor]:
    """The task losses switched on by the config, from `ECPA.forward`'s output, under their logged names:
    mlm always; the ER-sentence loss with train.align_er; the AU-word loss with train.align_au;
    sparse (the L1 term, weighted by lambda_sparse outside DWA) when the model has sparse attention."""
    losses = {"mlm": loss_mlm(out["mlm_logits"], out["mlm_targets"])}
    if tcfg.align_er:
        losses[loss_name("er", tcfg.er_loss)] = er_align_loss(
            tcfg.er_loss, emotion=batch["emotion"], emotion_logits=out["emotion_logits"],
            er_state=out.get("er_state"), class_states=out.get("class_states"))
    if tcfg.align_au:
        losses[loss_name("au", tcfg.au_loss)] = au_align_loss(
            tcfg.au_loss, out["au_prompts"], out["word_prompts"], out["word_valid"], tau_c=tcfg.tau_c,
            margin=tcfg.margin, word_ids=out.get("word_ids"), embedding_weight=model.word_embeddings.weight,
        )
    if out.get("sparse_l1") is not None:
        losses["sparse"] = out["sparse_l1"]
    return losses


def total_loss(losses: dict[str, Tensor], weights: dict[str, float], lambda_sparse: float) -> Tensor:
    """sum_k w_k L_k over the task losses + lambda_sparse * sparse."""
    total = sum(weights[k] * v for k, v in losses.items() if k != "sparse")
    if "sparse" in losses:
        total = total + lambda_sparse * losses["sparse"]
    return total


# ------------------------------------------------------------------ loss weighting

class LossWeights:
    """Epoch-level loss weights: Dynamic Weight Averaging (`mode='dwa'`) or fixed (`mode='fixed'`).

    DWA: after epochs t-1 and t-2 are known, w_k(t) = K exp(r_k / T) / sum_i exp(r_i / T) with
    r_k = L_k(t-1) / L_k(t-2) (L = the epoch's mean loss, K = number of weighted losses); the first two
    epochs use w_k = 1. Fixed: w_k = lambda_k. `history` (per-epoch means) is checkpointed."""

    def __init__(self, mode: str, names: list[str], temperature: float = 2.0, fixed: dict[str, float] | None = None):
        if mode not in ("dwa", "fixed"):
            raise ValueError(f"train.weighting must be dwa or fixed, got {mode!r}")
        self.mode, self.names, self.temperature = mode, list(names), temperature
        self.fixed = dict(fixed or {})
        self.history: list[dict[str, float]] = []

    def weights(self) -> dict[str, float]:
        """Weights for the coming epoch."""
        if self.mode == "fixed":
            return {k: float(self.fixed.get(k, 1.0)) for k in self.names}
        if len(self.history) < 2:
            return {k: 1.0 for k in self.names}
        prev, prev2 = self.history[-1], self.history[-2]
        r = {k: prev[k] / max(prev2[k], 1e-12) for k in self.names}
        m = max(r[k] / self.temperature for k in self.names)       # stable softmax
        e = {k: math.exp(r[k] / self.temperature - m) for k in self.names}
        z = sum(e.values())
        return {k: len(self.names) * e[k] / z for k in self.names}

    def end_epoch(self, epoch_means: dict[str, float]) -> None:
        self.history.append({k: float(epoch_means[k]) for k in self.names})

    def state_dict(self) -> dict:
        return {"mode": self.mode, "names": self.names, "temperature": self.temperature, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        if state["names"] != self.names or state["mode"] != self.mode:
            raise ValueError(f"loss-weight state for {state['mode']} {state['names']} cannot resume {self.mode} {self.names}")
        self.history = [dict(h) for h in state["history"]]
