"""pipeline.chain.plan: the keys (pinned to a hand computation), a pure plan, and inputs read without writing."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.chain import specs
from pipeline.chain.plan import plan, prepare, read_inputs
from pipeline.config import DataConfig, load_config
from pipeline.data.fingerprint import fingerprints_hash
from pipeline.records import short, stage_key


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from pipeline.data.demo import generate

    root = tmp_path_factory.mktemp("plan_demo_data")
    generate(root, n_clips=8, seed=0, video_size=DataConfig().demo_video_size)
    return root


def _cfg(demo_root: Path, cache: Path, *more: str):
    return load_config("demo", [f"data.root={demo_root}", "data.demo_clips=8", f"data.cache_root={cache}",
                                "extract.random_init=true", "extract.demo_fit=false", *more])


def _tree(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for r in roots if r.exists() for p in sorted(r.rglob("*"))}


def test_keys_equal_a_hand_computed_stage_key(demo_root, tmp_path):
    """The spec-based plan derives exactly key = sha256(stage, version, slice, parents), chained; the versions are
    pinned here so a key change is always a deliberate edit."""
    cfg = _cfg(demo_root, tmp_path / "cache", "model.top_k=2")
    inputs = prepare(cfg)
    plans = plan(cfg, inputs)
    ids = lambda splits: [c.id for c in inputs.clips if c.split in splits]  # noqa: E731
    ex = stage_key("extract", "4", specs.extract_slice(cfg, inputs.weights), {"dataset": "demo"})
    tr = stage_key("train", "4", specs.train_slice(cfg), {
        "extract": ex, "manifest": inputs.manifest_hash,
        "videos": fingerprints_hash(inputs.fingerprints, ids(("train", "val")))})
    ca = stage_key("caption", "2", specs.caption_slice(cfg), {
        "train": tr, "features": ex, "videos": fingerprints_hash(inputs.fingerprints, ids((cfg.caption.split,)))})
    sc = stage_key("score", "2", specs.score_slice(cfg), {"caption": ca, "references": inputs.manifest_hash})
    assert {n: p.key for n, p in plans.items()} == {"extract": ex, "train": tr, "caption": ca, "score": sc}
    assert plans["extract"].config["weights"] == {"er": "random-init", "au": "random-init", "swin": "random-init"}
    assert plans["score"].out_dir == (cfg.cache_dir / "runs" / short(tr) / "captions" / short(ca) / "scores"
                                      / short(sc))
    # a knob is no part of any key; a keyed field moves its stage and everything after it
    knob = plan(_cfg(demo_root, tmp_path / "cache", "model.top_k=2", "train.num_workers=3"), inputs)
    assert {n: p.key for n, p in knob.items()} == {n: p.key for n, p in plans.items()}
    beam = plan(_cfg(demo_root, tmp_path / "cache", "model.top_k=2", "caption.beam_size=2"), inputs)
    assert [beam[n].key == plans[n].key for n in specs.STAGES] == [True, True, False, False]


def test_plan_is_pure_and_read_inputs_equal_prepared_ones(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path / "cache")
    fresh = read_inputs(cfg)   # before anything exists: built in memory
    assert not (tmp_path / "cache").exists(), "read_inputs wrote into the cache"
    prepared = prepare(cfg)
    assert (fresh.manifest_hash, fresh.fingerprints, fresh.weights) == \
        (prepared.manifest_hash, prepared.fingerprints, prepared.weights)
    before = _tree(tmp_path, demo_root)
    keys = [p.key for p in plan(cfg, prepared).values()]
    assert [p.key for p in plan(cfg, fresh).values()] == keys
    assert _tree(tmp_path, demo_root) == before, "plan() or read_inputs() wrote a file"


def test_read_inputs_without_the_demo_dataset_is_none_and_writes_nothing(tmp_path):
    cfg = load_config("demo", [f"data.root={tmp_path / 'nodata'}", f"data.cache_root={tmp_path / 'cache'}",
                               "extract.random_init=true"])
    assert read_inputs(cfg) is None
    assert list(tmp_path.iterdir()) == []
