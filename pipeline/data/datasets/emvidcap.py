"""EmVidCap (Wang et al.): caption tables, one per split, read exactly as the release ships them.

The release holds two variants, each with a trainval and a test table:

    EmVidCap-L/EmVideo_trainval_captions.csv    EmVidCap-L/EmVideo_test_captions.csv
    EmVidCap-S/EmVideo_trainval_captions.csv    EmVidCap-S/EmVideo_test_captions.csv

Header `VideoID<sep>EmCaptions`, then one caption per row, several rows per video id:

    vid10005<TAB>A man heard the sound of weeding and became angry     (EmVidCap-L: TAB, LF)
    vid1301,a guy is playing with a puppy happily                      (EmVidCap-S: comma, CRLF)

The separator is read from the header line (TAB when it holds one, else comma); a row is split at
its *first* separator only, so a caption may hold the separator itself (the L tables hold commas),
and a caption wrapped in double quotes is unquoted as CSV. LF or CRLF line ends and a UTF-8 BOM are
accepted (`pipeline.data.datasets.lines`).

Which files: `data.annotations` / `data.test_annotations` when set. Left empty (the preset), the
adapter looks under `data.root` for `EmVidCap-L/`, `EmVidCap-S/`, the release's file names directly
under the root, and the older names `EmVidCap-L_EmVideo_{train,test}_captions.csv` (aliases); when
both variants are unpacked it asks which one. A trainval file named `..._trainval_...` or `..._train_...`
finds its test table beside it.

Overlap: in EmVidCap-L the video `vid80703` is in both tables. A video in both is a warning naming it
and both places; `data.overlap` says what happens: 'test' (default) keeps it in test and drops it
from train, so the test set is the published one and no test video is trained on; 'error' stops.

Videos are `<videos>/<id>.mp4` (or .avi/.webm, whichever exists). The tables carry no emotion label
per clip: emotion None, index -1.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.data.datasets import ClipBuilder, data_path, find_video, lines, overlap_note
from pipeline.errors import AnnotationError

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.data.clip import Clip

DEFAULT_VIDEOS = "videos"
TRAINVAL = "EmVideo_trainval_captions.csv"
TEST = "EmVideo_test_captions.csv"
VARIANTS = ("EmVidCap-L", "EmVidCap-S")
ALIASES = (("EmVidCap-L_EmVideo_train_captions.csv", "EmVidCap-L_EmVideo_test_captions.csv"),)
"""Older flat names (train, test) accepted as they were."""
HEADER = ["VideoID", "EmCaptions"]
EXTS = (".mp4", ".avi", ".webm")


def videos_dir(cfg: "Config") -> Path:
    return data_path(cfg, cfg.data.videos, DEFAULT_VIDEOS)


def _release_tables(root: Path) -> list[tuple[Path, Path]]:
    """(trainval, test) pairs of the release layouts present under `root`."""
    found = [(root / v / TRAINVAL, root / v / TEST) for v in VARIANTS if (root / v / TRAINVAL).is_file()]
    if (root / TRAINVAL).is_file():
        found.append((root / TRAINVAL, root / TEST))
    found += [(root / a, root / b) for a, b in ALIASES if (root / a).is_file()]
    return found


def tables(cfg: "Config") -> tuple[Path, Path | None]:
    """(trainval table, test table or None): the configured files, else the release layout under data.root."""
    root = data_path(cfg, "", ".")
    if cfg.data.annotations:
        train = data_path(cfg, cfg.data.annotations, "")
    else:
        found = _release_tables(root)
        if len(found) > 1:
            names = ", ".join(str(t.relative_to(root)) for t, _ in found)
            raise AnnotationError(root, None, f"several EmVidCap caption tables here ({names}); choose one with "
                                  f"--set data.annotations=EmVidCap-S/{TRAINVAL} --set data.test_annotations=EmVidCap-S/{TEST}")
        if not found:
            raise AnnotationError(root / VARIANTS[0] / TRAINVAL, None,
                                  f"EmVidCap caption table not found (looked for {' and '.join(v + '/' + TRAINVAL for v in VARIANTS)}, "
                                  f"{TRAINVAL} and {ALIASES[0][0]} under {root}); unpack the release into data.root "
                                  "or set data.annotations")
        train = found[0][0]
    if cfg.data.test_annotations:
        return train, data_path(cfg, cfg.data.test_annotations, "")
    for a, b in (("_trainval_", "_test_"), ("_train_", "_test_")):
        if a in train.name and (train.parent / train.name.replace(a, b)).is_file():
            return train, train.parent / train.name.replace(a, b)
    return train, None


def annotations_path(cfg: "Config") -> Path:
    return tables(cfg)[0]


def read_table(path: Path) -> list[tuple[int, str, str]]:
    """(line, video id, caption) for every row of one caption table, header checked."""
    src = lines(path, "EmVidCap caption table")
    rows: list[tuple[int, str, str]] = []
    header_no, sep = None, "\t"
    for no, text in src:
        if not text.strip():
            continue
        if header_no is None:
            header_no, sep = no, ("\t" if "\t" in text else ",")
            got = [h.strip() for h in text.split(sep)]
            if got != HEADER:
                raise AnnotationError(path, no, f"expected the header VideoID<TAB>EmCaptions or VideoID,EmCaptions, "
                                      f"found {text!r}")
            continue
        if sep not in text:
            name = "TAB" if sep == "\t" else "comma"
            raise AnnotationError(path, no, f"expected 2 columns (VideoID, EmCaptions) separated by a {name} "
                                  "as in the header, found 1")
        vid, caption = text.split(sep, 1)
        if sep == "\t" and "\t" in caption:
            raise AnnotationError(path, no, f"expected 2 TAB-separated columns (VideoID, EmCaptions), "
                                  f"found {caption.count(chr(9)) + 2}")
        cap = caption.strip()
        if len(cap) >= 2 and cap[0] == '"' and cap[-1] == '"':  # a quoted CSV field
            try:
                cap = next(csv.reader([cap], delimiter=sep, strict=True))[0]
            except (csv.Error, StopIteration, IndexError):
                raise AnnotationError(path, no, "cannot parse the quoted caption") from None
        rows.append((no, vid.strip(), cap))
    if header_no is None:
        raise AnnotationError(path, 1, "EmVidCap caption table is empty")
    return rows


def read_emvidcap(cfg: "Config", notes: list[str]) -> list["Clip"]:
    builder = ClipBuilder(cfg.data.emotions)
    videos = videos_dir(cfg)
    train_path, test_path = tables(cfg)
    train_rows = read_table(train_path)
    test_rows = read_table(test_path) if test_path is not None else []
    if test_path is None:
        notes.append(f"no test table beside {train_path.name} and data.test_annotations is empty: no test split")
    first_test: dict[str, int] = {}
    for no, vid, cap in test_rows:
        first_test.setdefault(vid, no)
    first_train: dict[str, int] = {}
    for no, vid, _ in train_rows:
        first_train.setdefault(vid, no)
    both = sorted(set(first_train) & set(first_test), key=lambda v: first_train[v])
    for vid in both:
        overlap_note(cfg, notes, vid, (train_path, first_train[vid]), (test_path, first_test[vid]))
    for no, vid, cap in train_rows:
        if vid not in first_test:
            builder.add(vid, video=find_video(videos, vid, EXTS), captions=[cap], split="train", path=train_path, line=no)
    for no, vid, cap in test_rows:
        builder.add(vid, video=find_video(videos, vid, EXTS), captions=[cap], split="test", path=test_path, line=no)
    return builder.clips()
