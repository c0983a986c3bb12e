"""Small helpers for the stage-one tests: a mini generic dataset built from the tiny demo's clips."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.config import load_config

MINI_SETS = ["extract.random_init=true", "extract.num_frames=4", "extract.au_frames=2", "extract.batch_size=2", "extract.workers=0",
             "data.check_videos=false", "data.val_fraction=0.0"]


def demo_videos(cfg) -> list[Path]:
    from pipeline.data.manifest import read_manifest

    return [Path(c.video) for c in read_manifest(cfg.manifest_path)]


def mini_config(root: Path, videos: list[Path], extra: list[str] | None = None, bad: dict[str, str] | None = None):
    """A generic-format dataset under `root` naming `videos` (copied in) plus `bad` {clip_id: file text
    spec}; returns its Config (4 frames, 2 AU frames)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "videos").mkdir(exist_ok=True)
    rows = []
    for i, v in enumerate(videos):
        dst = root / "videos" / f"ok{i}.mp4"
        if not dst.exists():
            shutil.copy(v, dst)
        rows.append({"id": f"ok{i}", "video": f"videos/ok{i}.mp4", "captions": ["a face."], "emotion": "neutral",
                     "split": "train"})
    for cid, kind in (bad or {}).items():
        path = root / "videos" / f"{cid}.mp4"
        if kind == "zero":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("this is not a video\n")
        elif kind == "truncated":
            data = Path(videos[0]).read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif kind == "missing":
            pass
        rows.append({"id": cid, "video": f"videos/{cid}.mp4", "captions": ["x."], "emotion": "neutral", "split": "train"})
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = [f"data.root={root}", f"data.cache_root={root / 'cache'}", "data.name=mini", "data.format=generic",
            *MINI_SETS, *(extra or [])]
    return load_config("demo", sets)
