"""The dataset manifest: every clip of a dataset in one normalised form, `cache/<name>/manifest.jsonl`.

One JSON object per line, sorted by clip id, keys sorted, ASCII only, so the same annotations give
the same bytes on every machine; its sha256 is the root of the extract stage key:

    {"captions": ["a man smiles."], "emotion": "happiness", "emotion_index": 3,
     "id": "clip0001", "split": "train", "video": "/abs/path/videos/clip0001.mp4"}

`build_manifest(cfg)` reads the dataset's own annotation layout through an adapter in
`pipeline.data.datasets` (mafw, emvidcap, msvd, msrvtt, generic; demo = generic on
`<root>/annotations.jsonl`), then does what is common to all formats: carves a validation split
from train when the dataset has none (by a hash of the clip id, so it never depends on random
state or file order), and checks that every video exists (all missing ones reported together; a
directory named like a video is reported as one, not as missing).
`ensure_manifest(cfg)` writes the file only when its content changed and returns its hash.
A malformed annotation file stops everything before anything is written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os

from pathlib import Path

from pipeline.config import Config, load_config, preset_names
from pipeline.records import canonical_json
from pipeline.data.clip import SPLITS, VIDEO_EXTS, Clip  # noqa: F401  (Clip re-exported: the manifest's row)
from pipeline.errors import AnnotationError, MissingVideosError, UserError
from pipeline.records import atomic_write_text

log = logging.getLogger(__name__)

FORMATS = {
    "demo": "pipeline.data.datasets.generic:read_generic",
    "generic": "pipeline.data.datasets.generic:read_generic",
    "mafw": "pipeline.data.datasets.mafw:read_mafw",
    "emvidcap": "pipeline.data.datasets.emvidcap:read_emvidcap",
    "msvd": "pipeline.data.datasets.msvd:read_msvd",
    "msrvtt": "pipeline.data.datasets.msrvtt:read_msrvtt",
}
"""data.format -> 'module:function' of its adapter; every adapter module also has
`videos_dir(cfg)` and `annotations_path(cfg)`."""


_FIELDS = {f.name: f.type for f in dataclasses.fields(Clip)}


# ---- the file -----------------------------------------------------------------------------------

def manifest_text(clips: list[Clip]) -> str:
    """The canonical bytes of a manifest (as text): sorted by id, sorted keys, ASCII escapes."""
    return "".join(json.dumps(c.to_dict(), sort_keys=True, ensure_ascii=True) + "\n"
                   for c in sorted(clips, key=lambda c: c.id))


def write_manifest(clips: list[Clip], path: Path) -> str:
    """Write `clips` to `path` atomically; returns the sha256 hex of the bytes written."""
    text = manifest_text(clips)
    atomic_write_text(Path(path), text)
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(path: Path) -> list[Clip]:
    """The clips of a manifest file; a damaged line raises AnnotationError naming the file and line."""
    from pipeline.data.datasets import lines

    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, None, "manifest not found; build it with `ecpa manifest --preset <name>`")
    clips = []
    seen: set[str] = set()
    for no, text in lines(path, "manifest"):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise AnnotationError(path, no, f"damaged manifest line ({e.msg}); rebuild it with `ecpa manifest`") from None
        if not isinstance(obj, dict) or set(obj) != set(_FIELDS):
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise AnnotationError(path, no, f"damaged manifest line: expected keys {sorted(_FIELDS)}, got {got}")
        ok = (isinstance(obj["id"], str) and isinstance(obj["video"], str) and isinstance(obj["captions"], list)
              and all(isinstance(c, str) for c in obj["captions"]) and obj["captions"]
              and (obj["emotion"] is None or isinstance(obj["emotion"], str))
              and isinstance(obj["emotion_index"], int) and obj["split"] in SPLITS)
        if not ok:
            raise AnnotationError(path, no, "damaged manifest line: a field has the wrong type or value")
        if obj["id"] in seen:
            raise AnnotationError(path, no, f"damaged manifest: clip id {obj['id']!r} appears twice")
        seen.add(obj["id"])
        clips.append(Clip(**obj))
    return clips


# ---- building -----------------------------------------------------------------------------------

def _adapter(fmt: str):
    if fmt not in FORMATS:
        raise UserError(f"unknown data.format {fmt!r}; formats: {', '.join(FORMATS)}")
    mod_name, fn_name = FORMATS[fmt].split(":")
    mod = importlib.import_module(mod_name)
    return mod, getattr(mod, fn_name)


def val_rank(clip_id: str) -> str:
    """Order of the clips held out for validation: a hash of the id, independent of file order and seeds."""
    return hashlib.sha256(clip_id.encode()).hexdigest()


def carve_val(clips: list[Clip], fraction: float) -> int:
    """Move round(fraction * n_train) training clips (at least one when fraction > 0 and n_train >= 2,
    never all) to 'val', chosen by `val_rank`. In place; returns how many moved."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"data.val_fraction must be in [0, 1), got {fraction}")
    train = sorted((c for c in clips if c.split == "train"), key=lambda c: val_rank(c.id))
    if fraction == 0 or len(train) < 2:
        return 0
    n_val = min(max(1, round(fraction * len(train))), len(train) - 1)
    for c in train[:n_val]:
        c.split = "val"
    return n_val


def _head(paths: list[str], show: int = 5) -> str:
    more = f" (and {len(paths) - show} more)" if len(paths) > show else ""
    return ", ".join(paths[:show]) + more


def _missing_line(missing: list[str], total: int, root) -> str:
    """MissingVideosError's message, for the missing videos reported beside the directories."""
    return str(MissingVideosError(missing, total, root))


def build_manifest(cfg: Config, notes: list[str] | None = None) -> list[Clip]:
    """Read the dataset of `cfg` into clips (sorted by id). Raises AnnotationError / MissingVideosError,
    or UserError when a video path is a directory (any missing videos are named in the same message).

    `notes` (when given) receives the warnings that are not errors: clips left out, videos on disk that
    no annotation names, missing videos when data.check_videos is off."""
    notes = notes if notes is not None else []
    mod, read = _adapter(cfg.data.format)
    clips: list[Clip] = read(cfg, notes)
    ann = mod.annotations_path(cfg)
    if not clips:
        raise AnnotationError(ann, None, "no clips in the annotations")

    if not any(c.split == "val" for c in clips):
        n = carve_val(clips, cfg.data.val_fraction)
        if n:
            notes.append(f"no val split in the dataset: {n} training clips held out for validation "
                         f"(data.val_fraction={cfg.data.val_fraction})")

    videos = mod.videos_dir(cfg)
    folders_named = sorted(c.video for c in clips if os.path.isdir(c.video))
    missing = sorted(c.video for c in clips if not os.path.isfile(c.video) and not os.path.isdir(c.video))
    if folders_named and cfg.data.check_videos:
        also = f"; {_missing_line(missing, len(clips), videos)}" if missing else ""
        raise UserError(f"{len(folders_named)} of {len(clips)} videos named in the annotations are directories, "
                        f"not video files: {_head(folders_named)}{also}")
    if missing and cfg.data.check_videos:
        raise MissingVideosError(missing, len(clips), videos)
    if folders_named:
        notes.append(f"{len(folders_named)} of {len(clips)} videos are directories, not video files "
                     f"(e.g. {folders_named[0]}; data.check_videos=false: extraction will record them as failed clips)")
    if missing:
        notes.append(f"{len(missing)} of {len(clips)} videos are missing under {videos} "
                     "(data.check_videos=false: extraction will record them as failed clips)")
    named = {os.path.abspath(c.video) for c in clips}
    folders = sorted({Path(v).parent for v in named})  # the folders the annotations point into
    extra = [p for folder in folders if folder.is_dir() for p in sorted(folder.iterdir())
             if p.suffix.lower() in VIDEO_EXTS and os.path.abspath(p) not in named]
    if extra:
        notes.append(f"{len(extra)} videos under {', '.join(str(f) for f in folders[:3])} are named by no annotation "
                     f"(e.g. {extra[0].name}); they are left out")
    return sorted(clips, key=lambda c: c.id)


# ---- the cached manifest ------------------------------------------------------------------------

def demo_annotations(cfg: Config) -> Path:
    return Path(cfg.data.root) / "annotations.jsonl"


def _data_config(cfg: Config) -> Config:
    """The config saved as `cache/<name>/config.yaml`: the preset's own values with this data section, so
    `--cache cache/<name>` finds the dataset and preset but never inherits a one-off --set of another section."""
    base = load_config(cfg.preset) if cfg.preset in preset_names() else dataclasses.replace(cfg)
    base.preset = cfg.preset
    base.data = dataclasses.replace(cfg.data, emotions=list(cfg.data.emotions))
    return base


def ensure_manifest(cfg: Config, notes: list[str] | None = None) -> str:
    """Build `cfg.manifest_path` (generating the demo dataset first when asked for and absent), write it
    only when its content changed, save the data config beside it, and return the sha256 of its bytes.
    The adapters' warnings are logged when the file changes, and always appended to `notes` when given."""
    if cfg.data.format == "demo":
        from pipeline.data.demo import generate

        missing = not demo_annotations(cfg).exists()
        if missing:
            log.warning("demo dataset not found under %s: generating %d clips (seed %d)",
                        cfg.data.root, cfg.data.demo_clips, cfg.data.demo_seed)
        if missing or (Path(cfg.data.root) / "demo.json").exists():
            # a generator-made folder: returns at once when it holds this seed and clip count,
            # regenerates when data.demo_clips or data.demo_seed changed
            generate(Path(cfg.data.root), n_clips=cfg.data.demo_clips, seed=cfg.data.demo_seed,
                     video_size=cfg.data.demo_video_size)

    found: list[str] = []
    clips = build_manifest(cfg, found)  # validates everything before anything is written
    if notes is not None:
        notes.extend(found)
    data = manifest_text(clips).encode()
    path = cfg.manifest_path
    if not (path.is_file() and path.read_bytes() == data):
        atomic_write_text(path, data.decode())
        if notes is None:
            for note in found:
                log.warning("manifest %s: %s", path, note)

    saved = _data_config(cfg).to_yaml()
    cfg_path = cfg.cache_dir / "config.yaml"
    if not (cfg_path.is_file() and cfg_path.read_text() == saved):
        atomic_write_text(cfg_path, saved)  # the text pipeline.config.save_config writes, but atomic
    return content_hash(clips, Path(cfg.data.root))


def split_counts(clips: list[Clip]) -> dict[str, tuple[int, int]]:
    """split -> (clips, captions), in SPLITS order (splits without clips left out): what `ecpa manifest`
    prints, to compare with the paper's table of the dataset."""
    out = {}
    for split in SPLITS:
        part = [c for c in clips if c.split == split]
        if part:
            out[split] = (len(part), sum(len(c.captions) for c in part))
    return out


def content_hash(clips: list[Clip], root: Path) -> str:
    """The manifest's identity for stage keys: every clip's id, captions, emotion and split, its video
    path relative to the dataset root (so moving the dataset or the repo keeps the keys) and the video
    file's size (so re-encoded videos under the same names never reuse stale features)."""
    root = Path(root).resolve()
    rows = []
    for c in clips:
        video = Path(c.video)
        try:
            rel = str(video.resolve().relative_to(root))
        except ValueError:
            rel = str(video)
        size = video.stat().st_size if video.is_file() else -1
        rows.append({**c.to_dict(), "video": rel, "video_bytes": size})
    return hashlib.sha256(canonical_json(rows).encode()).hexdigest()
