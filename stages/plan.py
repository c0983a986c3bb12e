"""The chain of stage keys for one config: extract -> train -> caption -> score.

`plan(cfg)` computes every stage's key and output folder without running anything; `ecpa status`,
`ecpa run` and each stage use it, so a key is computed in exactly one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import Config
from pipeline.records import short, stage_key, status_of


@dataclass
class StagePlan:
    name: str
    """extract, train, caption or score."""
    key: str
    """Full sha256 key."""
    out_dir: Path
    """Where the output lives (named by the short key)."""
    version: str
    config: dict
    """The config slice the key hashes."""
    parents: dict[str, str] = field(default_factory=dict)

    def status(self) -> str:
        return status_of(self.out_dir, self.key)


def extract_dir(cfg: Config, key: str) -> Path:
    return cfg.cache_dir / "features" / short(key)


def run_dir(cfg: Config, key: str) -> Path:
    return cfg.cache_dir / "runs" / short(key)


def videos_hash(cfg: Config) -> str:
    """The part of the manifest stage one depends on: each clip's id and video file (relative path and
    size, as `pipeline.manifest.content_hash` identifies it), not its captions, emotion or split."""
    import dataclasses

    from pipeline.manifest import content_hash, read_manifest

    clips = [
        dataclasses.replace(c, captions=[], emotion=None, emotion_index=-1, split="")
        for c in read_manifest(cfg.manifest_path)
    ]
    return content_hash(clips, Path(cfg.data.root))


def plan(cfg: Config, upto: str = "score") -> dict[str, StagePlan]:
    """Keys and folders of the chain for `cfg`, in order, up to and including stage `upto`.

    The manifest is (re)built first when its inputs changed (and, for the demo preset, its extractors fitted
    when this fit has no output yet: `extract.demo_fit`, pipeline.demo_fit). Stage one reads only the videos, so the
    extract key hashes the clips' ids and video files (`videos_hash`); the whole manifest's hash
    (captions, emotions, splits) enters at train and score, so a caption fix or another
    data.val_fraction retrains but never re-extracts."""
    from stages import caption, extract, score, train
    from pipeline.demo_fit import ensure_demo_extractors, wanted
    from pipeline.manifest import ensure_manifest

    order = ["extract", "train", "caption", "score"]
    stop = order.index(upto)
    out: dict[str, StagePlan] = {}

    manifest_hash = ensure_manifest(cfg)
    if wanted(cfg):  # the demo's extractors are fitted on its training clips first (cached, pipeline.demo_fit)
        ensure_demo_extractors(cfg)
    ex_slice = extract.config_slice(cfg)
    ex_parents = {"videos": videos_hash(cfg)}
    ex_key = stage_key("extract", extract.VERSION, ex_slice, ex_parents)
    out["extract"] = StagePlan("extract", ex_key, extract_dir(cfg, ex_key), extract.VERSION, ex_slice, ex_parents)
    if stop < 1:
        return out

    tr_slice = train.config_slice(cfg)
    tr_parents = {"extract": ex_key, "manifest": manifest_hash}
    tr_key = stage_key("train", train.VERSION, tr_slice, tr_parents)
    tr_dir = run_dir(cfg, tr_key)
    out["train"] = StagePlan("train", tr_key, tr_dir, train.VERSION, tr_slice, tr_parents)
    if stop < 2:
        return out

    ca_slice = caption.config_slice(cfg)
    ca_parents = {"train": tr_key, "features": ex_key}
    ca_key = stage_key("caption", caption.VERSION, ca_slice, ca_parents)
    ca_dir = tr_dir / "captions" / short(ca_key)
    out["caption"] = StagePlan("caption", ca_key, ca_dir, caption.VERSION, ca_slice, ca_parents)
    if stop < 3:
        return out

    sc_slice = score.config_slice(cfg)
    sc_parents = {"caption": ca_key, "references": manifest_hash}
    sc_key = stage_key("score", score.VERSION, sc_slice, sc_parents)
    out["score"] = StagePlan("score", sc_key, ca_dir / "scores" / short(sc_key), score.VERSION, sc_slice, sc_parents)
    return out
