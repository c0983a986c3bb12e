"""Stage one: decode each clip once; ResNet50-ER, ANFL and Video Swin features into Zarr.

Output: cache/<dataset>/features/<extract-key>/{store.zarr, errors.jsonl, stage.json}.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import Config, section_slice
from stages._common import CacheOpt, PresetOpt, SetOpt, resolve_config, user_errors
from pipeline.errors import UserError
from pipeline.records import file_sha256

VERSION = "1"
"""Bump when what extraction computes changes (decoding, sampling, extractor maths, store schema)."""


def weight_provenance(cfg: Config) -> dict[str, str]:
    """sha256 of each checkpoint file, 'random-init' under --random-init, 'missing:<path>' when absent
    (the run then stops with a message saying which file goes where)."""
    ex = cfg.extract
    if ex.random_init:
        return {"er": "random-init", "au": "random-init", "swin": "random-init"}
    out = {}
    for name, rel in (("er", ex.er_weights), ("au", ex.au_weights), ("swin", ex.swin_weights)):
        path = Path(rel) if Path(rel).is_absolute() else Path(ex.weights_dir) / rel
        out[name] = file_sha256(path, memo_dir=cfg.cache_dir) if path.is_file() else f"missing:{path}"
    return out


def config_slice(cfg: Config) -> dict:
    """Frame sampling, crops, extractor names, weight sha256s, emotion classes. Not batch size,
    workers or device (knobs), and not the weight file *paths* (their contents are keyed instead)."""
    s = section_slice(cfg.extract)
    for k in ("weights_dir", "er_weights", "au_weights", "swin_weights"):
        s.pop(k)
    s["weights"] = weight_provenance(cfg)
    s["num_emotions"] = len(cfg.data.emotions)
    return s


@user_errors
def command(preset: PresetOpt = None, set: SetOpt = None, cache: CacheOpt = None) -> None:
    raise UserError("this stage is not built yet (issue 3)")
