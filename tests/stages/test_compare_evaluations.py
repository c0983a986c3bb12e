"""Scores labelled by what they are on (issue 18): `ecpa compare` keeps a cross-dataset score out of the
in-domain rows and labels each block; the "why" line compares only with outputs of the same dataset/split."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipeline.config import load_config
from pipeline.records import StageRecord, atomic_write_text, write_record

TK = "a" * 64


def _caption(run, key, created, *, split="test", beam=1, parents=None, protocol=None):
    d = run / "captions" / key[:16]
    extra = {"protocol": protocol} if protocol else {}
    write_record(d, StageRecord("caption", key, "2", {"split": split, "beam_size": beam, "max_length": 32},
                                parents or {"train": TK, "features": "f" * 64}, extra=extra, created=created))
    return d


def _score(cap, key, created, cider):
    d = cap / "scores" / key[:16]
    atomic_write_text(d / "scores.json", json.dumps({"CIDEr": cider, "Bleu_4": cider / 4}))
    write_record(d, StageRecord("score", key, "1", {"meteor": False}, {"caption": "x" * 64}, created=created))
    return d


@pytest.fixture
def cache(tmp_path):
    """cache/mafw with one run: an in-domain score, then (newer) a cross-dataset score on emvidcap."""
    c = tmp_path / "mafw"
    run = c / "runs" / TK[:16]
    write_record(run, StageRecord("train", TK, "1", {"model": {"top_k": 3}}, {"extract": "e" * 64}, created=1.0))
    own = _caption(run, "1" * 64, 2.0)
    _score(own, "2" * 64, 3.0, 0.30)
    cross = _caption(run, "3" * 64, 4.0, parents={"train": TK, "features": "g" * 64, "eval_manifest": "m" * 64},
                     protocol={"protocol": "cross", "train_dataset": "mafw", "eval_dataset": "emvidcap"})
    _score(cross, "4" * 64, 5.0, 0.05)
    return c


def test_compare_keeps_the_cross_score_out_of_the_in_domain_rows(cache):
    from pipeline.chain.compare import load_view
    from stages.cli import app

    view = load_view(cache / "runs" / TK[:16])
    assert view.metrics["CIDEr"] == pytest.approx(0.30)            # the in-domain score, though the cross is newer
    assert view.evaluation.label == "mafw test"
    assert [x.evaluation.label for x in view.others] == ["emvidcap test (cross)"]
    res = CliRunner().invoke(app, ["compare", TK[:8], "--cache", str(cache), "--json"])
    assert res.exit_code == 0, res.output
    run = json.loads(res.stdout)["runs"][0]
    assert run["evaluation"] == {"dataset": "mafw", "split": "test", "protocol": "in-domain"}
    assert run["metrics"]["CIDEr"] == pytest.approx(0.30)
    assert run["other_evaluations"][0]["dataset"] == "emvidcap"
    assert run["other_evaluations"][0]["metrics"]["CIDEr"] == pytest.approx(0.05)
    res = CliRunner().invoke(app, ["compare", TK[:8], "--cache", str(cache)], env={"COLUMNS": "200"})
    text = res.output
    assert res.exit_code == 0 and "on mafw test" in text and "on emvidcap test (cross)" in text
    assert text.index("on mafw test") < text.index("30.00") < text.index("on emvidcap test (cross)") < text.index("5.00")


def test_why_compares_with_the_same_dataset_and_split_that_differs_least(cache):
    from pipeline.chain.freshness import explain
    from pipeline.chain.plan import StagePlan

    cfg = load_config("demo", [f"data.cache_root={cache.parent}", "data.name=mafw"])
    run = cache / "runs" / TK[:16]
    # the plan: beam 3 on mafw test. The cross output has the same decoding fields (one upstream entry, as
    # few "changes" as the in-domain beam-1 output) and is newer: it must not be the one compared with.
    p = StagePlan("caption", "5" * 64, run / "captions" / ("5" * 16), "2",
                  {"split": "test", "beam_size": 3, "max_length": 32}, {"train": TK, "features": "f" * 64})
    why = explain(cfg, p)
    assert why.nearest == run / "captions" / ("1" * 16)
    assert why.changes == ["caption.beam_size 1 -> 3"]
    # differing least counts each parent: an output with two other parents (newer) loses to one field
    _caption(run, "6" * 64, 9.0, beam=3, parents={"train": "b" * 64, "features": "c" * 64})
    assert explain(cfg, p).nearest == run / "captions" / ("1" * 16)
    # another split is not compared with at all
    q = StagePlan("caption", "7" * 64, run / "captions" / ("7" * 16), "2",
                  {"split": "val", "beam_size": 1, "max_length": 32}, {"train": TK, "features": "f" * 64})
    cfg_val = load_config("demo", [f"data.cache_root={cache.parent}", "data.name=mafw", "caption.split=val"])
    assert explain(cfg_val, q).status == "missing"
    assert "no earlier output on mafw val" in explain(cfg_val, q).detail
