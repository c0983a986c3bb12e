"""`ecpa extract`: the command over pipeline.extract.stage.run (reuse, --strict, missing weights, export)."""
from __future__ import annotations

import json

import h5py
from typer.testing import CliRunner

from stages.cli import app
from pipeline.chain.plan import prepare_and_plan as plan


def _sets(cfg_sets):
    return [a for s in cfg_sets for a in ("--set", s)]


def test_fixture_store_complete(tiny_demo_extracted):
    from pipeline.extract.store import open_store, validate_store

    p = plan(tiny_demo_extracted, upto="extract")["extract"]
    assert p.status() == "fresh"
    g = open_store(p.out_dir / "store.zarr")
    shapes = validate_store(g, p.out_dir / "store.zarr")
    rec = json.loads((p.out_dir / "stage.json").read_text())
    assert rec["counts"]["done"] + rec["counts"]["failed"] == rec["counts"]["clips"] == 24
    assert int(g["done"][:].sum()) == rec["counts"]["done"] >= 20
    assert shapes.frames == 8 and shapes.au_frames == 4 and shapes.aus == 41 and shapes.emotions == 7
    assert g.attrs["weights"] == {"er": "random-init", "au": "random-init", "swin": "random-init"}
    assert g.attrs["extract_key"] == p.key and len(g.attrs["au_names"]) == 41
    assert g.attrs["emotions"] == list(tiny_demo_extracted.data.emotions)


def test_command_reuses_and_exports(tiny_demo_extracted, tiny_demo_sets, tmp_path):
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(app, ["extract", "--preset", "demo", *_sets(tiny_demo_sets), "--export-hdf5", str(out)])
    assert res.exit_code == 0, res.output
    assert "reused" in res.output  # fresh key: nothing recomputed
    with h5py.File(out) as f:
        assert len(f["vid/tokens"]) == json.loads(
            (plan(tiny_demo_extracted, upto="extract")["extract"].out_dir / "stage.json").read_text())["counts"]["done"]


def test_command_missing_weights_is_one_line(tiny_demo_sets, tmp_path):
    res = CliRunner().invoke(app, ["extract", "--preset", "demo", *_sets(tiny_demo_sets),
                                   "--set", "extract.random_init=false", "--set", f"extract.weights_dir={tmp_path}"])
    assert res.exit_code == 2
    assert "resnet50_er_mafw.pth" in res.output and "Traceback" not in res.output


def test_random_init_flag_changes_key(tiny_demo_cfg):
    from pipeline.config import load_config
    from pipeline.extract import stage as extract

    base = load_config("demo", ["extract.random_init=false"])
    flagged = load_config("demo", ["extract.random_init=false", "extract.random_init=true"])
    assert __import__('pipeline.chain.specs', fromlist=['x']).extract_slice(base)["weights"] != __import__('pipeline.chain.specs', fromlist=['x']).extract_slice(flagged)["weights"]
    assert __import__('pipeline.chain.specs', fromlist=['x']).extract_slice(flagged)["weights"]["er"] == "random-init"
