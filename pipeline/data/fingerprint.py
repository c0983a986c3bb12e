"""Per-clip video fingerprints: what makes stage one redo a clip, and stage two retrain on it.

The extract key holds what changes *every* clip's features (extraction config, weight files' content, code
version, dataset name); it no longer holds the list of videos. Each clip instead carries its own
fingerprint, kept in the store's `fingerprint` array beside the clip's features:

    <path relative to data.root>|<size in bytes>|<sha256 of the first and last 64 KiB, 16 hex digits>

e.g. `videos/00025.mp4|589791|3f2a9c0d1e4b5a67`. A clip is fresh when its store row is done and holds the
fingerprint the video has now; a replaced video (other size, or other bytes at either end: an mp4's header
and index, which any re-encode or re-cut rewrites) gets a new fingerprint and is extracted again; a moved
dataset keeps them (paths are relative to the root). Not detected, by choice: an edit of the same size that
leaves the first and last 64 KiB alone (hashing whole files would read the whole dataset on every
`ecpa status`). The modification time is not used: copying a dataset changes it, the content does not.
A file that is not there has the fingerprint `<path>|missing` (the clip then fails at extraction).

`clip_fingerprints` memoises by (absolute path, size, mtime) in `<cache>/fingerprints.json`, so a
rerun reads only the files that changed on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from pipeline.records import atomic_write_text

HEAD_TAIL = 64 * 1024
"""Bytes hashed at each end of a video file."""
MEMO_NAME = "fingerprints.json"


def _relative(video: Path, root: Path) -> str:
    try:
        return video.resolve().relative_to(root).as_posix()
    except ValueError:
        return video.as_posix()


def content_digest(path: Path, size: int) -> str:
    """sha256 (16 hex digits) of the size, the first and the last HEAD_TAIL bytes of a file."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(HEAD_TAIL))
        if size > HEAD_TAIL:
            f.seek(max(HEAD_TAIL, size - HEAD_TAIL))
            h.update(f.read(HEAD_TAIL))
    return h.hexdigest()[:16]


def video_fingerprint(video: str | Path, root: str | Path) -> str:
    """The fingerprint of one video file (see the module docstring)."""
    video, root = Path(video), Path(root).resolve()
    rel = _relative(video, root)
    if not video.is_file():
        return f"{rel}|missing"
    size = video.stat().st_size
    return f"{rel}|{size}|{content_digest(video, size)}"


def clip_fingerprints(clips: Iterable, root: str | Path, memo_dir: str | Path | None = None,
                      write_memo: bool = True) -> dict[str, str]:
    """clip id -> fingerprint for manifest clips (`.id`, `.video`); memoised in `memo_dir/fingerprints.json`
    by (absolute path, size, mtime_ns) when `memo_dir` is given. `write_memo=False` reads the memo but never
    writes it (`ecpa status` changes no file)."""
    root = Path(root).resolve()
    memo_file = Path(memo_dir) / MEMO_NAME if memo_dir else None
    memo: dict[str, list] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (json.JSONDecodeError, OSError):
            memo = {}  # a damaged memo only costs re-reading the files
    fresh: dict[str, list] = {}
    out: dict[str, str] = {}
    for c in clips:
        path = os.path.abspath(c.video)
        try:
            st = os.stat(path)
        except OSError:
            out[c.id] = f"{_relative(Path(path), root)}|missing"
            continue
        ident = [st.st_size, st.st_mtime_ns]
        old = memo.get(path)
        if isinstance(old, list) and len(old) == 3 and old[:2] == ident:
            fp = old[2]
        else:
            fp = video_fingerprint(path, root)
        fresh[path] = [*ident, fp]
        out[c.id] = fp
    if memo_file is not None and write_memo and fresh != memo:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo_file, json.dumps(fresh, sort_keys=True))
    return out


def fingerprints_hash(fps: dict[str, str], ids: Iterable[str] | None = None) -> str:
    """sha256 over (clip id, fingerprint) of `ids` (all when None), in id order: a stage-key parent."""
    keep = sorted(fps) if ids is None else sorted(set(ids))
    payload = "\n".join(f"{i}\t{fps.get(i, '')}" for i in keep)
    return hashlib.sha256(payload.encode()).hexdigest()
