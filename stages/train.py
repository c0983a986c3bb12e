"""Stage two: train ECPA's prompts, alignment losses and multimodal transformer on cached tensors.

Output: cache/<dataset>/runs/<train-key>/{checkpoints, metrics.jsonl, config.yaml, plots, stage.json}.
"""
from __future__ import annotations

from pipeline.config import Config, section_slice
from stages._common import CacheOpt, PresetOpt, SetOpt, resolve_config, user_errors
from pipeline.errors import UserError

VERSION = "1"
"""Bump when what training computes changes (model maths, losses, data order)."""


def config_slice(cfg: Config) -> dict:
    """Model, prompt, loss and optimiser fields, the seed, and the split/class definition."""
    return {
        "model": section_slice(cfg.model),
        "train": section_slice(cfg.train),
        "data": {"emotions": cfg.data.emotions, "val_fraction": cfg.data.val_fraction},
    }


@user_errors
def command(preset: PresetOpt = None, set: SetOpt = None, cache: CacheOpt = None) -> None:
    raise UserError("this stage is not built yet (issue 4)")
