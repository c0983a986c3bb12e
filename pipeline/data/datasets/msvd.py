"""MSVD, the MSR Video Description Corpus (Chen & Dolan 2011), with a split file.

Corpus CSV (`MSR Video Description Corpus.csv`), quoted where a description holds a comma:

    VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description

optionally with a leading unnamed index column (as pandas exports it). English rows only; the clip
id is `<VideoID>_<Start>_<End>`, the video `<videos>/<clip id>.avi` (or .mp4). Split file, one clip
per line, either `<clip id> <train|val|test>` or the common YouTube mapping `youtube_mapping.txt`
(`-4wsuPCjDBc_5_15 vid1`, space-separated, CRLF as shipped), split by the usual 1200/100/670:
vid1..1200 train, vid1201..1300 val, vid1301..1970 test. With `data.split_file` empty the adapter
takes `youtube_mapping.txt` under the root, else `msvd_split.txt` (the older name). Corpus clips that the
split file does not list are left out (counted in the notes); English rows with an empty description
(the corpus has a few) are skipped and counted; a split line naming a clip with no English caption
is an error.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.data.datasets import SPLITS, ClipBuilder, check_split, data_path, delimited_rows, find_video, lines
from pipeline.errors import AnnotationError

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.data.clip import Clip

DEFAULT_VIDEOS = "YouTubeClips"
DEFAULT_ANNOTATIONS = "MSR Video Description Corpus.csv"
SPLIT_NAMES = ("youtube_mapping.txt", "msvd_split.txt")
"""Split files looked for under data.root when data.split_file is empty, in this order."""
COLUMNS = ["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"]
EXTS = (".avi", ".mp4")
VID_SPLITS = ((1, 1200, "train"), (1201, 1300, "val"), (1301, 1970, "test"))


def videos_dir(cfg: "Config") -> Path:
    return data_path(cfg, cfg.data.videos, DEFAULT_VIDEOS)


def annotations_path(cfg: "Config") -> Path:
    return data_path(cfg, cfg.data.annotations, DEFAULT_ANNOTATIONS)


def split_path(cfg: "Config") -> Path:
    if cfg.data.split_file:
        return data_path(cfg, cfg.data.split_file, "")
    for name in SPLIT_NAMES:
        if data_path(cfg, name, "").is_file():
            return data_path(cfg, name, "")
    return data_path(cfg, SPLIT_NAMES[0], "")  # reported as not found, by its usual name


def split_of_vid(n: int) -> str | None:
    for lo, hi, split in VID_SPLITS:
        if lo <= n <= hi:
            return split
    return None


def read_split(path: Path) -> dict[str, tuple[str, int]]:
    """clip id -> (split, line) from `<clip id> <split>` or `<clip id> vidN` lines."""
    out: dict[str, tuple[str, int]] = {}
    for no, text in lines(path, "MSVD split file"):
        parts = text.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise AnnotationError(path, no, f"expected '<clip id> <train|val|test>' or '<clip id> vidN', "
                                  f"found {len(parts)} fields")
        cid, tag = parts
        m = re.fullmatch(r"vid(\d+)", tag)
        if m:
            split = split_of_vid(int(m.group(1)))
            if split is None:
                raise AnnotationError(path, no, f"{tag} is outside vid1..vid1970 of the standard MSVD split")
        elif tag.lower() in SPLITS or tag.lower() in ("validate", "validation"):
            split = check_split(tag, path, no)
        else:
            raise AnnotationError(path, no, f"unknown split {tag!r}; expected train, val, test or vidN")
        if cid in out:
            raise AnnotationError(path, no, f"clip {cid!r} is listed twice (first at line {out[cid][1]})")
        out[cid] = (split, no)
    return out


def read_msvd(cfg: "Config", notes: list[str]) -> list["Clip"]:
    path = annotations_path(cfg)
    videos = videos_dir(cfg)
    rows = delimited_rows(path, ",", "MSVD corpus CSV")
    no, header = next(rows)
    names = [h.strip() for h in header]
    offset = 1 if names[:1] == [""] else 0  # pandas' unnamed index column
    if names[offset:] != COLUMNS:
        raise AnnotationError(path, no, f"expected the header {','.join(COLUMNS)} (optionally after an unnamed "
                              f"index column), found {','.join(names)}")
    captions: dict[str, list[tuple[int, str]]] = {}
    empty = 0
    for no, row in rows:
        if len(row) != len(names):
            raise AnnotationError(path, no, f"expected {len(names)} columns, found {len(row)} "
                                  "(a description with a comma must be quoted)")
        rec = dict(zip(COLUMNS, row[offset:]))
        if rec["Language"].strip() != "English":
            continue
        cid = f"{rec['VideoID'].strip()}_{rec['Start'].strip()}_{rec['End'].strip()}"
        if not rec["Description"].strip():
            empty += 1
            continue
        captions.setdefault(cid, []).append((no, rec["Description"]))
    if empty:
        notes.append(f"{empty} English rows of {path.name} have an empty description and are skipped")

    spath = split_path(cfg)
    splits = read_split(spath)
    builder = ClipBuilder(cfg.data.emotions)
    for cid, (split, sno) in splits.items():
        if cid not in captions:
            raise AnnotationError(spath, sno, f"clip {cid!r} has no English caption in {path}")
        video = find_video(videos, cid, EXTS)
        for no, text in captions[cid]:
            builder.add(cid, video=video, captions=[text], split=split, path=path, line=no)
    left_out = len(set(captions) - set(splits))
    if left_out:
        notes.append(f"{left_out} clips of {path.name} are not in the split file {spath.name} and are left out")
    return builder.clips()
