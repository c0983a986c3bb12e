"""The benchmark table's logic (ratios, targets, error rows, key mapping) on hand-made result dicts.
No benchmark runs here: timings are never tested."""
from __future__ import annotations

import json
import math

import pytest

from tests.bench import __main__ as bench
from tests.bench._table import IS_TRUE, REPORT, Results, Row, at_least, error_row, markdown_table, under, within


def test_ratio_is_times_better_for_times_and_for_rates():
    # a time: 2 s against a 10 s baseline is 5x better
    assert Row("t", figure=2.0, baseline=10.0).ratio == pytest.approx(5.0)
    # a rate: 10 steps/s against 2 steps/s is 5x better
    assert Row("r", figure=10.0, baseline=2.0, higher_is_better=True).ratio == pytest.approx(5.0)
    # worse than baseline -> below 1
    assert Row("t", figure=20.0, baseline=10.0).ratio == pytest.approx(0.5)
    assert Row("t", figure=0.0, baseline=3.0).ratio == math.inf
    assert Row("t", figure=1.0).ratio is None


def test_at_least_target_boundary():
    assert Row("t", figure=2.0, baseline=10.0, target=at_least(5)).holds == "yes"
    assert Row("t", figure=2.01, baseline=10.0, target=at_least(5)).holds == "no"


def test_within_ten_percent_allows_a_little_worse_but_not_more():
    assert Row("t", figure=105.0, baseline=100.0, target=within(0.10)).holds == "yes"
    assert Row("t", figure=109.9, baseline=100.0, target=within(0.10)).holds == "yes"
    assert Row("t", figure=111.0, baseline=100.0, target=within(0.10)).holds == "no"
    assert Row("t", figure=50.0, baseline=100.0, target=within(0.10)).holds == "yes"   # faster is fine


def test_under_true_report_and_error_rows():
    assert Row("s", figure=19.9, target=under(20, "s")).holds == "yes"
    assert Row("s", figure=20.5, target=under(20, "s")).holds == "no"
    assert Row("same", figure=False, target=IS_TRUE).holds == "no"
    assert Row("same", figure=True, target=IS_TRUE).holds == "yes"
    assert Row("mem", figure=6.7, target=REPORT).holds == "n/a"
    e = error_row("bench_x", "something", "boom")
    assert e.holds == "error" and e.ratio is None


def test_markdown_table_shows_every_row_and_escapes_pipes():
    rows = [Row("a|b", figure=2.0, unit="s", baseline=10.0, target=at_least(5)),
            error_row("bench_x", "broken one", "ValueError: bad")]
    md = markdown_table(rows)
    lines = md.splitlines()
    assert lines[0] == "| what | figure | baseline | ratio | target | holds |"
    assert len(lines) == 4
    assert "a\\|b" in lines[2] and "5.00x" in lines[2] and lines[2].endswith("| yes |")
    assert "**error**: ValueError: bad" in lines[3] and lines[3].endswith("| error |")


def test_results_files_carry_machine_date_and_holds(tmp_path):
    m = {"cpu": "Test CPU", "cores": 2, "cores_usable": 2, "torch": "9.9", "python": "3.11", "os": "x", "cuda": None}
    res = Results(rows=[Row("r", figure=3.0, baseline=6.0, target=at_least(2))], machine=m,
                  benchmarks=[{"name": "x", "argv": [], "seconds": 1.0, "error": None, "result": {"v": math.inf}}])
    md, js = res.write(tmp_path)
    text = md.read_text()
    assert "Test CPU" in text and "torch 9.9" in text and res.date in text
    data = json.loads(js.read_text())
    assert data["rows"][0]["holds"] == "yes" and data["rows"][0]["ratio"] == pytest.approx(2.0)
    assert data["machine"]["cores"] == 2


def test_missing_key_becomes_an_error_row_naming_it():
    spec = next(s for s in bench.SPECS if s.name == "decode")
    rows = bench.rows_for(spec, {"cached_captions_per_s": 1.0, "one_by_one_captions_per_s": 1.0, "clips": 1}, None)
    assert len(rows) == 1 and rows[0].holds == "error"
    assert "uncached_captions_per_s" in rows[0].error


def test_failed_benchmark_becomes_an_error_row():
    spec = next(s for s in bench.SPECS if s.name == "store")
    rows = bench.rows_for(spec, None, "timed out after 90 s")
    assert [r.holds for r in rows] == ["error"] and "timed out" in rows[0].error


def test_missing_module_is_reported_not_skipped():
    spec = bench.Spec("ghost", "bench_does_not_exist", [], bench.rows_store, 5, "ghost")
    result, error, _ = bench.run_spec(spec, [], 5)
    assert result is None and "bench_does_not_exist.py is missing" in error


def _loader_result(stream_ms: float, stream_wait: float, memory_wait: float = 20.0, hidden: bool = True) -> dict:
    return {"batch": 32, "batch_mb": 70.0, "ram_load_s": 1.0, "codecs": ["bytes", "crc32c"],
            "stream_paths": {"vid": "direct", "er": "direct"},
            "ms_per_batch": {"memory": 20.0, "ram": 21.0, "stream": stream_ms, "stream_zarr": 300.0},
            "hidden": None if not hidden else {
                "workers": 2, "compute_ms": 150.0,
                "wait_ms": {"stream": 1.0, "memory": 1.0},                 # medians: shown, not judged
                "mean_wait_ms": {"stream": stream_wait, "memory": memory_wait}}}


def _target_row(rows):
    [t] = [x for x in rows if x.what.startswith("stage-two loading target")]
    return t


def test_loader_hidden_row_compares_whole_mean_step_times():
    rows = bench.rows_loader(_loader_result(stream_ms=400.0, stream_wait=30.0))
    ram = next(x for x in rows if "in-RAM path" in x.what)
    stream = next(x for x in rows if "streaming path (ClipReader: direct" in x.what)
    assert "bytes + crc32c" in stream.what
    assert ram.holds == "yes"                                   # 21 vs 20 ms
    assert stream.holds == "no" and stream.ratio == pytest.approx(20.0 / 400.0)
    hidden = next(x for x in rows if "DataLoader workers" in x.what)
    # mean waits, not the (equal) medians: 180 ms step vs 170 ms
    assert hidden.figure == pytest.approx(180.0) and hidden.baseline == pytest.approx(170.0)
    assert hidden.ratio == pytest.approx(170.0 / 180.0) and hidden.holds == "yes"
    fallback = next(x for x in rows if "zarr API" in x.what)
    assert fallback.holds == "n/a"                              # diagnostic only


def test_loader_target_says_which_alternative_holds():
    # streaming too slow at 0 workers but hidden behind compute -> target holds, by hiding
    t = _target_row(bench.rows_loader(_loader_result(stream_ms=400.0, stream_wait=30.0)))
    assert t.holds == "yes" and "within 10%: no" in t.detail and "hidden behind compute: yes" in t.detail
    # not hidden either: 150 + 60 = 210 ms vs 170 ms is 0.81x -> target fails, both parts say no
    t = _target_row(bench.rows_loader(_loader_result(stream_ms=400.0, stream_wait=60.0)))
    assert t.holds == "no" and "within 10%: no" in t.detail and "hidden behind compute: no" in t.detail
    # fast enough without workers: holds even when the hiding test was not run
    t = _target_row(bench.rows_loader(_loader_result(stream_ms=21.5, stream_wait=0.0, hidden=False)))
    assert t.holds == "yes" and "within 10%: yes" in t.detail and "not measured" in t.detail
    t = _target_row(bench.rows_loader(_loader_result(stream_ms=23.0, stream_wait=0.0, hidden=False)))
    assert t.holds == "no"                                      # 23 vs 20 ms is 15% slower, and nothing hidden


def test_loader_result_without_mean_waits_is_an_error_row():
    r = _loader_result(stream_ms=400.0, stream_wait=30.0)
    del r["hidden"]["mean_wait_ms"]
    spec = next(s for s in bench.SPECS if s.name == "loader")
    rows = bench.rows_for(spec, r, None)
    assert [x.holds for x in rows] == ["error"] and "mean_wait_ms" in rows[0].error


def test_store_rows_compare_shipped_store_with_npy_and_hdf5():
    lay = {name: {"files": f, "disk_mb": 67.0, "write_s": 0.5, "fsync_s": 0.1, "read_cold_mb_s": cold,
                  "read_warm_mb_s": warm}
           for name, f, cold, warm in (("zarr", 238, 500.0, 2000.0), ("zarr_api", 238, 250.0, 500.0),
                                       ("npy", 192, 1000.0, 4000.0), ("hdf5", 1, 400.0, 1000.0))}
    r = {"clips": 32, "data_mb": 66.0, "shapes": {"tokens": 784}, "codecs": ["bytes", "crc32c"], "layouts": lay}
    rows = bench.rows_store(r)
    assert len(rows) == 5
    cold_npy, cold_h5, warm_npy, warm_h5, api = rows
    assert "bytes + crc32c" in cold_npy.what and "32 MAFW-shaped clips" in cold_npy.what
    assert cold_npy.ratio == pytest.approx(0.5) and cold_h5.ratio == pytest.approx(1.25)     # MB/s: higher better
    assert warm_npy.ratio == pytest.approx(0.5) and warm_h5.ratio == pytest.approx(2.0)
    assert "238 files" in cold_npy.detail and "192 files" in cold_npy.baseline_what and "1 files" in cold_h5.baseline_what
    assert api.ratio == pytest.approx(4.0) and "zarr API" in api.what
    assert all(x.holds == "n/a" for x in rows)                  # report-only comparisons
    with pytest.raises(bench.MissingKey, match="hdf5"):
        bench.rows_store({**r, "layouts": {k: v for k, v in lay.items() if k != "hdf5"}})


def test_train_mafw_peak_memory_parsed_from_text_and_utilisation_target_from_batch_4():
    r = {"steps_per_s": 0.01, "peak_memory": "CPU peak RSS 6.72 GiB", "batch": 1, "device": "cpu",
         "flops_per_step": 600e9, "matmul_flops_per_s": 80e9, "step_s": [100.0], "load_avg_1m": 1.5, "utilisation": 0.075}
    rows = bench.rows_train_mafw(r)
    assert rows[0].figure == pytest.approx(6.72) and rows[0].unit == "GiB" and "load average 1.5" in rows[0].detail
    assert rows[2].ratio == pytest.approx(6 / 80) and rows[2].holds == "n/a"        # batch 1: reported only
    b4 = bench.rows_train_mafw({**r, "batch": 4, "steps_per_s": 0.1})[2]            # 60 of 80 GFLOP/s: 75%
    assert b4.ratio == pytest.approx(0.75) and b4.holds == "yes"
    assert bench.rows_train_mafw({**r, "batch": 4, "steps_per_s": 0.08})[2].holds == "no"   # 60%
    assert "the target's row" in b4.what and "no recompute" in b4.what
    ck = bench.rows_train_mafw({**r, "batch": 4, "steps_per_s": 0.1, "grad_checkpoint": True})[2]
    assert ck.ratio == pytest.approx(0.75) and ck.holds == "n/a"       # checkpointed: memory row, not the target's
    assert "the target is on the row without checkpointing" in ck.what


def test_useful_flops_are_counted_without_the_checkpoint_recompute(monkeypatch):
    """count_flops counts one forward + backward: a checkpointed model gives the same count as a plain one (the
    recomputed forward is not counted), and the model's setting is restored."""
    import torch
    from tests.bench import bench_train

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.grad_checkpoint = torch.nn.Linear(16, 16), False

        def forward(self, x):
            if self.grad_checkpoint:
                from torch.utils.checkpoint import checkpoint
                return checkpoint(self.lin, x, use_reentrant=False)
            return self.lin(x)

    def count(ckpt):
        net = Net()
        net.grad_checkpoint = ckpt
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        x = torch.randn(8, 16, requires_grad=True)
        n = bench_train.count_flops(net, opt, {"x": x}, None, None, torch.autocast("cpu", enabled=False))
        assert net.grad_checkpoint is ckpt
        return n

    monkeypatch.setattr(bench_train, "_step", lambda m, o, b, t, d: m(b["x"]).sum().backward())
    plain, ckpt = count(False), count(True)
    assert plain == ckpt == 3 * 2 * 8 * 16 * 16          # forward, grad of input, grad of weight


def test_memory_per_clip_is_the_slope_between_two_batches():
    a = {"steps_per_s": 0.1, "peak_memory": "CPU peak RSS 4.50 GiB", "batch": 1, "grad_checkpoint": True}
    b = {"steps_per_s": 0.1, "peak_memory": "CPU peak RSS 6.00 GiB", "batch": 4, "grad_checkpoint": True,
         "projected_gpu_gib_per_clip": 0.1}
    rows = bench.derived_rows({"train_mafw": a, "train_mafw_b4": b})
    assert rows[0].figure == pytest.approx(0.5) and rows[0].holds == "yes"           # <= 0.6 GiB per clip
    assert "batch 32 estimated at 20.0 GiB" in rows[0].detail                       # 4.5 + 0.5 * 31
    assert rows[1].figure == pytest.approx(0.1) and rows[1].holds == "n/a"
    assert bench.derived_rows({"train_mafw": a, "train_mafw_b4": {**b, "peak_memory": "CPU peak RSS 9.0 GiB"}})[0].holds == "no"
    assert bench.derived_rows({"train_mafw": a}) == []      # one point: no estimate, no invented number


def test_step_baseline_rows_never_carry_the_target_and_the_speedup_row_compares_like_with_like():
    """The glibc-heap / torch-draws run is the baseline: its utilisation row is reported, not judged; the derived
    speedup row is the loop's step over that baseline, and is absent when either side is missing or mislabelled."""
    r = {"steps_per_s": 0.1, "peak_memory": "CPU peak RSS 6.0 GiB", "batch": 4, "device": "cpu",
         "flops_per_step": 600e9, "matmul_flops_per_s": 80e9, "step_s": [10.0, 10.0], "load_avg_1m": 1.0,
         "utilisation": 0.75, "heap_kept": True, "dropout_rng": "fast"}
    base = {**r, "steps_per_s": 0.08, "heap_kept": False, "system_heap": True, "dropout_rng": "torch"}
    assert bench.rows_train_mafw(r)[2].holds == "yes"
    ckpt = bench.rows_train_mafw({**r, "grad_checkpoint": True, "heap_kept": False, "system_heap": False})
    assert "baseline" not in ckpt[0].what and "gradient checkpointing" in ckpt[0].what   # glibc heap, not a baseline
    b = bench.rows_train_mafw(base)
    assert b[2].holds == "n/a" and "baseline" in b[0].what
    assert bench.rows_train_mafw({**r, "dropout_rng": "torch"})[2].holds == "n/a"     # either switch makes it one
    rows = bench.derived_rows({"train_mafw_b4_full": r, "train_mafw_b4_base": base})
    assert len(rows) == 1 and rows[0].ratio == pytest.approx(1.25) and rows[0].holds == "n/a"
    assert bench.derived_rows({"train_mafw_b4_full": r}) == []
    assert bench.derived_rows({"train_mafw_b4_full": base, "train_mafw_b4_base": r}) == []   # sides swapped
