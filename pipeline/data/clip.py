"""One clip of a dataset, in the manifest's normalised form (pipeline.data.manifest), and the names every
dataset adapter (pipeline.data.datasets) shares. Its own module so the adapters and the manifest both import
it and not each other."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SPLITS = ("train", "val", "test")
VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov")


@dataclass
class Clip:
    """One clip of the manifest."""

    id: str
    """Clip id, unique in the dataset (e.g. MAFW '00025', MSVD '<VideoID>_<Start>_<End>')."""
    video: str
    """Absolute path of the video file."""
    captions: list[str]
    """Reference captions (at least one), as written in the annotations."""
    emotion: str | None
    """Emotion class name from data.emotions, None when the dataset gives none."""
    emotion_index: int
    """Index of `emotion` in data.emotions, -1 when unknown."""
    split: str
    """train, val or test."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
