"""Devices and precision, one home for every stage: which torch device a config's `device` field names, the
autocast dtype of its `precision` field, and moving a batch there."""
from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.errors import UserError

if TYPE_CHECKING:
    import torch

PRECISIONS = {"bf16": "bfloat16", "fp16": "float16", "fp32": None}
"""precision field value -> torch dtype name (None: plain fp32). torch is imported where a function runs, so the
decode workers that import pipeline.extract.runner do not pay for it."""


def resolve_device(name: str, local_rank: int = 0, what: str = "device") -> torch.device:
    """'auto' -> this rank's GPU when there is one, else the CPU; 'cuda' -> this rank's GPU. A CUDA device asked
    for where there is none is a UserError naming the field (`what`, e.g. 'train.device')."""
    import torch

    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{what}={name}: no CUDA device here")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device, *, what: str = "precision",
                   on_cpu: bool = True) -> torch.dtype | None:
    """The autocast dtype for a precision field; None = plain fp32. 'auto' is bf16 on CUDA and fp32 elsewhere.
    An explicit bf16/fp16 applies on the CPU too when `on_cpu` (training: the user asked for it), else the CPU
    stays fp32 (extraction: frozen networks whose CPU kernels are slower in half precision)."""
    import torch

    if precision not in ("auto", *PRECISIONS):
        raise UserError(f"{what}={precision!r}: expected auto, bf16, fp16 or fp32")
    if device.type != "cuda" and (precision == "auto" or not on_cpu):
        return None
    name = "bfloat16" if precision == "auto" else PRECISIONS[precision]
    return getattr(torch, name) if name else None


def to_device(batch: dict, device: torch.device) -> dict:
    """Every tensor of a batch dict on `device` (non-blocking from pinned memory); other values as they are."""
    import torch

    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc <malloc.h> mallopt parameters
_heap_kept = False


def is_glibc() -> bool:
    """Linux with glibc: where keep_cpu_heap can set the C library's allocation (mallopt)."""
    import platform

    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_cpu_heap() -> bool:
    """Serve every CPU tensor from the process heap and keep freed memory there for the next one (glibc:
    `mallopt(M_MMAP_MAX, 0)`, `mallopt(M_TRIM_THRESHOLD, -1)`). By default glibc maps each allocation above
    32 MiB afresh and unmaps it when freed, so every (B, heads, L, L) attention buffer of a training step costs
    its page faults again, in every layer, forward and backward: at MAFW shapes about a fifth of a CPU step,
    and worse with two threads (`make bench` shows it). The process then keeps its peak memory until it ends,
    which a training or decoding run does anyway. True when set (now or before); False where the C library is
    not glibc, which changes nothing else."""
    global _heap_kept
    if _heap_kept:
        return True
    import ctypes
    import ctypes.util

    if not is_glibc():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _heap_kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
    except (OSError, AttributeError):
        return False
    return _heap_kept
