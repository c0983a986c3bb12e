"""MSR-VTT (Xu et al. 2016): `train_val_videodatainfo.json` and `test_videodatainfo.json`.

    {"videos": [{"video_id": "video0", "split": "train", ...}, ...],
     "sentences": [{"video_id": "video0", "caption": "a man is ...", "sen_id": 0}, ...]}

Split 'validate' becomes 'val'. Videos are `<videos>/<video_id>.mp4`. No emotion labels. A video
in the train/val file that the test file lists too follows `data.overlap` (default: a warning naming
it, kept in test, dropped from train; 'error' stops). A JSON
syntax error is reported at its line; a problem in a well-formed file at the line of the entry
(found by its `sen_id` / `video_id`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.data.datasets import ClipBuilder, check_split, data_path, find_video, lines, overlap_note
from pipeline.errors import AnnotationError

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.data.clip import Clip

DEFAULT_VIDEOS = "videos"
DEFAULT_ANNOTATIONS = "train_val_videodatainfo.json"
EXTS = (".mp4", ".avi", ".webm")


def videos_dir(cfg: "Config") -> Path:
    return data_path(cfg, cfg.data.videos, DEFAULT_VIDEOS)


def annotations_path(cfg: "Config") -> Path:
    return data_path(cfg, cfg.data.annotations, DEFAULT_ANNOTATIONS)


def _lines_of(text: str, key: str) -> dict[object, int]:
    """value -> line of its first `"key": value` in the raw JSON text (one pass; for messages only)."""
    out: dict[object, int] = {}
    line, pos = 1, 0
    for m in re.finditer(rf'"{re.escape(key)}"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)', text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        out.setdefault(json.loads(m.group(1)), line)
    return out


def read_info(path: Path, builder: ClipBuilder, videos: Path, skip: dict[str, tuple[Path, int | None]] | None = None,
              cfg: "Config | None" = None, notes: list[str] | None = None) -> dict[str, tuple[Path, int | None]]:
    """Add the clips of one *_videodatainfo.json file to `builder`, except the videos of `skip` (id -> where the
    test file lists it), each reported through `overlap_note`. Returns id -> (file, line) of its videos."""
    skip = skip or {}
    text = "\n".join(t for _, t in lines(path, "MSR-VTT videodatainfo file"))  # checks presence, emptiness, UTF-8
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, e.lineno, f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list) or not isinstance(data.get("sentences"), list):
        raise AnnotationError(path, 1, "expected an object with 'videos' and 'sentences' lists")
    video_line, sentence_line = _lines_of(text, "video_id"), _lines_of(text, "sen_id")
    split_of: dict[str, str] = {}
    for i, v in enumerate(data["videos"]):
        if not isinstance(v, dict) or "video_id" not in v or "split" not in v:
            raise AnnotationError(path, None, f"videos[{i}] lacks video_id or split")
        no = video_line.get(v["video_id"])
        if v["video_id"] in split_of:
            raise AnnotationError(path, no, f"duplicate video id {v['video_id']!r} in 'videos'")
        split_of[v["video_id"]] = check_split(v["split"], path, no)
    for vid in [v for v in split_of if v in skip]:
        overlap_note(cfg, notes if notes is not None else [], vid, (path, video_line.get(vid)), skip[vid])
    for i, s in enumerate(data["sentences"]):
        if not isinstance(s, dict) or "video_id" not in s or "caption" not in s:
            raise AnnotationError(path, None, f"sentences[{i}] lacks video_id or caption")
        no = sentence_line.get(s.get("sen_id"))
        vid = s["video_id"]
        if vid not in split_of:
            raise AnnotationError(path, no, f"sentences[{i}] names video {vid!r} that 'videos' does not list")
        if vid in skip:
            continue
        builder.add(vid, video=find_video(videos, vid, EXTS), captions=[s["caption"]], split=split_of[vid],
                    path=path, line=no)
    without = sorted(set(split_of) - set(builder.drafts) - set(skip))
    if without:
        raise AnnotationError(path, video_line.get(without[0]),
                              f"{len(without)} videos have no sentence (e.g. {without[0]!r})")
    return {v: (path, video_line.get(v)) for v in split_of}


def read_msrvtt(cfg: "Config", notes: list[str]) -> list["Clip"]:
    videos = videos_dir(cfg)
    test = ClipBuilder(cfg.data.emotions)
    in_test: dict[str, tuple[Path, int | None]] = {}
    if cfg.data.test_annotations:  # read first: a video both files list stays in test (data.overlap)
        in_test = read_info(data_path(cfg, cfg.data.test_annotations, ""), test, videos)
    else:
        notes.append("data.test_annotations is empty: no test split")
    builder = ClipBuilder(cfg.data.emotions)
    read_info(annotations_path(cfg), builder, videos, skip=in_test, cfg=cfg, notes=notes)
    for cid, draft in test.drafts.items():
        builder.drafts[cid] = draft
    return builder.clips()
