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
    fingerprints: dict[str, str] | None = None
    """extract only: clip id -> video fingerprint of every manifest clip (pipeline.data.fingerprint)."""

    @property
    def clips_hash(self) -> str:
        """extract only: the hash of `fingerprints` that a complete record of this key must carry."""
        from pipeline.data.fingerprint import fingerprints_hash

        return fingerprints_hash(self.fingerprints or {})

    def status(self) -> str:
        """fresh / stale / partial / damaged / missing (pipeline.records.status_of); for extract also 'changed':
        the record of this key was written for other clips (a video added, replaced or removed since)."""
        status = status_of(self.out_dir, self.key)
        if status == "fresh" and self.fingerprints is not None:
            from pipeline.records import read_record

            if (read_record(self.out_dir).get("extra") or {}).get("clips_hash") != self.clips_hash:
                return "changed"
        return status


def extract_dir(cfg: Config, key: str) -> Path:
    return cfg.cache_dir / "features" / short(key)


def run_dir(cfg: Config, key: str) -> Path:
    return cfg.cache_dir / "runs" / short(key)


def plan(cfg: Config, upto: str = "score") -> dict[str, StagePlan]:
    """Keys and folders of the chain for `cfg`, in order, up to and including stage `upto`.

    The manifest is (re)built first when its inputs changed (and, for the demo preset, its extractors fitted
    when this fit has no output yet: `extract.demo_fit`, pipeline.extract.demo_fit). The extract key holds what
    changes every clip's features (extraction config, weights, code version, dataset name), not the list of
    videos: each clip's video fingerprint (pipeline.data.fingerprint) lives in the store, so a replaced, added or
    removed video re-extracts only that clip, in the same store (StagePlan.status says 'changed' until
    then). Train hashes the fingerprints of the train and val clips it reads, caption those of the split
    it captions, so changed data retrains and recaptions, unchanged does not. The whole manifest's hash
    (captions, emotions, splits) enters at train and score, so a caption fix retrains, never re-extracts."""
    from stages import caption, extract, score, train
    from pipeline.extract.demo_fit import ensure_demo_extractors, wanted
    from pipeline.data.fingerprint import clip_fingerprints, fingerprints_hash
    from pipeline.data.manifest import ensure_manifest, read_manifest

    order = ["extract", "train", "caption", "score"]
    stop = order.index(upto)
    out: dict[str, StagePlan] = {}

    manifest_hash = ensure_manifest(cfg)
    if wanted(cfg):  # the demo's extractors are fitted on its training clips first (cached, pipeline.extract.demo_fit)
        ensure_demo_extractors(cfg)
    clips = read_manifest(cfg.manifest_path)
    fps = clip_fingerprints(clips, cfg.data.root, memo_dir=cfg.cache_dir)
    ex_slice = extract.config_slice(cfg)
    ex_parents = {"dataset": cfg.data.name}
    ex_key = stage_key("extract", extract.VERSION, ex_slice, ex_parents)
    out["extract"] = StagePlan("extract", ex_key, extract_dir(cfg, ex_key), extract.VERSION, ex_slice, ex_parents,
                               fingerprints=fps)
    if stop < 1:
        return out

    tr_slice = train.config_slice(cfg)
    tr_parents = {"extract": ex_key, "manifest": manifest_hash,
                  "videos": fingerprints_hash(fps, [c.id for c in clips if c.split in ("train", "val")])}
    tr_key = stage_key("train", train.VERSION, tr_slice, tr_parents)
    tr_dir = run_dir(cfg, tr_key)
    out["train"] = StagePlan("train", tr_key, tr_dir, train.VERSION, tr_slice, tr_parents)
    if stop < 2:
        return out

    ca_slice = caption.config_slice(cfg)
    ca_parents = {"train": tr_key, "features": ex_key,
                  "videos": fingerprints_hash(fps, [c.id for c in clips if c.split == cfg.caption.split])}
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
