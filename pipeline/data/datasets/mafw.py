"""MAFW (Liu et al., ACM MM 2022): the caption label file plus the official split sets.

Label file (`data/Labels/single_label.txt` in the release), one clip per line, TAB-separated:

    00025.mp4<TAB>anger<TAB><Chinese caption><TAB><English caption>

(the Chinese column may be empty). Split folder (`data/Train & Test Set/single/no_caption`) with
`set_<n>/train.txt` and `set_<n>/test.txt`, lines like `00025.mp4 anger`. The English caption is
used as written (tokenisation happens later). Clips in the label file but in neither split file
of the chosen set are left out (counted in the notes); a split line naming a clip the label file
lacks, or a clip twice in one split file, is an error; a clip in both train.txt and test.txt follows
`data.overlap` (default: a warning, kept in test, dropped from train; 'error' stops).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.data.datasets import ClipBuilder, data_path, delimited_rows, emotion_index, lines, overlap_note
from pipeline.errors import AnnotationError

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.data.clip import Clip

DEFAULT_VIDEOS = "data/clips"
DEFAULT_ANNOTATIONS = "data/Labels/single_label.txt"
DEFAULT_SPLIT = "data/Train & Test Set/single/no_caption"


def videos_dir(cfg: "Config") -> Path:
    return data_path(cfg, cfg.data.videos, DEFAULT_VIDEOS)


def annotations_path(cfg: "Config") -> Path:
    return data_path(cfg, cfg.data.annotations, DEFAULT_ANNOTATIONS)


def split_dir(cfg: "Config") -> Path:
    return data_path(cfg, cfg.data.split_file, DEFAULT_SPLIT) / f"set_{cfg.data.split_set}"


def _stem(name: str) -> str:
    name = name.strip()
    return name[:-4] if name.lower().endswith(".mp4") else name


def read_split(cfg: "Config", notes: list[str] | None = None) -> dict[str, tuple[str, Path, int, str | None]]:
    """clip id -> (split, file, line, emotion named there) from `set_<n>/{train,test}.txt`."""
    notes = notes if notes is not None else []
    folder = split_dir(cfg)
    if not folder.is_dir():
        raise AnnotationError(folder, None, f"MAFW split folder not found (expected {folder}/train.txt and test.txt; "
                              "set data.split_file and data.split_set)")
    out: dict[str, tuple[str, Path, int, str | None]] = {}
    for split in ("train", "test"):
        path = folder / f"{split}.txt"
        for no, text in lines(path, f"MAFW {split} split file"):
            parts = text.split()
            if not parts:
                continue
            if len(parts) > 2:
                raise AnnotationError(path, no, f"expected '<clip>.mp4 <emotion>', found {len(parts)} fields")
            cid = _stem(parts[0])
            emotion = emotion_index(cfg.data.emotions, parts[1], path, no)[0] if len(parts) == 2 else None
            if cid in out:
                s0, p0, l0, _ = out[cid]
                if s0 == split:
                    raise AnnotationError(path, no, f"clip {cid!r} is listed twice (first at {p0}:{l0})")
                overlap_note(cfg, notes, cid, (p0, l0), (path, no))  # train.txt is read first: keep the test line
            out[cid] = (split, path, no, emotion)
    return out


def read_mafw(cfg: "Config", notes: list[str]) -> list["Clip"]:
    path = annotations_path(cfg)
    videos = videos_dir(cfg)
    rows = list(delimited_rows(path, "\t", "MAFW label file", quoted=False))  # the label file is read (and checked) first
    splits = read_split(cfg, notes)
    builder = ClipBuilder(cfg.data.emotions)
    first_line: dict[str, int] = {}
    left_out = mismatched = 0
    for no, row in rows:
        if len(row) != 4:
            raise AnnotationError(path, no, f"expected 4 TAB-separated columns (clip, emotion, Chinese caption, "
                                  f"English caption), found {len(row)}")
        name, emotion, _zh, en = row
        cid = _stem(name)
        if cid in first_line:
            raise AnnotationError(path, no, f"duplicate clip id {cid!r} (first at line {first_line[cid]})")
        first_line[cid] = no
        label = emotion_index(cfg.data.emotions, emotion, path, no)[0]
        if not en.strip():
            raise AnnotationError(path, no, f"empty English caption for clip {cid!r}")
        if cid not in splits:
            left_out += 1
            continue
        split, _, _, split_emotion = splits[cid]
        mismatched += split_emotion is not None and split_emotion != label
        builder.add(cid, video=videos / f"{cid}.mp4", captions=[en], emotion=emotion, split=split,
                    path=path, line=no, unique=True)
    if left_out:
        notes.append(f"{left_out} clips of {path.name} are in neither split file of {split_dir(cfg)} and are left out")
    if mismatched:
        notes.append(f"{mismatched} clips carry another emotion in the split files than in {path.name} "
                     "(the label file's is used)")
    for cid, (_, spath, sno, _) in sorted(splits.items(), key=lambda kv: (str(kv[1][1]), kv[1][2])):
        if cid not in first_line:
            raise AnnotationError(spath, sno, f"clip {cid!r} is not in the label file {path}")
    return builder.clips()
