"""pipeline.chain.sweep: grid parsing and expansion, the CSV, the lines of the paper-style plot, and running the
points (`run_points`, on the fake stages of tests/stages/test_chain.py: one after another, or as child processes)."""
from __future__ import annotations

import csv
import json
import sys

import pytest

from pipeline.errors import UserError
from pipeline.chain import parallel
from pipeline.chain.plan import prepare, prepare_and_plan as plan
from pipeline.chain.run import run_chain
from pipeline.chain.sweep import (
    SweepPoint, default_name, expand_grid, metric_order, parse_grid, plot_sweep, plotted_metrics, run_points,
    sweep_lines, write_csv,
)
from pipeline.progress import Reporter
from tests.stages.test_chain import cfg_of, demo_root, fake_metrics, fakes, sets  # noqa: F401  (fixtures)


def test_parse_and_expand_a_2d_grid_first_field_slowest():
    grid = parse_grid(["model.top_k=1,2,3", "train.tau_c= 0.2 ,0.3"])
    assert grid == [("model.top_k", ["1", "2", "3"]), ("train.tau_c", ["0.2", "0.3"])]
    pts = expand_grid(grid)
    assert len(pts) == 6
    assert pts[0] == {"model.top_k": "1", "train.tau_c": "0.2"}
    assert pts[1] == {"model.top_k": "1", "train.tau_c": "0.3"}
    assert pts[-1] == {"model.top_k": "3", "train.tau_c": "0.3"}
    assert default_name(grid) == "model.top_k--train.tau_c"


@pytest.mark.parametrize("args, msg", [
    ([], "at least one"),
    (["model.top_k"], "expected section.field=value"),
    (["top_k=1,2"], "expected section.field=value"),
    (["model.top_k=1,,2"], "comma-separated"),
    (["model.top_k="], "comma-separated"),
    (["model.top_k=1,1"], "twice"),
    (["model.top_k=1", "model.top_k=2"], "given twice"),
])
def test_parse_grid_rejects_bad_arguments(args, msg):
    with pytest.raises(UserError, match=msg):
        parse_grid(args)


def _pt(k, tau, cider, acc=None, **keys):
    m = {"CIDEr": cider, "Bleu_4": cider / 3}
    if acc is not None:
        m["emotion_acc"] = acc
    return SweepPoint({"model.top_k": k, "train.tau_c": tau}, keys, m, {}, {"dataset": "mafw", "split": "test"})


def test_csv_has_one_row_per_point_with_keys_evaluation_and_every_metric(tmp_path):
    pts = [_pt(2, 0.3, 0.5, 0.7, train="a" * 64, caption="b" * 64),
           _pt(1, 0.3, 0.4, None, train="c" * 64, caption="d" * 64)]
    path = write_csv(tmp_path / "s" / "sweep.csv", ["model.top_k", "train.tau_c"], pts)
    with open(path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["model.top_k", "train.tau_c", "train_key", "caption_key", "dataset", "split",
                       "Bleu_4", "CIDEr", "emotion_acc"]
    assert rows[1][:6] == ["2", "0.3", "a" * 16, "b" * 16, "mafw", "test"]   # what every score is on
    assert float(rows[1][7]) == 0.5 and float(rows[1][8]) == 0.7
    assert rows[2][8] == ""  # a metric a point lacks stays empty, not zero


def test_lines_one_per_value_of_the_second_field_sorted_by_x():
    pts = [_pt(3, 0.2, 0.30), _pt(1, 0.2, 0.10), _pt(1, 0.4, 0.15), _pt(3, 0.4, 0.35), _pt(2, 0.2, 0.20)]
    lines = sweep_lines(["model.top_k", "train.tau_c"], pts, "CIDEr")
    assert lines == {"train.tau_c=0.2": [(1, 0.10), (2, 0.20), (3, 0.30)],
                     "train.tau_c=0.4": [(1, 0.15), (3, 0.35)]}
    one_d = sweep_lines(["model.top_k"], [SweepPoint({"model.top_k": 5}, {}, {"CIDEr": 1.0}),
                                          SweepPoint({"model.top_k": 4}, {}, {"CIDEr": 2.0})], "CIDEr")
    assert one_d == {"": [(4, 2.0), (5, 1.0)]}


def test_categorical_x_keeps_first_seen_order_at_even_positions():
    pts = [SweepPoint({"train.weighting": w}, {}, {"CIDEr": c}) for w, c in (("fixed", 0.2), ("dwa", 0.3))]
    assert sweep_lines(["train.weighting"], pts, "CIDEr") == {"": [(0, 0.2), (1, 0.3)]}


def test_metric_order_and_panels_follow_the_paper():
    names = {"CIDEr", "Bleu_1", "METEOR", "emotion_acc", "Bleu_4", "ROUGE_L"}
    assert metric_order(names) == ["Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "emotion_acc", "Bleu_1"]
    assert [d for d, _ in plotted_metrics(names)] == ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "Emotion acc."]


def test_plot_writes_a_png_and_refuses_scores_without_plotted_metrics(tmp_path):
    pts = [_pt(k, t, 0.1 * k + t, 0.5) for k in (1, 2, 3) for t in (0.2, 0.3)]
    path = plot_sweep(tmp_path / "p" / "sweep.png", ["model.top_k", "train.tau_c"], pts, title="t")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list((tmp_path / "p").glob(".*"))  # no temp file left behind
    with pytest.raises(UserError, match="none of the plotted metrics"):
        plot_sweep(tmp_path / "q.png", ["model.top_k"], [SweepPoint({"model.top_k": 1}, {}, {"Bleu_1": 0.3})])


# ---- running the points --------------------------------------------------------------------------

def test_run_points_runs_the_shared_extraction_once_and_writes_every_point_in_grid_order(fakes, sets, tmp_path):
    grid = parse_grid(["model.top_k=3,1,2"])   # not sorted: the files keep the grid's order
    cfgs = [cfg_of(sets, f"model.top_k={k}") for k in (3, 1, 2)]
    lines: list[str] = []
    out_dir = tmp_path / "sweep"
    done = run_points(grid, cfgs, out_dir, sets=sets, reporter=Reporter(line=lines.append))
    assert fakes.calls == ["extract"] + ["train", "caption", "score"] * 3
    assert [line for line in lines if "sweep point" in line] == [
        "[bold]sweep point 1/3[/]: model.top_k=3", "[bold]sweep point 2/3[/]: model.top_k=1",
        "[bold]sweep point 3/3[/]: model.top_k=2"]
    assert sum("extract: reused" in line for line in lines) == 2   # the stage lines go to the same reporter
    data = json.loads((out_dir / "sweep.json").read_text())
    assert data["preset"] == "demo" and data["sets"] == sets and data["grid"] == {"model.top_k": ["3", "1", "2"]}
    assert [p["values"] for p in data["points"]] == [{"model.top_k": k} for k in (3, 1, 2)] == [p.values for p in done]
    for p, cfg in zip(data["points"], cfgs):
        plans = plan(cfg)
        assert p["keys"] == {s: plans[s].key for s in ("extract", "train", "caption", "score")}
        assert {m: p["metrics"][m] for m in fake_metrics(cfg)} == pytest.approx(fake_metrics(cfg))
        assert p["evaluation"] == {"dataset": "demo", "split": cfg.caption.split}
    assert [p["actions"]["extract"] for p in data["points"]] == ["run", "reused", "reused"]
    with open(out_dir / "sweep.csv") as f:
        assert [r["model.top_k"] for r in csv.DictReader(f)] == ["3", "1", "2"]
    assert (out_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


FAILING_POINT = "import sys; print('argv', sys.argv[1:]); sys.exit(3)"


def test_parallel_points_share_the_extraction_and_a_failed_point_names_its_log(fakes, sets, tmp_path, monkeypatch):
    """jobs=2: the shared extraction runs here, once; every child that fails is named with its exit code and log
    (UserError); a point finished before the sweep is not started again, and it alone is written."""
    monkeypatch.setattr(parallel, "visible_gpus", lambda: [])
    grid = parse_grid(["model.top_k=1,2"])
    cfgs = [cfg_of(sets, "model.top_k=1"), cfg_of(sets, "model.top_k=2")]
    out_dir = tmp_path / "sweep"
    logs = [out_dir / "logs" / "point-001-model.top_k=1.log", out_dir / "logs" / "point-002-model.top_k=2.log"]
    child = [sys.executable, "-c", FAILING_POINT]
    lines: list[str] = []
    kw = dict(sets=sets, reporter=Reporter(line=lines.append), jobs=2, child_argv=child, child_env={"COLUMNS": "160"})
    with pytest.raises(UserError, match="2 of 2 sweep points failed") as err:
        run_points(grid, cfgs, out_dir, **kw)
    assert fakes.calls == ["extract"]   # the shared stage, in this process; the points are the (failing) children
    assert any("sweep: shared stages first" in line for line in lines)
    assert f"model.top_k=2: exit 3, log {logs[1]}" in str(err.value)
    assert "'--set', 'model.top_k=2'" in logs[1].read_text()  # the child's command line: sets + the point's value
    assert not (out_dir / "sweep.json").exists()

    run_chain(cfgs[0], prepare(cfgs[0]))   # point 1 finishes elsewhere; point 2 still fails
    fakes.calls.clear()
    size_1 = logs[0].stat().st_size
    with pytest.raises(UserError, match="1 of 2 sweep points failed") as err:
        run_points(grid, cfgs, out_dir, **kw)
    assert fakes.calls == [] and logs[0].stat().st_size == size_1   # nothing rerun here, point 1 not started
    assert f"log {logs[1]}" in str(err.value) and "model.top_k=1:" not in str(err.value)
    data = json.loads((out_dir / "sweep.json").read_text())
    assert [p["values"] for p in data["points"]] == [{"model.top_k": 1}]
    assert set(data["points"][0]["actions"].values()) == {"reused"}
    assert data["points"][0]["metrics"]["CIDEr"] == pytest.approx(fake_metrics(cfgs[0])["CIDEr"])
    assert (out_dir / "sweep.png").is_file()


def test_run_points_needs_a_config_per_point_and_a_child_command_to_run_in_parallel(tmp_path):
    grid = parse_grid(["model.top_k=1,2"])
    with pytest.raises(ValueError, match="1 configs for 2 grid points"):
        run_points(grid, [object()], tmp_path)
    with pytest.raises(ValueError, match="child_argv"):
        run_points(grid, [object(), object()], tmp_path, jobs=2)
