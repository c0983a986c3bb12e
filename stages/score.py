"""Score captions with pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr) and emotion accuracy.

Output: .../captions/<caption-key>/scores/<score-key>/{scores.json, per_clip.csv, stage.json}.
"""
from __future__ import annotations

from pipeline.config import Config, section_slice
from stages._common import CacheOpt, PresetOpt, SetOpt, resolve_config, user_errors
from pipeline.errors import UserError

VERSION = "1"
"""Bump with the scorer (tokenisation, metric set)."""


def config_slice(cfg: Config) -> dict:
    return section_slice(cfg.score)


@user_errors
def command(preset: PresetOpt = None, set: SetOpt = None, cache: CacheOpt = None) -> None:
    raise UserError("this stage is not built yet (issue 5)")
