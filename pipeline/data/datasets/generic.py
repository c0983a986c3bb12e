"""The generic layout (and the demo's): JSON lines or a CSV table of clips.

JSONL (`.jsonl`), one object per clip and line:

    {"id": "clip0001", "video": "videos/clip0001.mp4", "captions": ["a man smiles."],
     "emotion": "happiness", "split": "train"}

`captions` may be a single string under `caption`; `emotion` is optional (null or absent: no label).
Other keys are metadata (the demo writes `aus`, `action`, ...): ignored, and listed once in the
notes; a key that looks like a misspelt known one (`emtion`, `vidoe`) is an error. CSV (`.csv`, or `.tsv` TAB-separated) with a header row
`id,video,caption,emotion,split` (emotion optional), one caption per row; rows with the same id
merge their captions. `video` is relative to `data.videos` (default: `data.root`) unless absolute.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.data.datasets import ClipBuilder, data_path, delimited_rows, lines
from pipeline.errors import AnnotationError

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.data.clip import Clip

DEFAULT_ANNOTATIONS = "annotations.jsonl"
JSONL_KEYS = {"id", "video", "captions", "caption", "emotion", "split"}
CSV_REQUIRED = ("id", "video", "caption", "split")
CSV_OPTIONAL = ("emotion",)


def videos_dir(cfg: "Config") -> Path:
    return data_path(cfg, cfg.data.videos, ".")


def annotations_path(cfg: "Config") -> Path:
    return data_path(cfg, cfg.data.annotations, DEFAULT_ANNOTATIONS)


def read_generic(cfg: "Config", notes: list[str]) -> list["Clip"]:
    path = annotations_path(cfg)
    if path.suffix.lower() in (".csv", ".tsv"):
        return _read_csv(cfg, path, "\t" if path.suffix.lower() == ".tsv" else ",")
    return _read_jsonl(cfg, path, notes)


def _video(cfg: "Config", value: object, path: Path, line: int) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise AnnotationError(path, line, "missing or empty 'video' (a path relative to data.videos or absolute)")
    p = Path(value.strip())
    return p if p.is_absolute() else videos_dir(cfg) / p


def _read_jsonl(cfg: "Config", path: Path, notes: list[str]) -> list["Clip"]:
    builder = ClipBuilder(cfg.data.emotions)
    ignored: set[str] = set()
    for no, text in lines(path):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise AnnotationError(path, no, f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise AnnotationError(path, no, f"expected one JSON object per line, got {type(obj).__name__}")
        for key in sorted(set(obj) - JSONL_KEYS - ignored):
            near = difflib.get_close_matches(key, JSONL_KEYS, n=1, cutoff=0.8)
            if near:
                raise AnnotationError(path, no, f"unknown key {key!r} (did you mean {near[0]!r}?)")
            ignored.add(key)
        for key in ("id", "split"):
            if key not in obj:
                raise AnnotationError(path, no, f"missing key {key!r}")
        if "captions" in obj:
            caps = obj["captions"]
            if isinstance(caps, str):
                caps = [caps]
        elif "caption" in obj:
            caps = [obj["caption"]]
        else:
            raise AnnotationError(path, no, "missing 'captions' (a list of strings) or 'caption' (a string)")
        if not isinstance(caps, list) or not caps:
            raise AnnotationError(path, no, "'captions' must be a non-empty list of strings")
        emotion = obj.get("emotion")
        if emotion is not None and not isinstance(emotion, str):
            raise AnnotationError(path, no, f"'emotion' must be a class name or null, got {emotion!r}")
        builder.add(str(obj["id"]), video=_video(cfg, obj.get("video"), path, no), captions=caps,
                    split=str(obj["split"]), emotion=emotion, path=path, line=no, unique=True)
    if ignored:
        notes.append(f"{path.name}: metadata keys ignored: {', '.join(sorted(ignored))}")
    return builder.clips()


def _read_csv(cfg: "Config", path: Path, delimiter: str) -> list["Clip"]:
    builder = ClipBuilder(cfg.data.emotions)
    rows = delimited_rows(path, delimiter, quoted=delimiter == ",")
    header_no, header = next(rows)
    header = [h.strip().lower() for h in header]
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise AnnotationError(path, header_no, f"header lacks column(s) {', '.join(missing)}; expected "
                              f"{delimiter.join(CSV_REQUIRED + CSV_OPTIONAL)}")
    col = {name: header.index(name) for name in CSV_REQUIRED + CSV_OPTIONAL if name in header}
    for no, row in rows:
        if len(row) != len(header):
            raise AnnotationError(path, no, f"expected {len(header)} columns, found {len(row)}")
        builder.add(row[col["id"]], video=_video(cfg, row[col["video"]], path, no), captions=[row[col["caption"]]],
                    split=row[col["split"]], emotion=row[col["emotion"]] if "emotion" in col else None,
                    path=path, line=no)
    return builder.clips()
