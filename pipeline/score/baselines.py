"""What a model that ignores the video would score, from the training split alone (scored beside the model by
the score stage, on the same references).

BASELINES maps a name to a function of the training clips and the config; adding a baseline is one entry
here (and, when it is a caption, its scoring in pipeline.score.stage.score_into).
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

from pipeline.config import Config


def most_frequent_caption(train: list, cfg: Config) -> str | None:
    """The most frequent training caption, ties broken by the text so it never depends on file order."""
    captions = Counter(cap for c in train for cap in c.captions)
    return min(captions, key=lambda t: (-captions[t], t)) if captions else None


def majority_emotion(train: list, cfg: Config) -> str | None:
    """The most frequent training emotion (ties by name); None when no training clip is labelled."""
    emotions = Counter(c.emotion for c in train if c.emotion is not None)
    return min(emotions, key=lambda e: (-emotions[e], e)) if emotions else None


def chance(train: list, cfg: Config) -> float:
    """Emotion accuracy of a uniform guess, 1/E."""
    return 1.0 / len(cfg.data.emotions)


BASELINES: dict[str, Callable[[list, Config], object]] = {
    "caption": most_frequent_caption,
    "emotion": majority_emotion,
    "chance": chance,
}
"""name -> function(training clips, config): the value the score stage scores as that baseline."""


def training_baselines(cfg: Config) -> dict | None:
    """Every baseline of BASELINES for `cfg`'s training split; None without a manifest or training captions."""
    from pipeline.data.manifest import read_manifest

    if not cfg.manifest_path.is_file():
        return None
    train = [c for c in read_manifest(cfg.manifest_path) if c.split == "train"]
    out = {name: fn(train, cfg) for name, fn in BASELINES.items()}
    return out if out["caption"] is not None else None
