"""Decode captions for a split with a trained run (greedy or beam; prefix-cached).

Output: cache/<dataset>/runs/<train-key>/captions/<caption-key>/{captions.json, references.json, stage.json}.
"""
from __future__ import annotations

from pipeline.config import Config, section_slice
from stages._common import CacheOpt, PresetOpt, SetOpt, resolve_config, user_errors
from pipeline.errors import UserError

VERSION = "1"
"""Bump when decoding changes what it produces."""


def config_slice(cfg: Config) -> dict:
    """Decoding fields (split, greedy/beam, beam size, length penalty, max length, checkpoint)."""
    return section_slice(cfg.caption)


@user_errors
def command(preset: PresetOpt = None, set: SetOpt = None, cache: CacheOpt = None) -> None:
    raise UserError("this stage is not built yet (issue 5)")
