"""The chain (`ecpa run/status/sweep/compare`): which stages run for which change.

Most tests replace the four stage `run` functions by fakes that follow the stage contract (plan ->
fresh? -> parents fresh? -> write stage.json via pipeline.records), on the real manifest of a small
generated demo dataset (8 clips), so every rule is checked exactly and fast. Which stages ran is read from the
stage records on disk (new or rewritten stage.json files), not from the chain's own report.
The last tests drive the real stages on the shared tiny demo.
"""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.config import SECTIONS, load_config
from pipeline.errors import UserError
from pipeline.records import StageRecord, read_record, short, write_record
from pipeline.chain import run as chain_lib
from pipeline.chain.plan import prepare, read_inputs
from pipeline.chain.plan import prepare_and_plan as plan
from pipeline.chain.specs import SPECS
from pipeline.progress import Reporter
from stages import chain


def run_chain(cfg, *, echo=None, **kw):
    """The chain as `ecpa run` drives it: inputs prepared once, lines to `echo`."""
    return chain_lib.run_chain(cfg, prepare(cfg), reporter=Reporter(line=echo or (lambda _t: None)), **kw)


def chain_status(cfg, **kw):
    """As `ecpa status` computes it: inputs read without writing anything."""
    return chain_lib.chain_status(cfg, read_inputs(cfg), **kw)

STAGES = ["extract", "train", "caption", "score"]


# ---- fakes ---------------------------------------------------------------------------------------

def fake_metrics(cfg) -> dict:
    """Scores a fake score stage writes: known functions of the config, so sweeps can be checked."""
    k, beam = cfg.model.top_k, cfg.caption.beam_size
    return {"Bleu_4": 0.10 + 0.01 * k, "METEOR": 0.15 + 0.002 * k, "ROUGE_L": 0.40 - 0.003 * k,
            "CIDEr": 0.30 + 0.02 * k + 0.001 * beam, "emotion_acc": 0.5 + 0.01 * (cfg.train.seed % 7)}


class Fakes:
    def __init__(self):
        self.calls: list[str] = []
        self.fail: dict[str, BaseException] = {}
        self.no_record: set[str] = set()

    def make(self, stage: str):
        def run(cfg, plans=None, *, force: bool = False, reporter=None, **_kw) -> dict:
            plans = plans if plans is not None else plan(cfg, upto=stage)
            p = plans[stage]
            if p.status() == "fresh" and not force:
                return read_record(p.out_dir)
            for parent in STAGES[: STAGES.index(stage)]:
                if plans[parent].status() != "fresh":
                    raise UserError(f"{stage}: {parent} output missing; run `ecpa {parent}` first")
            self.calls.append(stage)
            if stage in self.fail:
                raise self.fail[stage]
            p.out_dir.mkdir(parents=True, exist_ok=True)
            if stage == "score":
                # the layout pipeline/score/stage.py writes; an unknown emotion accuracy is null
                (p.out_dir / "scores.json").write_text(json.dumps(
                    {"metrics": {**fake_metrics(cfg), "Bleu_1": None}, "clips": 3, "notes": []}))
            if stage in self.no_record:
                return {}
            # the record's extra carries the metrics, as pipeline/score/stage.py writes it
            extra = {"metrics": {**fake_metrics(cfg), "Bleu_1": None}} if stage == "score" else {}
            if stage == "extract":  # the record vouches for these clips' videos (pipeline/extract/stage.py)
                extra["clips_hash"] = p.clips_hash
            rec = StageRecord(stage=stage, key=p.key, version=p.version, config=p.config, parents=p.parents,
                              timings={"total": 0.0}, extra=extra)
            write_record(p.out_dir, rec)
            return rec.to_dict()

        return run


@pytest.fixture
def fakes(monkeypatch):
    f = Fakes()
    for stage in STAGES:
        monkeypatch.setattr(f"pipeline.{stage}.stage.run", f.make(stage))
    return f


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """A small demo dataset shared by this module's tests (read-only; each test has its own cache)."""
    from pipeline.config import DataConfig
    from pipeline.data.demo import generate

    root = tmp_path_factory.mktemp("chain_demo_data")
    generate(root, n_clips=8, seed=0, video_size=DataConfig().demo_video_size)  # as ensure_manifest asks
    return root


@pytest.fixture
def sets(tmp_path, demo_root) -> list[str]:
    return [f"data.root={demo_root}", "data.demo_clips=8", f"data.cache_root={tmp_path / 'cache'}",
            "extract.random_init=true", "extract.demo_fit=false"]


@pytest.fixture
def own_data_sets(tmp_path, demo_root) -> list[str]:
    """Like `sets`, on a private copy of the dataset that a test may edit."""
    shutil.copytree(demo_root, tmp_path / "data")
    return [f"data.root={tmp_path / 'data'}", "data.demo_clips=8", f"data.cache_root={tmp_path / 'cache'}",
            "extract.random_init=true", "extract.demo_fit=false"]


def cfg_of(sets, *more):
    return load_config("demo", [*sets, *more])


def records(cache_root: Path) -> dict[Path, tuple[str, float]]:
    """Every stage.json under the cache: path -> (stage, created)."""
    out = {}
    for path in Path(cache_root).rglob("stage.json"):
        rec = json.loads(path.read_text())
        out[path] = (rec["stage"], rec["created"])
    return out


def ran_between(before: dict, after: dict) -> list[str]:
    """Stages whose record is new or rewritten, in chain order."""
    changed = {stage for path, (stage, created) in after.items() if before.get(path) != (stage, created)}
    return [s for s in STAGES if s in changed]


def run_and_see(cfg, lines: list[str] | None = None) -> tuple[list[str], chain.ChainResult]:
    root = Path(cfg.data.cache_root)
    before = records(root)
    res = run_chain(cfg, echo=(lines.append if lines is not None else None))
    ran = ran_between(before, records(root))
    assert ran == res.ran, "the chain's report disagrees with the records on disk"
    return ran, res


@pytest.fixture
def baseline(fakes, sets):
    ran, res = run_and_see(cfg_of(sets))
    assert ran == STAGES
    return res


# ---- reuse rules ---------------------------------------------------------------------------------

def test_first_run_runs_all_then_everything_is_reused(fakes, sets):
    lines: list[str] = []
    ran, res = run_and_see(cfg_of(sets), lines)
    assert ran == STAGES and fakes.calls == STAGES
    assert "no earlier output" in lines[0]
    assert res.scores == pytest.approx(fake_metrics(cfg_of(sets)))

    lines.clear()
    ran, res2 = run_and_see(cfg_of(sets), lines)
    assert ran == [] and fakes.calls == STAGES  # no stage function was even called again
    assert res2.keys == res.keys
    ex = res.out_dir("extract")
    assert any(line.startswith("[green]extract: reused") and f"features/{ex.name}" in line for line in lines)


@pytest.mark.parametrize("change, field_text", [
    ("model.top_k=4", "model.top_k 3 -> 4"),
    ("train.tau_c=0.2", "train.tau_c 0.3 -> 0.2"),
    ("train.margin=0.7", "train.margin 0.5 -> 0.7"),
    ("train.lambda_aucl=0.5", "train.lambda_aucl 1.0 -> 0.5"),
    ("train.lr=0.0001", "train.lr 0.001 -> 0.0001"),
    ("model.layers=3", "model.layers 2 -> 3"),
    ("train.seed=7", "train.seed 42 -> 7"),
    ("train.weighting=fixed", "train.weighting dwa -> fixed"),
])
def test_stage_two_fields_reuse_the_extraction(baseline, sets, change, field_text):
    lines: list[str] = []
    ran, res = run_and_see(cfg_of(sets, change), lines)
    assert ran == ["train", "caption", "score"]
    assert res.out_dir("extract") == baseline.out_dir("extract")
    train_line = next(line for line in lines if "train: run" in line)
    assert f"changed since runs/{baseline.out_dir('train').name[:8]}…: {field_text}" in train_line
    assert "upstream changed" not in train_line
    caption_line = next(line for line in lines if "caption: run" in line)
    assert "upstream changed: train key" in caption_line


@pytest.mark.parametrize("change", ["caption.beam_size=3", "caption.max_length=12", "caption.checkpoint=last",
                                    "caption.length_penalty=0.6"])
def test_decoding_fields_reuse_the_training(baseline, sets, change):
    lines: list[str] = []
    ran, res = run_and_see(cfg_of(sets, change), lines)
    assert ran == ["caption", "score"]
    assert res.out_dir("train") == baseline.out_dir("train")
    assert res.out_dir("caption").parent == baseline.out_dir("caption").parent  # under the same run
    field = change.split("=")[0]
    assert any("caption: run" in line and field in line for line in lines)


def test_score_field_reruns_only_scoring(baseline, sets):
    ran, _ = run_and_see(cfg_of(sets, "score.meteor=false"))
    assert ran == ["score"]


@pytest.mark.parametrize("change", ["extract.num_frames=16", "extract.size=96", "extract.au_frames=2",
                                    "extract.swin=swin3d_t"])
def test_frame_sampling_and_extractors_rerun_everything(baseline, sets, change):
    lines: list[str] = []
    ran, _ = run_and_see(cfg_of(sets, change), lines)
    assert ran == STAGES
    assert any("extract: run" in line and f"extract.{change.split('.')[1].split('=')[0]}" in line for line in lines)
    # downstream stages are explained by their parents, not by fields of their own
    assert any("train: run" in line and "upstream changed: extract key" in line for line in lines)


def test_other_videos_rerun_everything_in_the_same_store(fakes, own_data_sets):
    """Videos are not in the extract key (each clip's fingerprint is in the store): an added clip reruns extract
    for the same key and folder, and train on, since train follows its clips' fingerprints."""
    _, res = run_and_see(cfg_of(own_data_sets))
    lines: list[str] = []
    ran, res2 = run_and_see(cfg_of(own_data_sets, "data.demo_clips=9"), lines)  # the generator adds a clip
    assert ran == STAGES
    assert res2.keys["extract"] == res.keys["extract"] and res2.keys["train"] != res.keys["train"]
    assert any("extract: run" in line and "videos added, replaced or removed since the record" in line
               for line in lines), lines
    assert any("train: run" in line and "upstream changed:" in line and "videos key" in line for line in lines)


def test_caption_and_split_changes_retrain_but_never_reextract(fakes, own_data_sets, tmp_path):
    assert run_and_see(cfg_of(own_data_sets))[0] == STAGES
    lines: list[str] = []
    ran, _ = run_and_see(cfg_of(own_data_sets, "data.val_fraction=0.3"), lines)
    assert ran == ["train", "caption", "score"]
    train_line = next(line for line in lines if "train: run" in line)
    assert "data.val_fraction 0.1 -> 0.3" in train_line and "upstream changed: manifest key" in train_line
    # a corrected reference caption
    ann = tmp_path / "data" / "annotations.jsonl"
    rows = [json.loads(line) for line in ann.read_text().splitlines()]
    rows[0]["captions"][0] = rows[0]["captions"][0].replace("a ", "one ", 1)
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines.clear()
    ran, _ = run_and_see(cfg_of(own_data_sets), lines)
    assert ran == ["train", "caption", "score"]
    assert any("train: run" in line and line.rstrip(")").endswith("upstream changed: manifest key") for line in lines)


def _weights(dir_: Path, swin: bytes = b"swin-v1") -> list[str]:
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "er.pth").write_bytes(b"er weights")
    (dir_ / "au.pth").write_bytes(b"au weights")
    (dir_ / "swin.pth").write_bytes(swin)
    return ["extract.random_init=false", f"extract.weights_dir={dir_}", "extract.er_weights=er.pth",
            "extract.au_weights=au.pth", "extract.swin_weights=swin.pth"]


def test_weight_file_contents_rerun_everything_paths_do_not(fakes, sets, tmp_path):
    w = _weights(tmp_path / "w1")
    assert run_and_see(cfg_of(sets, *w))[0] == STAGES
    # the same files in another folder: contents are keyed, not paths
    w2 = _weights(tmp_path / "w2")
    assert run_and_see(cfg_of(sets, *w2))[0] == []
    # another Video Swin checkpoint (other bytes) in the first folder
    (tmp_path / "w1" / "swin.pth").write_bytes(b"swin-v2, retrained")
    lines: list[str] = []
    ran, _ = run_and_see(cfg_of(sets, *w), lines)
    assert ran == STAGES
    assert any("extract: run" in line and "extract.weights.swin" in line for line in lines)


def test_switching_a_value_back_reuses_the_earlier_outputs(baseline, sets):
    assert run_and_see(cfg_of(sets, "model.top_k=5"))[0] == ["train", "caption", "score"]
    assert run_and_see(cfg_of(sets, "model.top_k=5", "caption.beam_size=2"))[0] == ["caption", "score"]
    ran, res = run_and_see(cfg_of(sets))
    assert ran == [] and res.keys == baseline.keys
    assert run_and_see(cfg_of(sets, "model.top_k=5", "caption.beam_size=2"))[0] == []


KNOB_CHANGES = ["extract.batch_size=2", "extract.workers=7", "extract.device=cpu", "train.device=cpu",
                "train.num_workers=3", "train.log_every=1", "caption.batch_size=5", "caption.device=cpu",
                "caption.prefix_cache=false", "data.check_videos=false"]


@pytest.mark.parametrize("change", KNOB_CHANGES)
def test_knobs_never_invalidate(baseline, sets, change):
    ran, res = run_and_see(cfg_of(sets, change))
    assert ran == [] and res.keys == baseline.keys


def _perturbed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.5 + 0.1
    if isinstance(value, list):
        return [*value, "extra"]
    return f"{value}-other"


def test_every_knob_is_unkeyed_and_every_keyed_stage_field_is_keyed(fakes, sets):
    """Over all config fields: a knob() never moves a key; a keyed field of the extract/model/train/
    caption/score sections moves its stage's key (weight *paths* excepted: their contents are keyed)."""
    base = plan(cfg_of(sets))
    base_keys = {s: p.key for s, p in base.items()}
    owner = {"extract": "extract", "model": "train", "train": "train", "caption": "caption", "score": "score"}
    # the demo fit's switches act through the weight files' contents, as the paths do
    path_fields = {"weights_dir", "er_weights", "au_weights", "swin_weights", "demo_fit", "demo_fit_epochs"}
    for section in SECTIONS:
        for f in fields(getattr(cfg_of(sets), section)):
            if section == "data" and (f.name == "cache_root" or f.metadata.get("keyed", True)):
                continue  # keyed data fields act through the manifest (tests above); cache_root is where
            cfg = cfg_of(sets)
            setattr(getattr(cfg, section), f.name, _perturbed(getattr(getattr(cfg, section), f.name)))
            keys = {s: p.key for s, p in plan(cfg).items()}
            name = f"{section}.{f.name}"
            if not f.metadata.get("keyed", True):
                assert keys == base_keys, f"knob {name} changed a stage key"
            elif section in owner and f.name not in path_fields:
                stage = owner[section]
                assert keys[stage] != base_keys[stage], f"{name} is not in the {stage} key"
                upstream = STAGES[: STAGES.index(stage)]
                assert all(keys[s] == base_keys[s] for s in upstream), f"{name} moved an upstream key"


def test_code_version_bump_invalidates_the_stage_and_downstream(baseline, sets, monkeypatch):
    from pipeline.train import stage as train

    old, new = train.VERSION, str(int(train.VERSION) + 1)
    monkeypatch.setattr(SPECS["train"], "version", new)
    rows = {r["stage"]: r for r in chain_status(cfg_of(sets))}
    assert {s: r["status"] for s, r in rows.items()} == {
        "extract": "fresh", "train": "stale", "caption": "stale", "score": "stale"}
    assert rows["train"]["changes"] == [f"code version {old} -> {new}"]
    assert rows["caption"]["changes"] == ["upstream changed: train key"]
    ran, _ = run_and_see(cfg_of(sets))
    assert ran == ["train", "caption", "score"]


# ---- status --------------------------------------------------------------------------------------

def test_status_missing_partial_damaged_fresh(fakes, sets):
    cfg = cfg_of(sets)
    assert [r["status"] for r in chain_status(cfg)] == ["missing"] * 4
    p = plan(cfg)
    p["extract"].out_dir.mkdir(parents=True)
    (p["extract"].out_dir / "store.zarr").mkdir()
    assert [r["status"] for r in chain_status(cfg)] == ["partial", "missing", "missing", "missing"]
    (p["extract"].out_dir / "stage.json").write_text('{"stage": "extract", "ke')  # torn write
    rows = chain_status(cfg)
    assert rows[0]["status"] == "damaged" and "unreadable" in rows[0]["reason"]
    # the chain rebuilds a damaged or partial output rather than trusting it
    (p["extract"].out_dir / "stage.json").unlink()
    assert run_and_see(cfg)[0] == STAGES
    assert [r["status"] for r in chain_status(cfg)] == ["fresh"] * 4


def test_status_command_json_and_table(baseline, sets):
    runner = CliRunner()
    from stages.cli import app

    args = ["status", "--preset", "demo", *sum((["--set", s] for s in sets), [])]
    res = runner.invoke(app, [*args, "--set", "model.top_k=4", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    st = {r["stage"]: r for r in data["stages"]}
    assert [st[s]["status"] for s in STAGES] == ["fresh", "stale", "stale", "stale"]
    assert st["extract"]["short"] == baseline.out_dir("extract").name
    assert st["train"]["changes"] == ["model.top_k 3 -> 4"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0
    for s in STAGES:
        assert s in res.output
    assert res.output.count("fresh") == 4


# ---- ecpa run: summary and failures --------------------------------------------------------------

def _run_cli(sets, *extra):
    from stages.cli import app

    return CliRunner().invoke(app, ["run", "--preset", "demo", "--no-progress",
                                    *sum((["--set", s] for s in sets), []), *extra])


def test_run_command_prints_the_summary(fakes, sets):
    res = _run_cli(sets)
    assert res.exit_code == 0, res.output
    for s in STAGES:
        assert f"{s}: run" in res.output
    assert "CIDEr" in res.output and "chain done" in res.output
    res = _run_cli(sets)
    assert res.exit_code == 0 and res.output.count("reused") >= 8  # 4 lines + 4 summary rows


def test_run_command_fails_non_zero_and_keeps_finished_stages(fakes, sets):
    fakes.fail["train"] = RuntimeError("boom")
    res = _run_cli(sets)
    assert res.exit_code != 0 and isinstance(res.exception, RuntimeError)
    assert "FAILED" in res.output
    assert [s for s, _ in records(Path(cfg_of(sets).data.cache_root)).values()] == ["extract"]
    fakes.fail["train"] = UserError("cache does not fit")
    res = _run_cli(sets)
    assert res.exit_code == 2 and "cache does not fit" in res.output
    del fakes.fail["train"]
    cfg = cfg_of(sets)
    ran, _ = run_and_see(cfg)
    assert ran == ["train", "caption", "score"]  # the extraction of the failed attempt is reused


def test_a_stage_that_writes_no_record_is_a_bug_not_a_success(fakes, sets):
    fakes.no_record.add("caption")
    with pytest.raises(RuntimeError, match="no complete record"):
        run_chain(cfg_of(sets), echo=None)


def test_upto_and_force(fakes, sets):
    ran, res = run_and_see_upto(cfg_of(sets), "train")
    assert ran == ["extract", "train"] and [o.name for o in res.outcomes] == ["extract", "train"]
    root = Path(cfg_of(sets).data.cache_root)
    before = records(root)
    run_chain(cfg_of(sets), force=["train"], echo=None)
    assert ran_between(before, records(root)) == ["train", "caption", "score"]
    with pytest.raises(UserError, match="expected stage names"):
        run_chain(cfg_of(sets), force=["trian"], echo=None)


def run_and_see_upto(cfg, upto):
    root = Path(cfg.data.cache_root)
    before = records(root)
    res = run_chain(cfg, upto=upto, echo=None)
    return ran_between(before, records(root)), res


# ---- sweep ---------------------------------------------------------------------------------------

def test_sweep_over_k_shares_the_extraction(fakes, sets):
    lines: list[str] = []
    out, points = chain.run_sweep("demo", sets, ["model.top_k=1,2,3,4,5"], echo=lines.append)
    root = Path(cfg_of(sets).data.cache_root)
    stages_on_disk = [s for s, _ in records(root).values()]
    assert stages_on_disk.count("extract") == 1
    assert stages_on_disk.count("train") == stages_on_disk.count("score") == 5
    assert fakes.calls.count("extract") == 1
    assert [line for line in lines if "sweep point" in line][-1].endswith("point 5/5[/]: model.top_k=5")
    assert out == cfg_of(sets).cache_dir / "sweeps" / "model.top_k"
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["model.top_k"]) for r in rows] == [1, 2, 3, 4, 5]
    assert len({r["train_key"] for r in rows}) == 5 and len({r["caption_key"] for r in rows}) == 5
    for r in rows:
        expect = fake_metrics(cfg_of(sets, f"model.top_k={r['model.top_k']}"))
        for m, v in expect.items():
            assert float(r[m]) == pytest.approx(v)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun reuses every point
    before = records(root)
    chain.run_sweep("demo", sets, ["model.top_k=1,2,3,4,5"], echo=None)
    assert ran_between(before, records(root)) == []


def test_sweep_2d_grid_and_cli(fakes, sets):
    from stages.cli import app

    res = CliRunner().invoke(app, ["sweep", "--preset", "demo", "--no-progress", *sum((["--set", s] for s in sets), []),
                                   "model.top_k=1,2", "caption.beam_size=1,3", "--name", "kb"])
    assert res.exit_code == 0, res.output
    out = cfg_of(sets).cache_dir / "sweeps" / "kb"
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model.top_k"], r["caption.beam_size"]) for r in rows] == [("1", "1"), ("1", "3"), ("2", "1"), ("2", "3")]
    # decoding values share the training of their K
    assert rows[0]["train_key"] == rows[1]["train_key"] != rows[2]["train_key"] == rows[3]["train_key"]
    assert (out / "sweep.png").is_file() and "sweep point 4/4" in res.output
    # a bad value stops before anything runs
    before = records(Path(cfg_of(sets).data.cache_root))
    res = CliRunner().invoke(app, ["sweep", "--preset", "demo", *sum((["--set", s] for s in sets), []),
                                   "model.top_k=6,x"])
    assert res.exit_code == 2 and "model.top_k" in res.output
    assert records(Path(cfg_of(sets).data.cache_root)) == before


# ---- compare -------------------------------------------------------------------------------------

def test_compare_shows_metrics_and_only_the_differing_fields(baseline, sets):
    from stages.cli import app

    other = run_chain(cfg_of(sets, "model.top_k=4", "train.seed=7"), echo=None)
    cache = cfg_of(sets).cache_dir
    a, b = baseline.out_dir("train"), other.out_dir("train")
    res = CliRunner().invoke(app, ["compare", str(a), b.name[:8], "--cache", str(cache), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["differing"] == ["model.top_k", "train.seed"]
    assert data["runs"][0]["metrics"] == pytest.approx(fake_metrics(cfg_of(sets)))
    assert data["runs"][1]["metrics"]["CIDEr"] == pytest.approx(fake_metrics(cfg_of(sets, "model.top_k=4"))["CIDEr"])
    assert data["runs"][1]["fields"] == {"model.top_k": 4, "train.seed": 7}
    res = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert res.exit_code == 0 and "model.top_k" in res.output and "CIDEr" in res.output
    res = CliRunner().invoke(app, ["compare", "zzzz", "--cache", str(cache)])
    assert res.exit_code == 2 and "no run folder" in res.output


def test_compare_picks_the_latest_scores_of_a_run(baseline, sets):
    from pipeline.chain.compare import load_view

    later = run_chain(cfg_of(sets, "caption.beam_size=3"), echo=None)
    view = load_view(baseline.out_dir("train"))
    assert view.score_dir == later.out_dir("score")
    assert view.metrics["CIDEr"] == pytest.approx(fake_metrics(cfg_of(sets, "caption.beam_size=3"))["CIDEr"])
    pinned = load_view(baseline.out_dir("caption"))
    assert pinned.score_dir == baseline.out_dir("score")


# ---- the real stages on the shared tiny demo -----------------------------------------------------
# On top of `tiny_demo_trained` (extract + train done once per session): a decoding field of our own
# makes caption + score run; METEOR (the slow Java part) is off to keep the default suite quick.

REAL_EXTRA = ["caption.max_length=10", "score.meteor=false"]


def test_real_chain_reuses_extract_and_train_and_runs_caption_and_score(tiny_demo_trained, tiny_demo_sets):
    from stages.cli import app

    sets = [*tiny_demo_sets, *REAL_EXTRA]
    cfg = load_config("demo", sets)
    before = {r["stage"]: r["status"] for r in chain_status(cfg)}
    assert before["extract"] == before["train"] == "fresh"
    expected = [s for s in STAGES if before[s] != "fresh"]
    assert expected in (["caption", "score"], [])  # [] only when the sweep test ran first
    lines: list[str] = []
    ran, res = run_and_see(cfg, lines)
    assert ran == expected
    trained = plan(tiny_demo_trained)
    assert res.keys["train"] == trained["train"].key and res.keys["extract"] == trained["extract"].key
    assert any(line.startswith("[green]train: reused") for line in lines)
    if expected:
        assert any("caption: run" in line for line in lines) and not any("train: run" in line for line in lines)
    captions = json.loads((res.out_dir("caption") / "captions.json").read_text())
    assert captions and all(isinstance(c["caption"], str) for c in captions)
    assert {"Bleu_4", "ROUGE_L", "CIDEr"} <= set(res.scores) and "METEOR" not in res.scores
    assert all(0.0 <= res.scores[m] <= 1.0 for m in ("Bleu_4", "ROUGE_L"))
    # `ecpa run` again: everything reused, nothing rewritten, exit 0 with the summary
    root = Path(cfg.data.cache_root)
    snap = records(root)
    out = CliRunner().invoke(app, ["run", "--preset", "demo", "--no-progress", *sum((["--set", s] for s in sets), [])])
    assert out.exit_code == 0, out.output
    assert records(root) == snap
    assert all(f"{s}: reused" in out.output for s in STAGES) and "CIDEr" in out.output


def test_real_sweep_over_k_two_points(tiny_demo_trained, tiny_demo_sets):
    sets = [*tiny_demo_sets, *REAL_EXTRA]
    out, points = chain.run_sweep("demo", sets, ["model.top_k=3,2"], echo=None)
    trained = plan(tiny_demo_trained)
    k3, k2 = points
    assert k3.values == {"model.top_k": 3} and k2.values == {"model.top_k": 2}
    assert k3.keys["extract"] == k2.keys["extract"] == trained["extract"].key  # one shared extraction
    assert k3.actions["extract"] == k3.actions["train"] == "reused" == k2.actions["extract"]
    assert k3.keys["train"] == trained["train"].key and k2.actions["train"] == "run"
    assert k2.keys["train"] != k3.keys["train"]
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model.top_k"] for r in rows] == ["3", "2"]
    assert [r["train_key"] for r in rows] == [short(k3.keys["train"]), short(k2.keys["train"])]
    assert all(float(r["CIDEr"]) >= 0 and r["Bleu_4"] != "" for r in rows)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _files(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(Path(root).rglob("*"))} if Path(root).exists() else {}


def test_status_on_a_fresh_cache_writes_no_file(sets, tmp_path, demo_root):
    """`ecpa status` builds what it needs in memory: no manifest, memo, config.yaml or fitted extractors appear."""
    from stages.cli import app

    data_before = _files(demo_root)
    res = CliRunner().invoke(app, ["status", "--preset", "demo", *[a for s in sets for a in ("--set", s)], "--json"])
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in json.loads(res.stdout)["stages"]] == ["missing"] * 4
    assert _files(tmp_path / "cache") == {} and _files(demo_root) == data_before
    # the demo with no dataset yet: says what to run, still writes nothing
    bare = ["--set", f"data.root={tmp_path / 'nodata'}", "--set", f"data.cache_root={tmp_path / 'cache'}"]
    res = CliRunner().invoke(app, ["status", "--preset", "demo", *bare])
    assert res.exit_code == 0, res.output
    assert "ecpa run" in res.output and "not generated yet" in res.output
    assert not (tmp_path / "nodata").exists() and _files(tmp_path / "cache") == {}


def test_one_plan_and_one_prepare_per_command(fakes, sets, monkeypatch):
    """`ecpa run` prepares the inputs once (one manifest build, one demo-fit check) and plans the chain once;
    `ecpa status` plans once and prepares nothing."""
    import pipeline.chain.plan as plan_mod
    import pipeline.data.manifest as manifest_mod
    from stages.cli import app

    counts = {"plans": 0, "manifests": 0}
    real_stage_plan, real_ensure = plan_mod.stage_plan, manifest_mod.ensure_manifest

    def counting_stage_plan(name, *a, **k):
        counts["plans"] += name == "extract"   # every plan starts at extract
        return real_stage_plan(name, *a, **k)

    def counting_ensure(*a, **k):
        counts["manifests"] += 1
        return real_ensure(*a, **k)

    monkeypatch.setattr(plan_mod, "stage_plan", counting_stage_plan)
    monkeypatch.setattr(manifest_mod, "ensure_manifest", counting_ensure)
    args = ["--preset", "demo", *[a for s in sets for a in ("--set", s)]]
    res = CliRunner().invoke(app, ["run", *args])
    assert res.exit_code == 0, res.output
    assert fakes.calls == STAGES and counts == {"plans": 1, "manifests": 1}
    counts.update(plans=0, manifests=0)
    res = CliRunner().invoke(app, ["status", *args])
    assert res.exit_code == 0, res.output
    assert counts == {"plans": 1, "manifests": 0}
