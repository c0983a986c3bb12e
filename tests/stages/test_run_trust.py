"""What a user of a long run can trust (issue 18): `ecpa run` never reuses a store `ecpa status` calls damaged,
summaries and status name random-weight extractors, validation ties keep the later epoch, a finished run's
last.pt holds no resume state and no second copy of the weights."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from pipeline.config import load_config


@pytest.fixture
def copied(tiny_demo_extracted, tiny_demo_sets, tmp_path):
    """The tiny demo's extraction copied to a cache of our own (the shared one stays intact)."""
    import shutil

    src = tiny_demo_extracted.cache_dir
    shutil.copytree(src, tmp_path / "cache" / src.name, symlinks=True)
    sets = [s for s in tiny_demo_sets if not s.startswith("data.cache_root=")] + [f"data.cache_root={tmp_path / 'cache'}"]
    return sets


def test_run_repairs_a_store_status_calls_damaged_instead_of_reusing_it(copied):
    import zarr

    from pipeline.chain import run as chain
    from pipeline.chain.freshness import store_damage
    from pipeline.chain.plan import prepare, read_inputs
    from pipeline.progress import Reporter
    from pipeline.chain.plan import prepare_and_plan as plan

    cfg = load_config("demo", copied)
    ex = plan(cfg, upto="extract")["extract"]
    store = ex.out_dir / "store.zarr"
    arr = zarr.open_group(str(store), mode="r")["au/feats"]
    (store / "au/feats" / "/".join(["c", "3", *["0"] * (arr.ndim - 1)])).unlink()
    assert chain.chain_status(cfg, read_inputs(cfg), upto="extract")[0]["status"] == "damaged"
    lines: list[str] = []
    res = chain.run_chain(cfg, prepare(cfg), upto="extract", reporter=Reporter(line=lines.append))
    assert res.action("extract") == "run", lines           # never "reused"
    assert "damaged" in lines[0] and "doing that now" in lines[0]
    rec = json.loads((ex.out_dir / "stage.json").read_text())
    assert rec["counts"]["extracted"] == 1                   # only the damaged clip was computed again
    assert chain.chain_status(cfg, read_inputs(cfg), upto="extract")[0]["status"] == "fresh"
    assert store_damage(cfg, ex) is None


def test_status_and_summaries_name_random_weight_extractors(copied):
    from stages.cli import app

    res = CliRunner().invoke(app, ["status", "--preset", "demo", *sum((["--set", s] for s in copied), []), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["stages"]
    assert all(r["random_weights"] == ["er", "au", "swin"] for r in rows)
    res = CliRunner().invoke(app, ["status", "--preset", "demo", *sum((["--set", s] for s in copied), [])],
                             env={"COLUMNS": "300"})
    assert res.output.count("RANDOM WEIGHTS: er, au, swin") >= 4       # every stage line, and the note below
    res = CliRunner().invoke(app, ["extract", "--preset", "demo", *sum((["--set", s] for s in copied), [])],
                             env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "RANDOM WEIGHTS" in res.stdout      # the summary, on stdout


def test_validation_tie_keeps_the_later_epoch_and_finished_last_pt_is_slim(tmp_path, monkeypatch):
    from pipeline.train import loop as training
    from tests.stages.test_train import random_store, tiny_cfg

    clips = random_store(tmp_path / "s.zarr", n=10, n_val=2)
    monkeypatch.setattr(training, "validate", lambda *a, **k: ({"CIDEr": 0.5, "emotion_acc": None}, {}))
    cfg = tiny_cfg("train.epochs=3", "train.validate=true")
    training.train(cfg, store_path=tmp_path / "s.zarr", clips=clips, run_dir=tmp_path / "run", progress=False)
    ck = tmp_path / "run" / "checkpoints"
    best = torch.load(ck / "best.pt", map_location="cpu", weights_only=False)
    assert best["epoch"] == 2 and best["best"] == {"CIDEr": 0.5, "epoch": 2}   # equal CIDEr: the later epoch
    last = torch.load(ck / "last.pt", map_location="cpu", weights_only=False)
    assert "optimizer" not in last and "rng" not in last                     # a finished run resumes nothing
    assert (ck / "last.pt").stat().st_ino == (ck / "best.pt").stat().st_ino  # one copy of the weights on disk
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lr"] > 0                                                 # the last epoch's lr, not 0.0


def test_finished_run_keeps_a_slim_last_pt_when_best_is_earlier(tmp_path, monkeypatch):
    from pipeline.train import loop as training
    from tests.stages.test_train import random_store, tiny_cfg

    clips = random_store(tmp_path / "s.zarr", n=10, n_val=2)
    cider = iter([0.9, 0.1, 0.2])
    monkeypatch.setattr(training, "validate", lambda *a, **k: ({"CIDEr": next(cider), "emotion_acc": None}, {}))
    training.train(tiny_cfg("train.epochs=3", "train.validate=true"), store_path=tmp_path / "s.zarr", clips=clips, run_dir=tmp_path / "run",
                   progress=False)
    ck = tmp_path / "run" / "checkpoints"
    last = torch.load(ck / "last.pt", map_location="cpu", weights_only=False)
    assert set(last) == {"model", "epoch", "best", "meta"} and last["epoch"] == 2
    assert torch.load(ck / "best.pt", map_location="cpu", weights_only=False)["epoch"] == 0
    model, _, info = training.load_trained(tmp_path / "run", "last")
    assert info["epoch"] == 2
