"""The extraction and in-loop rows of `make bench` (tests/bench/__main__.py) on hand-made results: the look-ahead
bound's target (held clips at most look-ahead + batch), the runner's ratio, the in-loop ratio's direction."""
from __future__ import annotations

import pytest

from tests.bench import __main__ as bench


def extract_result(peak_bounded: int, bound: int = 6) -> dict:
    return {"mode": "demo", "clips": 24, "device": "cpu", "ratio": 2.5,
            "shared": {"clips_per_s": 8.0, "decode_s": 2.0, "compute_s": 1.0},
            "separate": {"clips_per_s": 3.2},
            "runner": {"clips_per_s": 12.0, "workers": 2, "wait_s": 0.7, "seconds": 2.0},
            "serial": {"clips_per_s": 8.0},
            "shares": {"decode": 0.58, "face": 0.09, "compute": 0.28, "write": 0.05},
            "lookahead": {"bound": bound, "peak_bounded": peak_bounded, "peak_unbounded": 12, "delay_ms": 1000.0,
                          "batch": 2, "clips": 12, "workers": 2, "clip_mb": 0.2}}


def test_lookahead_row_holds_at_the_bound_and_fails_one_above():
    rows = bench.rows_extract(extract_result(6))
    assert len(rows) == 3
    runner, held = rows[1], rows[2]
    assert runner.ratio == pytest.approx(1.5) and "decode 58%" in runner.detail
    assert held.figure == 6 and held.holds == "yes" and held.ratio == pytest.approx(2.0)
    assert bench.rows_extract(extract_result(7))[2].holds == "no"


def test_missing_runner_keys_become_an_error_row():
    r = extract_result(6)
    del r["lookahead"]["peak_unbounded"]
    rows = bench.rows_for(bench.SPECS[[s.name for s in bench.SPECS].index("extract")], r, None)
    assert len(rows) == 1 and rows[0].error and "peak_unbounded" in rows[0].error


def test_in_loop_row_is_cached_over_in_loop():
    r = {"steps_per_s": {"cached": 40.0, "in_loop": 2.0}, "batch": 8, "workers": 2, "rounds": 2, "steps": 4,
         "warm_steps": {"cached": 4, "in_loop": 6}, "extractors": ["swin3d_demo", "resnet18", "anfl_demo"],
         "preset": "demo"}
    (row,) = bench.rows_loader_inloop(r)
    assert row.ratio == pytest.approx(20.0) and row.higher_is_better and "DataLoader workers" in row.baseline_what
