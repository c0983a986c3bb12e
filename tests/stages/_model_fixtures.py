"""Module-scoped fixtures for the predict/export tests: the tiny demo chain captioned, and its exported model
folder. Import them into a test module (`from tests.stages._model_fixtures import bundle, chain`)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipeline.config import load_config
from stages.cli import app


@pytest.fixture(scope="module")
def chain(tiny_demo_trained, tiny_demo_sets):
    """(config, run dir, extract dir, {clip id: captions.json entry}, test-split manifest clips)."""
    from pipeline.data.manifest import read_manifest
    from pipeline.caption import stage as caption
    from pipeline.chain.plan import prepare_and_plan as plan

    cfg = load_config("demo", tiny_demo_sets)
    caption.run(cfg)
    p = plan(cfg, upto="caption")
    captions = {r["image_id"]: r for r in json.loads((p["caption"].out_dir / "captions.json").read_text())}
    test = [c for c in read_manifest(cfg.manifest_path) if c.split == "test"]
    return cfg, p["train"].out_dir, p["extract"].out_dir, captions, test


@pytest.fixture(scope="module")
def bundle(chain, tmp_path_factory):
    cfg, run_dir, _, _, _ = chain
    out = tmp_path_factory.mktemp("export") / "model"
    res = CliRunner().invoke(app, ["export", str(run_dir), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out
