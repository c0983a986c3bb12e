"""EmVidCap (Wang et al.): caption tables, one per split, TAB-separated despite the `.csv` names.

    VideoID<TAB>EmCaptions
    vid10005<TAB>A man heard the sound of weeding and became angry
    vid10005<TAB>The man was irritated by the sound of the lawnmower

Several rows per video id; `data.annotations` is the train table, `data.test_annotations` the test
table (optional). Videos are `<videos>/<id>.mp4` (or .avi/.webm, whichever exists). The tables
carry no emotion label per clip: emotion None, index -1.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.datasets import ClipBuilder, data_path, delimited_rows, find_video
from pipeline.errors import AnnotationError

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.manifest import Clip

DEFAULT_VIDEOS = "videos"
DEFAULT_ANNOTATIONS = "EmVidCap-L_EmVideo_train_captions.csv"
HEADER = ["VideoID", "EmCaptions"]
EXTS = (".mp4", ".avi", ".webm")


def videos_dir(cfg: "Config") -> Path:
    return data_path(cfg, cfg.data.videos, DEFAULT_VIDEOS)


def annotations_path(cfg: "Config") -> Path:
    return data_path(cfg, cfg.data.annotations, DEFAULT_ANNOTATIONS)


def read_table(path: Path, split: str, builder: ClipBuilder, videos: Path, owner: dict[str, tuple[str, Path, int]]) -> None:
    """Add the clips of one caption table to `builder`; `owner` remembers where each id was first seen."""
    rows = delimited_rows(path, "\t", "EmVidCap caption table", quoted=False)
    no, header = next(rows)
    if [h.strip() for h in header] != HEADER:
        raise AnnotationError(path, no, f"expected the header {'<TAB>'.join(HEADER)}, found {'<TAB>'.join(header)!r}")
    for no, row in rows:
        if len(row) != 2:
            raise AnnotationError(path, no, f"expected 2 TAB-separated columns (VideoID, EmCaptions), found {len(row)}")
        vid = row[0].strip()
        first = owner.setdefault(vid, (split, path, no))
        if first[0] != split:
            raise AnnotationError(path, no, f"video {vid!r} is in the {split} table and in the {first[0]} table "
                                  f"({first[1]}:{first[2]})")
        builder.add(vid, video=find_video(videos, vid, EXTS), captions=[row[1]], split=split, path=path, line=no)


def read_emvidcap(cfg: "Config", notes: list[str]) -> list["Clip"]:
    builder = ClipBuilder(cfg.data.emotions)
    videos = videos_dir(cfg)
    owner: dict[str, tuple[str, Path, int]] = {}
    read_table(annotations_path(cfg), "train", builder, videos, owner)
    if cfg.data.test_annotations:
        read_table(data_path(cfg, cfg.data.test_annotations, ""), "test", builder, videos, owner)
    else:
        notes.append("data.test_annotations is empty: no test split")
    return builder.clips()
