"""Stage two end to end: exact resume, DDP on gloo, the cache guard, the stage on the tiny demo chain."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import CacheMismatchError, UserError
from pipeline.train import loop as training
from tests.pipeline._random_store import random_store

TINY = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64", "model.video_proj=16",
        "model.top_k=2", "model.vocab_size=60", "model.max_caption_len=12", "train.batch_size=4",
        "train.validate=false", "model.dropout=0.1"]


def tiny_cfg(*extra):
    cfg = load_config("demo", [*TINY, *extra])
    cfg.data.emotions = ["e0", "e1", "e2"]
    return cfg


def test_resume_gives_identical_weights(tmp_path):
    clips = random_store(tmp_path / "s.zarr", n=8, n_val=0)
    cfg = tiny_cfg("train.epochs=2")
    full = training.train(cfg, store_path=tmp_path / "s.zarr", clips=clips, run_dir=tmp_path / "a", progress=False)
    first = training.train(cfg, store_path=tmp_path / "s.zarr", clips=clips, run_dir=tmp_path / "b",
                           progress=False, stop_after_epoch=0)
    assert first["epochs_run"] == 1
    resumed = training.train(cfg, store_path=tmp_path / "s.zarr", clips=clips, run_dir=tmp_path / "b", progress=False)
    assert resumed["start_epoch"] == 1 and resumed["epochs_run"] == 1
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the weights moved, and a run that was not resumed but restarted would differ (dropout, order, masking)
    fresh = training.train(cfg, store_path=tmp_path / "s.zarr", clips=clips, run_dir=tmp_path / "b",
                           progress=False, resume=False, stop_after_epoch=0)
    assert not torch.equal(fresh["model"].state_dict()["video_proj.0.weight"], a["video_proj.0.weight"])
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and set(rows[0]["loss"]) == {"mlm", "er", "aucl", "sparse"}
    assert (tmp_path / "a" / "loss_curves.png").stat().st_size > 1000
    model, tok, info = training.load_trained(tmp_path / "a", "last")
    assert torch.equal(model.state_dict()["video_proj.0.weight"], a["video_proj.0.weight"]) and info["epoch"] == 1


def test_a_run_killed_after_its_last_checkpoint_is_finished_on_resume(tmp_path, monkeypatch):
    """Killed between the last epoch's checkpoint and the end of training: nothing is left to run, but the resume
    must still drop the optimiser state from last.pt (and draw the plot), as an uninterrupted run does."""
    clips = random_store(tmp_path / "s.zarr", n=8, n_val=0)
    cfg = tiny_cfg("train.epochs=1")
    with monkeypatch.context() as m:   # the kill: training ends before finishing its checkpoints
        m.setattr(training, "_finish_checkpoints", lambda *a, **k: None)
        m.setattr(training, "plot_metrics", lambda *a, **k: None)
        training.train(cfg, store_path=tmp_path / "s.zarr", clips=clips, run_dir=tmp_path / "r", progress=False)
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    assert "optimizer" in torch.load(last, map_location="cpu", weights_only=False)
    resumed = training.train(cfg, store_path=tmp_path / "s.zarr", clips=clips, run_dir=tmp_path / "r", progress=False)
    assert resumed["start_epoch"] == 1 and resumed["epochs_run"] == 0
    assert "optimizer" not in torch.load(last, map_location="cpu", weights_only=False)
    assert (tmp_path / "r" / "loss_curves.png").stat().st_size > 1000


def _ddp_worker(rank: int, world: int, port: int, root: str, clips) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = tiny_cfg("train.epochs=2", "train.device=cpu")
    out = training.train(cfg, store_path=f"{root}/s.zarr", clips=clips, run_dir=f"{root}/run", progress=False)
    torch.save({"sd": out["model"].state_dict(), "steps": out["steps_per_epoch"]}, f"{root}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_identical(tmp_path):
    import socket

    import torch.multiprocessing as mp

    clips = random_store(tmp_path / "s.zarr", n=10, n_val=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path), clips), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["steps"] == r1["steps"] == 3          # 20 pairs / 2 ranks = 10 per rank, batch 4 -> 3 steps
    for k in r0["sd"]:
        assert torch.equal(r0["sd"][k], r1["sd"][k]), k
    # rank 0 wrote the checkpoint, holding exactly the trained weights
    model, _, _ = training.load_trained(tmp_path / "run", "last")
    assert torch.equal(model.state_dict()["video_proj.0.weight"], r0["sd"]["video_proj.0.weight"])


def test_store_of_another_extraction_is_refused(tmp_path):
    from pipeline.train.stage import check_store_fits

    random_store(tmp_path / "s.zarr", n=2, attrs={"extract_key": "a" * 64, "emotions": ["e0", "e1", "e2"]})
    cfg = tiny_cfg()
    with pytest.raises(CacheMismatchError, match="expects bbbbbbbb"):
        check_store_fits(cfg, tmp_path / "s.zarr", SimpleNamespace(key="b" * 64))
    with pytest.raises(CacheMismatchError, match="emotion classes"):
        check_store_fits(load_config("demo"), tmp_path / "s.zarr", SimpleNamespace(key="a" * 64))
    check_store_fits(cfg, tmp_path / "s.zarr", SimpleNamespace(key="a" * 64))   # the matching one passes


def test_impossible_switches_refused():
    with pytest.raises(UserError, match="align_au needs"):
        training.check_config(tiny_cfg("model.use_au_prompts=false"))
    with pytest.raises(UserError, match="align_er needs"):
        training.check_config(tiny_cfg("model.use_er_prompt=false", "model.use_class_tokens=false"))
    for name in training.ABLATIONS:                   # every named ablation row is a valid config
        training.check_config(tiny_cfg(*training.ablation_sets(name)))


def test_stage_on_tiny_demo(tiny_demo_trained, tiny_demo_sets):
    from typer.testing import CliRunner

    from pipeline.train import stage as train
    from stages.cli import app
    from pipeline.chain.plan import prepare_and_plan as plan

    cfg = tiny_demo_trained
    p = plan(cfg, upto="train")["train"]
    assert p.status() == "fresh"
    rec = json.loads((p.out_dir / "stage.json").read_text())
    assert rec["counts"]["epochs_run"] == cfg.train.epochs and rec["counts"]["train_clips"] > 0
    for name in ("tokenizer.json", "checkpoints/best.pt", "checkpoints/last.pt", "metrics.jsonl",
                 "loss_curves.png", "config.yaml"):
        assert (p.out_dir / name).is_file(), name
    rows = [json.loads(line) for line in (p.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == cfg.train.epochs and all("CIDEr" in r["val"] for r in rows)
    best = max(rows, key=lambda r: (r["val"]["CIDEr"], r["epoch"]))   # a tie keeps the later epoch
    assert rec["extra"]["best"]["epoch"] == best["epoch"]
    assert len(list((p.out_dir / "val").glob("epoch_*.json"))) == cfg.train.epochs
    # a second run with the same key is reused (no retraining), also through the CLI
    assert train.run(cfg)["created"] == rec["created"]
    args = ["train"] + sum((["--set", s] for s in tiny_demo_sets), [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((p.out_dir / "stage.json").read_text())["created"] == rec["created"]
