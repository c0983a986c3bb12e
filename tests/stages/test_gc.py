"""`ecpa gc` and the cache size in `ecpa status`, on chains of fake stages (tests/stages/test_chain.py's fakes)."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from stages import chain
from stages.cli import app
from pipeline.chain.plan import prepare, prepare_and_plan as plan
from pipeline.chain.run import run_chain
from tests.stages.test_chain import cfg_of, demo_root, fakes, sets  # noqa: F401  (fixtures)


def _opts(sets, *more):
    return sum((["--set", s] for s in [*sets, *more]), [])


def test_gc_lists_then_deletes_what_the_given_config_does_not_reach(fakes, sets):
    _run(cfg_of(sets))                       # top_k 3 (the preset's)
    _run(cfg_of(sets, "model.top_k=4"))
    _run(cfg_of(sets, "caption.beam_size=2"))
    keep, other_k, other_beam = (plan(cfg_of(sets, *m)) for m in ([], ["model.top_k=4"], ["caption.beam_size=2"]))

    res = CliRunner().invoke(app, ["gc", "--preset", "demo", "--json", *_opts(sets)])
    assert res.exit_code == 0, res.output
    listed = {o["path"]: o for o in json.loads(res.output)["outputs"]}
    # the other top_k's run (its captions and scores inside it), and the other beam's caption under the kept run
    assert set(listed) == {str(other_k["train"].out_dir), str(other_beam["caption"].out_dir)}
    assert listed[str(other_k["train"].out_dir)]["stage"] == "train" and not any(o["removed"] for o in listed.values())
    assert other_k["score"].out_dir.exists()  # a dry run by default

    res = CliRunner().invoke(app, ["gc", "--preset", "demo", "--delete", *_opts(sets)])
    assert res.exit_code == 0, res.output
    assert "removed 2 output(s)" in " ".join(res.output.split())
    assert not other_k["train"].out_dir.exists() and not other_beam["caption"].out_dir.exists()
    assert all(p.status() == "fresh" for p in keep.values())
    assert other_k["extract"].status() == "fresh"   # shared by the kept config

    res = CliRunner().invoke(app, ["gc", "--preset", "demo", *_opts(sets)])
    assert "nothing to clean" in res.output


def test_gc_keeps_recorded_sweep_points_unless_told(fakes, sets):
    chain.run_sweep("demo", sets, ["model.top_k=2,4"], progress=False, echo=None)
    swept = plan(cfg_of(sets, "model.top_k=2"))["train"].out_dir
    res = CliRunner().invoke(app, ["gc", "--preset", "demo", "--json", *_opts(sets)])
    assert json.loads(res.output)["outputs"] == []
    res = CliRunner().invoke(app, ["gc", "--preset", "demo", "--json", "--no-keep-sweeps", *_opts(sets)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert str(swept) in {o["path"] for o in json.loads(res.output)["outputs"]}


def test_status_shows_the_cache_size(fakes, sets):
    from pipeline.chain.gc import cache_size

    _run(cfg_of(sets))
    res = CliRunner().invoke(app, ["status", "--preset", "demo", "--json", *_opts(sets)])
    size = json.loads(res.output)["cache_bytes"]
    assert size == cache_size(cfg_of(sets).cache_dir) and size > 1000
    res = CliRunner().invoke(app, ["status", "--preset", "demo", *_opts(sets)])
    assert " in all)" in res.output


def _run(cfg):
    return run_chain(cfg, prepare(cfg))
