"""The encoder's attention core for CPU training with dropout and a learned (gradient-carrying) additive mask.

PyTorch's fused CPU attention kernel takes neither attention dropout nor a mask that needs a gradient (the
learned sparse video mask), so `scaled_dot_product_attention` falls back to its math path: the scores are scaled
twice, the softmax is the "safe" one (three extra passes looking for fully masked rows, which an additive
mask of finite values never has), and dropout keeps a float noise tensor as large as the probabilities, plus the
dropped probabilities for the value gradient. `attention_core` computes the same function with the probabilities
and a one-byte keep mask saved (the dropped probabilities are recomputed in the backward pass), and the same
dropout draws (one `bernoulli_(1 - p)` over the probabilities, as the math path's dropout), so a seeded step
gives the same losses within float rounding.

With `model.dropout_rng=fast` (the default), the dropout masks of the core and of `Dropout16` (which the model
puts in place of every nn.Dropout) come from `drop_mask`: 16-bit slices of 64-bit random words from torch's
generator, about five times cheaper on the CPU than `bernoulli_`'s one draw per element, with the drop
probability p rounded to 1/65536 (0.1 -> 0.100006). `torch` keeps torch's own draws (SwinBERT's, bit-equal to
SDPA's math path and nn.Dropout for one seed).

Registered with transformers' attention registry as `ATTENTION_NAME`; every other case (CUDA, autocast,
inference, no mask) goes to transformers' own SDPA function unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION_NAME = "ecpa_sdpa"
DROPOUT_RNGS = ("fast", "torch")
"""model.dropout_rng: where dropout masks come from (module docstring)."""


def drop_mask(like: Tensor, p: float) -> Tensor:
    """A bool mask shaped like `like`, True = dropped, each element independently with probability p rounded to
    1/65536: the signed 16-bit slices of full-range 64-bit random words (torch's generator, so
    `torch.manual_seed` makes it reproducible) compared with round(p * 65536) - 32768."""
    n = like.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device).random_(-2**63, None)
    return torch.lt(words.view(torch.int16)[:n], round(p * 65536) - 32768).view(like.shape)


class _Dropout16(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        drop = drop_mask(x, p)
        ctx.save_for_backward(drop)
        ctx.scale = 1 / (1 - p)
        return torch.where(drop, 0.0, x).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (drop,) = ctx.saved_tensors
        return torch.where(drop, 0.0, grad).mul_(ctx.scale), None


class Dropout16(torch.nn.Dropout):
    """nn.Dropout with `drop_mask`'s draws (model.dropout_rng=fast): the same scaling (kept values / (1 - p)),
    identity in eval mode or at p = 0."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        return _Dropout16.apply(x, float(self.p))


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum `t` over the axes a broadcast operand of `shape` was expanded along."""
    dims = tuple(i for i, (a, b) in enumerate(zip(t.shape, shape)) if b == 1 and a != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t


class _AttentionCore(torch.autograd.Function):
    """softmax(q k^T * scale + bias) with dropout p, times v. Saves the probabilities and the one-byte drop mask;
    works in place where it can (a fresh (B, h, L, L) buffer costs its page faults on every call)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, p: float, scale: float, rng: str) -> Tensor:
        s = torch.matmul(q * scale, k.transpose(-1, -2)).add_(bias)
        probs = torch.softmax(s, dim=-1)
        drop = None
        if p > 0:
            if rng == "torch":   # the math path's draws: bernoulli_(1 - p) over the probabilities, 1 = keep
                drop = torch.empty_like(probs, dtype=torch.bool).bernoulli_(1 - p).logical_not_()
            else:
                drop = drop_mask(probs, p)
            # (probs with the dropped ones zeroed, in s's buffer) @ (v / (1 - p)): one pass over the L x L tensor
            out = torch.matmul(torch.where(drop, probs.new_zeros(()), probs, out=s), v * (1 / (1 - p)))
        else:
            out = torch.matmul(probs, v)
        del s
        ctx.save_for_backward(q, k, v, probs, drop)
        ctx.p, ctx.scale, ctx.bias_shape = p, scale, bias.shape
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor):
        q, k, v, probs, drop = ctx.saved_tensors
        p, scale = ctx.p, ctx.scale
        if drop is None:
            dv = torch.matmul(probs.transpose(-1, -2), d_out) if ctx.needs_input_grad[2] else None
            d_probs = torch.matmul(d_out, v.transpose(-1, -2))
        else:
            d_out = d_out * (1 / (1 - p))   # the 1 / (1 - p) of the kept probabilities, on the small operand
            buf = torch.where(drop, 0.0, probs)   # the dropped probabilities, unscaled
            dv = torch.matmul(buf.transpose(-1, -2), d_out) if ctx.needs_input_grad[2] else None
            d_probs = torch.matmul(d_out, v.transpose(-1, -2), out=buf).masked_fill_(drop, 0.0)
        d_s = torch._softmax_backward_data(d_probs, probs, -1, probs.dtype)
        del d_probs
        dq = torch.matmul(d_s, k).mul_(scale) if ctx.needs_input_grad[0] else None
        dk = torch.matmul(d_s.transpose(-1, -2), q).mul_(scale) if ctx.needs_input_grad[1] else None
        dbias = _sum_to(d_s, ctx.bias_shape) if ctx.needs_input_grad[3] else None
        return dq, dk, dv, dbias, None, None, None


def attention_core(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, p: float, scale: float, rng: str = "fast") -> Tensor:
    """(B, h, L, d) attention of q over k/v with the additive `bias` (broadcast to (B, h, L, L)), dropout `p`
    with `rng`'s masks (`DROPOUT_RNGS`)."""
    if rng not in DROPOUT_RNGS:
        raise ValueError(f"dropout rng {rng!r}: one of {', '.join(DROPOUT_RNGS)}")
    return _AttentionCore.apply(q, k, v, bias, float(p), float(scale), rng)


def _takes_core(query: Tensor, mask: Tensor | None, dropout: float) -> bool:
    """The CPU training case the fused kernel refuses: float mask, dropout or a mask gradient, no autocast."""
    return (query.device.type == "cpu" and torch.is_grad_enabled() and mask is not None
            and mask.is_floating_point() and mask.dtype == query.dtype and not torch.is_autocast_enabled("cpu")
            and (dropout > 0 or mask.requires_grad))


def ecpa_attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                           dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[Tensor, None]:
    """transformers' attention interface: `attention_core` in the CPU training case, its SDPA otherwise."""
    if not _takes_core(query, attention_mask, dropout):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = attention_core(query, key, value, attention_mask, dropout, scale, getattr(module, "dropout_rng", "torch"))
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, ecpa_attention_forward)
