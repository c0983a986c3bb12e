"""Dataset adapters: each turns one published annotation layout into `Clip`s (see `pipeline.data.manifest`).

One module per layout (`mafw`, `emvidcap`, `msvd`, `msrvtt`, `generic`), each with one
`read_<format>(cfg, notes) -> list[Clip]`. This package holds what they share, so a rule lives in
one place:

- `lines()` / `delimited_rows()`: read a text file line by line with 1-based line numbers, turning a
  missing file, an empty file and bad UTF-8 into one `AnnotationError(file, line, problem)`;
- `ClipBuilder`: gathers captions per clip id and rejects what is inconsistent (a clip named twice
  where ids must be unique, an empty caption, a clip with two emotions or splits), always with
  the file and line that caused it;
- `emotion_index()`, `find_video()`, `data_path()`;
- `overlap_note()`: the one rule for a video in both train and test (`data.overlap`).

Adapters do not check that videos exist or carve the validation split: `build_manifest` does that
for every format alike.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pipeline.errors import AnnotationError

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.data.clip import Clip

from pipeline.data.clip import SPLITS, VIDEO_EXTS  # noqa: E402,F401  (one home: pipeline.data.clip)


# ---- paths ---------------------------------------------------------------------------------------

def data_path(cfg: "Config", value: str, default: str) -> Path:
    """A dataset path: `value` (or the adapter `default` when empty), relative to `cfg.data.root` unless absolute."""
    p = Path(value or default)
    if not p.is_absolute():
        p = Path(cfg.data.root) / p
    return Path(os.path.abspath(p))


def find_video(videos: Path, stem: str, exts: tuple[str, ...] = VIDEO_EXTS) -> Path:
    """`videos/<stem><ext>` for the first extension in `exts` that exists; the first one when none does
    (the missing file is then reported with the others by `build_manifest`)."""
    for ext in exts:
        cand = videos / f"{stem}{ext}"
        if cand.is_file():
            return cand
    return videos / f"{stem}{exts[0]}"


# ---- line-numbered reading -----------------------------------------------------------------------

def require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        hint = " (it is a folder)" if path.is_dir() else ""
        raise AnnotationError(path, None, f"{what} not found{hint}; check data.root and the data.* paths of the preset")
    return path


def lines(path: Path, what: str = "annotation file") -> Iterator[tuple[int, str]]:
    """(line number, text without the line break) for every line of a UTF-8 file (BOM allowed).

    Raises AnnotationError for a missing file, an empty file (no non-blank line) and for the first
    line that is not valid UTF-8."""
    path = require_file(path, what)
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise AnnotationError(path, 1, f"{what} is empty")
    for no, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise AnnotationError(path, no, f"not valid UTF-8 text at byte {e.start} of the line ({e.reason}); "
                                  "save the file as UTF-8") from None
        yield no, text


def delimited_rows(
    path: Path, delimiter: str, what: str = "annotation file", quoted: bool = True,
) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for every non-blank row of a delimited text file, parsed by the csv module.
    `quoted`: CSV quoting (a quoted field may hold the delimiter or line breaks; the line number is where
    the row starts); off for TAB tables whose captions may hold a stray '"'."""
    src = lines(path, what)
    if not quoted:
        for no, text in src:
            if text.strip():
                yield no, text.split(delimiter)
        return
    # csv wants an iterator of strings; remember where each logical row starts
    starts: list[int] = []

    def feed() -> Iterator[str]:
        for no, text in src:
            starts.append(no)
            yield text + "\n"

    reader = csv.reader(feed(), delimiter=delimiter, strict=True)  # strict: an unclosed quote is an error
    while True:
        before = len(starts)
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            start = starts[before] if len(starts) > before else (starts[-1] if starts else None)
            span = f" (the row runs to line {starts[-1]}: an unclosed quote?)" if starts and starts[-1] != start else ""
            raise AnnotationError(path, start, f"cannot parse the row: {e}{span}") from None
        if not any(cell.strip() for cell in row):
            continue
        yield starts[before], row


# ---- values --------------------------------------------------------------------------------------

def emotion_index(emotions: list[str], name: str | None, path: Path, line: int | None) -> tuple[str | None, int]:
    """(normalised name, class index) for an emotion label; (None, -1) when there is none."""
    if name is None or not str(name).strip():
        return None, -1
    norm = str(name).strip().lower()
    lowered = [e.lower() for e in emotions]
    if norm not in lowered:
        raise AnnotationError(path, line, f"unknown emotion {name!r}; data.emotions lists: {', '.join(emotions)}")
    return emotions[lowered.index(norm)], lowered.index(norm)


def check_split(split: str, path: Path, line: int | None) -> str:
    s = str(split).strip().lower()
    if s in ("validate", "validation", "valid", "dev"):
        s = "val"
    if s not in SPLITS:
        raise AnnotationError(path, line, f"unknown split {split!r}; expected train, val or test")
    return s


OVERLAP_POLICIES = ("test", "error")


def overlap_note(cfg: "Config", notes: list[str], clip_id: str, train_at: tuple[Path, int | None],
                 test_at: tuple[Path, int | None]) -> None:
    """A clip listed for train and for test. `data.overlap` 'test' (default): the caller keeps it in test and
    drops it from train, and a warning naming it and both places goes to `notes`; 'error': AnnotationError."""
    policy = getattr(cfg.data, "overlap", "test")
    if policy not in OVERLAP_POLICIES:
        raise AnnotationError(train_at[0], None, f"data.overlap={policy!r}; expected one of {', '.join(OVERLAP_POLICIES)}")
    where = lambda at: f"{at[0]}:{at[1]}" if at[1] is not None else str(at[0])  # noqa: E731
    if policy == "error":
        raise AnnotationError(train_at[0], train_at[1], f"video {clip_id!r} is in the train table and in the test "
                              f"table ({where(test_at)}); data.overlap=error (set data.overlap=test to keep it in test "
                              "and drop it from train)")
    notes.append(f"video {clip_id} is in both train ({where(train_at)}) and test ({where(test_at)}): kept in test, "
                 "dropped from train (data.overlap=test; set data.overlap=error to stop instead)")


# ---- gathering clips -----------------------------------------------------------------------------

@dataclass
class _Draft:
    video: str
    emotion: str | None
    emotion_index: int
    split: str
    path: Path
    line: int | None
    captions: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else str(self.path)


class ClipBuilder:
    """Collects clips from rows; every inconsistency raises AnnotationError at the row that shows it."""

    def __init__(self, emotions: list[str]):
        self.emotions = emotions
        self.drafts: dict[str, _Draft] = {}

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self.drafts

    def __len__(self) -> int:
        return len(self.drafts)

    def add(
        self, clip_id: str, *, video: Path | str, captions: list[str], split: str, path: Path, line: int | None,
        emotion: str | None = None, unique: bool = False,
    ) -> None:
        """Add (or, unless `unique`, extend) clip `clip_id` with `captions` read at `path:line`."""
        clip_id = str(clip_id).strip()
        if not clip_id:
            raise AnnotationError(path, line, "empty clip id")
        for cap in captions:
            if not isinstance(cap, str) or not cap.strip():
                raise AnnotationError(path, line, f"empty or non-text caption for clip {clip_id!r}")
        name, index = emotion_index(self.emotions, emotion, path, line)
        split = check_split(split, path, line)
        old = self.drafts.get(clip_id)
        if old is None:
            self.drafts[clip_id] = _Draft(str(video), name, index, split, Path(path), line, [c.strip() for c in captions])
            return
        if unique:
            raise AnnotationError(path, line, f"duplicate clip id {clip_id!r} (first at {old.where})")
        for what, a, b in (("video", old.video, str(video)), ("emotion", old.emotion, name), ("split", old.split, split)):
            if a != b:
                raise AnnotationError(path, line, f"clip {clip_id!r} has {what} {b!r} here but {a!r} at {old.where}")
        old.captions.extend(c.strip() for c in captions)

    def clips(self) -> list["Clip"]:
        from pipeline.data.clip import Clip

        out = []
        for cid, d in self.drafts.items():
            if not d.captions:
                raise AnnotationError(d.path, d.line, f"clip {cid!r} has no caption")
            out.append(Clip(id=cid, video=d.video, captions=list(d.captions), emotion=d.emotion,
                            emotion_index=d.emotion_index, split=d.split))
        return out

