"""pipeline.chain.ablation.run_rows on the fake stages of tests/stages/test_chain.py: the rows as chains sharing the
extraction, the table files rewritten after every row (the table itself: tests/stages/test_ablate.py)."""
from __future__ import annotations

import csv
import json

import pytest

from pipeline.chain.ablation import resolve_rows, run_rows
from pipeline.progress import Reporter
from pipeline.train.loop import ablation_sets
from tests.stages.test_chain import cfg_of, demo_root, fake_metrics, fakes, sets  # noqa: F401  (fixtures)


def test_run_rows_in_table_order_sharing_the_extraction(fakes, sets, tmp_path):
    names = resolve_rows(["ecpa", "baseline"])
    cfgs = [cfg_of(sets, *ablation_sets(n)) for n in names]
    lines: list[str] = []
    done = run_rows(names, cfgs, tmp_path / "abl", sets=sets, reporter=Reporter(line=lines.append))
    assert fakes.calls == ["extract"] + ["train", "caption", "score"] * 2
    assert [line for line in lines if line.startswith("[bold]ablation")] == [
        "[bold]ablation 1/2[/]: baseline", "[bold]ablation 2/2[/]: ecpa"]
    assert [p.values["ablation"] for p in done] == ["baseline", "ecpa"]
    assert done[0].keys["extract"] == done[1].keys["extract"] and done[0].keys["train"] != done[1].keys["train"]
    data = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert data["preset"] == "demo" and data["sets"] == sets and data["rows"][1]["ablation"] == "ecpa"
    assert data["rows"][1]["metrics"]["CIDEr"] == pytest.approx(fake_metrics(cfgs[1])["CIDEr"])
    with open(tmp_path / "abl" / "ablation.csv") as f:
        assert [r["ablation"] for r in csv.DictReader(f)] == ["baseline", "ecpa"]
    assert "demo: ablations (Tables IV-VI), test split" in (tmp_path / "abl" / "ablation.md").read_text()
    assert run_rows([], [], tmp_path / "none") == [] and not (tmp_path / "none").exists()
