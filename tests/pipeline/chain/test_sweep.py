"""pipeline.chain.sweep: grid parsing and expansion, the CSV, the lines of the paper-style plot."""
from __future__ import annotations

import csv

import pytest

from pipeline.errors import UserError
from pipeline.chain.sweep import (
    SweepPoint, default_name, expand_grid, metric_order, parse_grid, plot_sweep, plotted_metrics, sweep_lines,
    write_csv,
)


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
