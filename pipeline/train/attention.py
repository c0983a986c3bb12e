"""The encoder's attention core for CPU training with dropout and a learned (gradient-carrying) additive mask.

PyTorch's fused CPU attention kernel takes neither attention dropout nor a mask that needs a gradient (the
learned sparse video mask), so `scaled_dot_product_attention` falls back to its math path: the scores are scaled
twice, the softmax is the "safe" one (three extra passes looking for fully masked rows, which an additive
mask of finite values never has), and dropout keeps a float noise tensor as large as the probabilities, plus the
dropped probabilities for the value gradient. `attention_core` computes the same function with the probabilities
and a one-byte keep mask saved (the dropped probabilities are recomputed in the backward pass), and the same
dropout draws (one `bernoulli_(1 - p)` over the probabilities, as the math path's dropout), so a seeded step
gives the same losses within float rounding.

Registered with transformers' attention registry as `ATTENTION_NAME`; every other case (CUDA, autocast,
inference, no mask) goes to transformers' own SDPA function unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION_NAME = "ecpa_sdpa"


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum `t` over the axes a broadcast operand of `shape` was expanded along."""
    dims = tuple(i for i, (a, b) in enumerate(zip(t.shape, shape)) if b == 1 and a != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t


class _AttentionCore(torch.autograd.Function):
    """softmax(q k^T * scale + bias) with dropout p, times v. Saves the probabilities and the one-byte drop mask;
    works in place where it can (a fresh (B, h, L, L) buffer costs its page faults on every call)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, p: float, scale: float) -> Tensor:
        s = torch.matmul(q * scale, k.transpose(-1, -2)).add_(bias)
        probs = torch.softmax(s, dim=-1)
        drop = None
        if p > 0:   # the math path's draws: bernoulli_(1 - p) over the probabilities, 1 = keep
            drop = torch.empty_like(probs, dtype=torch.bool).bernoulli_(1 - p).logical_not_()
            out = torch.matmul(torch.mul(probs, 1 / (1 - p), out=s).masked_fill_(drop, 0.0), v)   # s's buffer
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
            buf = torch.mul(probs, 1 / (1 - p)).masked_fill_(drop, 0.0)   # the dropped probabilities
            dv = torch.matmul(buf.transpose(-1, -2), d_out) if ctx.needs_input_grad[2] else None
            d_probs = torch.matmul(d_out, v.transpose(-1, -2), out=buf).masked_fill_(drop, 0.0).mul_(1 / (1 - p))
        d_s = torch._softmax_backward_data(d_probs, probs, -1, probs.dtype)
        del d_probs
        dq = torch.matmul(d_s, k).mul_(scale) if ctx.needs_input_grad[0] else None
        dk = torch.matmul(d_s.transpose(-1, -2), q).mul_(scale) if ctx.needs_input_grad[1] else None
        dbias = _sum_to(d_s, ctx.bias_shape) if ctx.needs_input_grad[3] else None
        return dq, dk, dv, dbias, None, None


def attention_core(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, p: float, scale: float) -> Tensor:
    """(B, h, L, d) attention of q over k/v with the additive `bias` (broadcast to (B, h, L, L)), dropout `p`."""
    return _AttentionCore.apply(q, k, v, bias, float(p), float(scale))


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
    out = attention_core(query, key, value, attention_mask, dropout, scale)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, ecpa_attention_forward)
