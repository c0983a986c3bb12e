"""`ecpa ablate` (stages/ablate.py + pipeline/chain/ablation.py): the table of Tables IV-VI, rows sharing the extraction."""
from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from pipeline.chain.ablation import DEFAULT_ROWS, markdown_table, resolve_rows
from pipeline.errors import UserError
from pipeline.chain.sweep import SweepPoint

NO_METEOR = ["score.meteor=false"]


def test_rows_in_table_order_and_unknown_refused():
    assert DEFAULT_ROWS == ["baseline", "vep", "vep_tep", "ecpa", "no_er_align", "no_au_align",
                            "er_global", "er_sim_ce", "au_ce", "au_contrastive"]
    assert resolve_rows(["ecpa", "au_ce", "baseline", "ecpa"]) == ["baseline", "ecpa", "au_ce"]
    assert resolve_rows(["visual_sentence", "vep"]) == ["vep", "visual_sentence"]
    with pytest.raises(UserError, match="align_global.*one of baseline"):
        resolve_rows(["align_global"])


def test_markdown_rows_and_cider_difference_by_hand():
    pts = [SweepPoint({"ablation": "baseline"}, metrics={"Bleu_4": 0.1, "CIDEr": 0.5, "emotion_acc": 0.3}),
           SweepPoint({"ablation": "ecpa"}, metrics={"Bleu_4": 0.2, "CIDEr": 0.75, "emotion_acc": 0.4}),
           SweepPoint({"ablation": "au_ce"}, metrics={"Bleu_4": 0.15, "CIDEr": 0.8125})]
    md = markdown_table(pts).splitlines()
    assert md[0] == "| table | row | `--ablation` | BLEU-4 x100 | CIDEr x100 | Emotion acc. x100 | CIDEr vs ECPA |"
    assert md[2] == "| IV | SwinBERT baseline | `baseline` | 10.00 | 50.00 | 30.00 (no L_ER) | -25.00 |"
    assert md[3] == "| IV | ECPA (+ ECA) | `ecpa` | 20.00 | 75.00 | 40.00 | - |"
    assert md[4] == "| VI | AU-word: cross-entropy | `au_ce` | 15.00 | 81.25 | - | +6.25 |"


@pytest.mark.java
def test_ablate_runs_rows_as_chains_sharing_the_extraction(tiny_demo_trained, tiny_demo_sets, tmp_path):
    from stages import ablate
    from stages.cli import app

    sets = [*tiny_demo_sets, *NO_METEOR]
    out, points = ablate.run_ablation("demo", sets, ["ecpa", "baseline"], progress=False, echo=None)
    assert [p.values["ablation"] for p in points] == ["baseline", "ecpa"]
    assert points[0].keys["extract"] == points[1].keys["extract"]            # one extraction for every row
    assert points[0].keys["train"] != points[1].keys["train"]
    assert points[0].actions["extract"] == points[1].actions["extract"] == "reused"
    with open(out / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["ablation"] for r in rows] == ["baseline", "ecpa"]
    assert float(rows[1]["CIDEr"]) == pytest.approx(points[1].metrics["CIDEr"])
    # the baseline row really is the baseline: its run's config has every ECPA component off
    from pipeline.records import read_record

    run = read_record(out.parents[1] / "runs" / points[0].keys["train"][:16])
    m, t = run["config"]["model"], run["config"]["train"]
    assert not (m["use_er_prompt"] or m["use_au_prompts"] or m["use_class_tokens"] or t["align_er"] or t["align_au"])
    md = (out / "ablation.md").read_text()
    assert "`baseline`" in md and "`ecpa`" in md
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "ablation.json").read_text())["rows"][0]["table"] == "IV"
    # the command: a rerun reuses every stage of every row
    res = CliRunner().invoke(app, ["ablate", "--preset", "demo", "--no-progress", "--rows", "baseline,ecpa",
                                   *sum((["--set", s] for s in sets), [])])
    assert res.exit_code == 0, res.output
    assert "ablations done" in res.output and "····" in res.output and "TCS" not in res.output
