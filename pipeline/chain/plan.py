"""The plan of a chain: every stage's key and output folder for one config, computed without running anything.

`plan(cfg, inputs)` is pure: it writes nothing and reads only files keyed by their contents (vocabulary,
lexicon, the manifest for caption.max_length). What it hashes from the data comes in as `PlanInputs`,
computed once per command:

* `prepare(cfg)` - for commands that run stages: builds the manifest (generating the demo dataset when
  absent), fits the demo's extractors when the preset asks for them (pipeline.extract.demo_fit), then reads
  the inputs (memoising file hashes in the cache).
* `read_inputs(cfg)` - for `ecpa status`: the same inputs built in memory, writing no file; None when the
  dataset is not there yet (the demo before it is generated).

The extract key holds what changes every clip's features (extraction config, weights, code version,
dataset name), not the list of videos: each clip's video fingerprint (pipeline.data.fingerprint) lives in
the store, so a replaced, added or removed video re-extracts only that clip, in the same store
(StagePlan.status says 'changed' until then). Train hashes the fingerprints of the train and val clips it
reads, caption those of the split it captions. The whole manifest's hash (captions, emotions, splits)
enters at train and score, so a caption fix retrains, never re-extracts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.chain import layout, specs
from pipeline.config import Config
from pipeline.records import read_record, stage_key, status_of


@dataclass
class PlanInputs:
    """What a plan hashes from the data and the weight files, computed once per command."""

    manifest_hash: str
    """pipeline.data.manifest.content_hash of the dataset's clips."""
    clips: list
    """The manifest's clips (pipeline.data.manifest.Clip)."""
    fingerprints: dict[str, str]
    """clip id -> video fingerprint (pipeline.data.fingerprint)."""
    weights: dict[str, str] = field(default_factory=dict)
    """Extractor weight provenance (pipeline.chain.specs.weight_provenance)."""

    def videos_hash(self, splits) -> str:
        from pipeline.data.fingerprint import fingerprints_hash

        return fingerprints_hash(self.fingerprints, [c.id for c in self.clips if c.split in splits])


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
            if (read_record(self.out_dir).get("extra") or {}).get("clips_hash") != self.clips_hash:
                return "changed"
        return status


def stage_plan(name: str, config: dict, parents: dict[str, str], where: Callable[[str], Path],
               fingerprints: dict[str, str] | None = None) -> StagePlan:
    """The one place a key is derived: stage name + its spec's VERSION + config slice + parent keys."""
    version = specs.SPECS[name].version
    key = stage_key(name, version, config, parents)
    return StagePlan(name, key, where(key), version, config, parents, fingerprints=fingerprints)


def caption_plan(cfg: Config, train: StagePlan, features_key: str, videos: str, *,
                 length_from: Config | None = None, extra_parents: dict[str, str] | None = None) -> StagePlan:
    """Captions of `cfg.caption.split` by the run `train`, from the features of `features_key` (the in-domain
    chain's extraction, or another dataset's for the cross-dataset and zero-shot protocols)."""
    parents = {"train": train.key, "features": features_key, "videos": videos, **(extra_parents or {})}
    return stage_plan("caption", specs.caption_slice(cfg, length_from=length_from), parents,
                      lambda key: layout.caption_dir(train.out_dir, key))


def score_plan(cfg: Config, caption: StagePlan, references: str) -> StagePlan:
    """Scores of the captions `caption` against the references of the manifest hashed `references`."""
    return stage_plan("score", specs.score_slice(cfg), {"caption": caption.key, "references": references},
                      lambda key: layout.score_dir(caption.out_dir, key))


def plan(cfg: Config, inputs: PlanInputs, upto: str = "score") -> dict[str, StagePlan]:
    """Keys and folders of the chain for `cfg`, in order, up to and including stage `upto`. Pure."""
    stop = specs.STAGES.index(upto)
    ex = stage_plan("extract", specs.extract_slice(cfg, inputs.weights), {"dataset": cfg.data.name},
                    lambda key: layout.extract_dir(cfg.cache_dir, key), fingerprints=inputs.fingerprints)
    out = {"extract": ex}
    if stop >= 1:
        tr = stage_plan("train", specs.train_slice(cfg), {"extract": ex.key, "manifest": inputs.manifest_hash,
                                                          "videos": inputs.videos_hash(("train", "val"))},
                        lambda key: layout.run_dir(cfg.cache_dir, key))
        out["train"] = tr
    if stop >= 2:
        out["caption"] = caption_plan(cfg, tr, ex.key, inputs.videos_hash((cfg.caption.split,)))
    if stop >= 3:
        out["score"] = score_plan(cfg, out["caption"], inputs.manifest_hash)
    return out


# ---- the inputs ------------------------------------------------------------------------------------

def _inputs(cfg: Config, clips: list, manifest_hash: str, write_memo: bool) -> PlanInputs:
    from pipeline.data.fingerprint import clip_fingerprints

    fps = clip_fingerprints(clips, cfg.data.root, memo_dir=cfg.cache_dir, write_memo=write_memo)
    return PlanInputs(manifest_hash, clips, fps, specs.weight_provenance(cfg, write_memo=write_memo))


def prepare(cfg: Config, say: Callable[[str], None] | None = None) -> PlanInputs:
    """Make the chain's inputs exist, once per command that runs stages: the manifest (and the demo dataset),
    the demo's fitted extractors when asked for; then hash them (memoised in the cache)."""
    from pipeline.data import manifest
    from pipeline.extract import demo_fit

    manifest_hash = manifest.ensure_manifest(cfg)
    if demo_fit.wanted(cfg):  # the demo's extractors are fitted on its training clips first (cached)
        demo_fit.ensure_demo_extractors(cfg, say=say)
    return _inputs(cfg, manifest.read_manifest(cfg.manifest_path), manifest_hash, write_memo=True)


def read_inputs(cfg: Config) -> PlanInputs | None:
    """The inputs `prepare` would hash, built in memory without writing any file: the manifest from the
    annotations (as `ensure_manifest` would write it). None when the dataset is not there yet (the demo
    before `ecpa run` or `ecpa demo-data` generates it)."""
    from pipeline.data import manifest

    if cfg.data.format == "demo" and not manifest.demo_annotations(cfg).exists():
        return None
    clips = manifest.build_manifest(cfg, [])
    return _inputs(cfg, clips, manifest.content_hash(clips, Path(cfg.data.root)), write_memo=False)


def prepare_and_plan(cfg: Config, upto: str = "score") -> dict[str, StagePlan]:
    """`plan(cfg, prepare(cfg), upto)`: for a library caller or a test that plans one config once."""
    return plan(cfg, prepare(cfg), upto=upto)
