"""Checkpoint plumbing shared by the frozen stage-one networks and stage two's BERT initialisation.

One place for: reading a checkpoint file (`torch.load(weights_only=True)` only, unless the user names the
file as trusted: see `read_checkpoint`), unwrapping the
training wrapper (`{'state_dict': ...}`, `{'model': ...}`), stripping the `module.` (DataParallel /
DDP) and `_orig_mod.` (torch.compile) prefixes, applying an explicit key map that refuses any key
it does not know, and loading into a model with a full check of missing/unknown keys and shapes.

After timm `_helpers.clean_state_dict` and torchtune `convert_weights.get_mapped_key`: no
suffix-guessing, no silent `strict=False`.
"""
from __future__ import annotations

import contextvars
import logging
import pickle
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import UserError

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "module", "net")
"""Top-level keys a training script wraps its state dict in (first found wins, in this order)."""

STRIP_PREFIXES = ("module.", "_orig_mod.")
"""Prefixes added by DataParallel/DDP and torch.compile; stripped (repeatedly) from every key."""


class CheckpointError(UserError):
    """A checkpoint file that does not fit the network it is loaded into (names file and keys)."""


def _numpy_globals() -> list:
    """The numpy types checkpoints from training scripts carry next to their tensors (mmcv/mmaction's `meta`
    holds numpy scalars, e.g. a best score; some scripts save numpy arrays): reconstructing them runs no code
    of the file's choosing. Registered under the names numpy 1.x and 2.x pickle them with."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    out: list = [np.dtype, np.ndarray]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(core.multiarray.scalar, f"{mod}.scalar"), (core.multiarray._reconstruct, f"{mod}._reconstruct")]
    out += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return out


def safe_globals() -> list:
    """Everything beyond tensors and plain containers that `read_checkpoint` lets `weights_only=True` build:
    numpy scalars/arrays/dtypes and `argparse.Namespace` (a script's saved arguments). Nothing that imports or
    calls code chosen by the file."""
    import argparse

    return [*_numpy_globals(), argparse.Namespace]


_TRUST: contextvars.ContextVar[tuple[frozenset[Path], list[str]] | None] = contextvars.ContextVar("trust", default=None)


@contextmanager
def trusting(paths: Iterable[str | Path]) -> Iterator[list[str]]:
    """Within this block, the checkpoint files named in `paths` (and only those) may be read with Python's full
    unpickler when `weights_only=True` refuses them. Yields the list of the files that were, for the record."""
    used: list[str] = []
    token = _TRUST.set((frozenset(Path(p).resolve() for p in paths), used))
    try:
        yield used
    finally:
        _TRUST.reset(token)


class UntrustedPickleError(CheckpointError):
    """A checkpoint that only the full unpickler can read (it may run code), not named as trusted."""


def read_checkpoint(path: str | Path) -> object:
    """`torch.load` on CPU with `weights_only=True` (tensors, containers, `safe_globals()`), always first.

    A file that needs more (objects of other classes: the full unpickler, which can run any code the file
    carries) is refused with its name and the reason, unless the caller trusts exactly this file (`trusting`);
    then it is read with the full unpickler, logged, and listed for the stage record."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        why = (f"it holds a {m.group(1)} object, which is not a tensor or a plain container" if m
               else (lines[-1] if lines else type(e).__name__))
        trust = _TRUST.get()
        if trust is None or path.resolve() not in trust[0]:
            raise UntrustedPickleError(
                f"{path}: refused - this checkpoint cannot be read as plain weights (torch.load weights_only=True: "
                f"{why}); reading it needs Python's full unpickler, which runs whatever code the file carries. "
                "If you trust where this file came from, name it: --set extract.trust_pickle=<this file> "
                "(recorded in the extraction's stage.json); or re-save just its state dict with torch.save"
            ) from None
        log.warning("%s: not loadable with weights_only=True (%s); loading with the full unpickler because "
                    "extract.trust_pickle names this file", path, why)
        obj = torch.load(path, map_location="cpu", weights_only=False)
        trust[1].append(str(path))
        return obj


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: the object itself when it maps names to tensors, else
    the first of `WRAPPER_KEYS` it holds. Anything else raises CheckpointError naming `source`."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for k in WRAPPER_KEYS:
            if k in obj and isinstance(obj[k], Mapping):
                return unwrap_state_dict(obj[k], f"{source}[{k!r}]")
        top = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(
            f"{source}: no state dict found (top-level keys: {top or 'none'}; expected tensors or one of "
            f"{', '.join(WRAPPER_KEYS)})"
        )
    raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")


def clean_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip `module.` / `_orig_mod.` prefixes (in any order, any number) from every key."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        key = k
        changed = True
        while changed:
            changed = False
            for p in STRIP_PREFIXES:
                if key.startswith(p):
                    key = key[len(p):]
                    changed = True
        if key in out:
            raise CheckpointError(f"checkpoint holds {k!r} twice once prefixes are stripped (as {key!r})")
        out[key] = v
    return out


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """read + unwrap + clean: the usual first three steps for a local checkpoint file."""
    return clean_state_dict(unwrap_state_dict(read_checkpoint(path), str(path)))


KeyRule = tuple[str, str | Callable[[re.Match], str]]
"""(regex that must match the whole key, replacement template or function of the match)."""


def _listing(keys: Iterable[str], show: int = 12) -> str:
    keys = sorted(keys)
    head = ", ".join(keys[:show])
    return head + (f" (and {len(keys) - show} more)" if len(keys) > show else "")


def apply_key_map(
    sd: Mapping[str, torch.Tensor],
    rules: list[KeyRule],
    *,
    skip: Iterable[str] = (),
    source: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename every key by the first rule whose regex matches it whole (`re.fullmatch`).

    `skip` regexes name keys that are dropped on purpose (returned, for the caller to log). A key
    that neither a rule nor `skip` matches raises CheckpointError listing all such keys."""
    compiled = [(re.compile(p), r) for p, r in rules]
    skips = [re.compile(p) for p in skip]
    out: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    unknown: list[str] = []
    for k, v in sd.items():
        if any(s.fullmatch(k) for s in skips):
            skipped.append(k)
            continue
        for pat, rep in compiled:
            m = pat.fullmatch(k)
            if m:
                new = rep(m) if callable(rep) else m.expand(rep)
                if new in out:
                    raise CheckpointError(f"{source}: two keys map to {new!r} (second: {k!r})")
                out[new] = v
                break
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} unknown key(s) the key map does not cover: {_listing(unknown)}")
    return out, skipped


def check_and_load(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    keep_model: Iterable[str] = (),
) -> None:
    """Load `sd` into `model` after checking names and shapes both ways.

    `keep_model` regexes name model entries the checkpoint is not expected to hold (e.g. recomputed
    `relative_position_index` buffers): they keep the model's own values, and are logged. Any other
    missing, unknown or mis-shaped key raises CheckpointError listing them all."""
    target = model.state_dict()
    keeps = [re.compile(p) for p in keep_model]
    kept = [k for k in target if k not in sd and any(p.fullmatch(k) for p in keeps)]
    missing = [k for k in target if k not in sd and k not in kept]
    unknown = [k for k in sd if k not in target]
    bad_shape = [f"{k} {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
                 for k in sd if k in target and tuple(sd[k].shape) != tuple(target[k].shape)]
    problems = []
    if unknown:
        problems.append(f"unknown key(s) {_listing(unknown)}")
    if missing:
        problems.append(f"missing key(s) {_listing(missing)}")
    if bad_shape:
        problems.append(f"shape mismatch {_listing(bad_shape, 6)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    full = dict(sd)
    for k in kept:
        full[k] = target[k]
    if kept:
        log.info("%s: %d model entries kept from the model itself (not in the checkpoint by design), e.g. %s",
                 source, len(kept), kept[0])
    model.load_state_dict(full, strict=True)
