"""Stage two: train ECPA's prompts, alignment losses and multimodal transformer on cached tensors.

Output: cache/<dataset>/runs/<train-key>/{tokenizer.json, checkpoints/{last,best}.pt, metrics.jsonl,
loss_curves.png, val/epoch_<e>.json, config.yaml, stage.json}.

Reads top to bottom: config -> plan and cache guard -> train (pipeline.train.loop) -> record.
Under torchrun every rank runs `run`; rank 0 writes the outputs and the record.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Annotated, Optional

import typer

from pipeline.config import Config, save_config, section_slice
from pipeline.errors import CacheMismatchError, UserError
from pipeline.records import StageRecord, read_record, write_record
from stages import _common
from stages._common import CacheOpt, PresetOpt, SetOpt, console, out, resolve_config, user_errors

VERSION = "3"
"""Bump when what training computes changes (model maths, losses, data order)."""


def config_slice(cfg: Config) -> dict:
    """Model, prompt, loss and optimiser fields, the seed, and the split/class definition."""
    model = section_slice(cfg.model)
    if model["tokenizer"]:
        # key the vocabulary by its contents, not its path: an edited vocab.txt must retrain,
        # the same file elsewhere must not
        from pathlib import Path

        from pipeline.records import file_sha256

        vocab = Path(model["tokenizer"])
        vocab = vocab / "vocab.txt" if vocab.is_dir() else vocab
        model["tokenizer"] = f"sha256:{file_sha256(vocab)}" if vocab.is_file() else f"missing:{vocab}"
    if model["init_from"]:
        # key the initial weights by the weight file's contents (a moved folder keeps the key)
        from pathlib import Path

        from pipeline.train.bert_init import WEIGHT_FILES
        from pipeline.records import file_sha256

        folder = Path(model["init_from"])
        weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
        model["init_from"] = f"sha256:{file_sha256(weights)}" if weights is not None else f"missing:{folder}"
    return {
        "model": model,
        "train": section_slice(cfg.train),
        "data": {"emotions": cfg.data.emotions, "val_fraction": cfg.data.val_fraction},
    }


def check_store_fits(cfg: Config, store_path, extract_plan) -> None:
    """Refuse a store written for another extraction: its recorded key must be the one this config plans; and
    a damaged one (pipeline.extract.integrity's cheap check)."""
    from pipeline.extract.integrity import require_intact
    from pipeline.extract.store import open_store

    g = open_store(store_path)
    attrs = dict(g.attrs)
    key = attrs.get("extract_key")
    if key is None:
        raise CacheMismatchError(f"{store_path}: the store carries no extract_key attribute, so it cannot be matched "
                                 "to this config; rerun `ecpa extract`")
    if key != extract_plan.key:
        raise CacheMismatchError(
            f"{store_path}: the store was extracted with key {key[:16]}, this config expects {extract_plan.key[:16]} "
            "(frame sampling, crops, extractors or weights differ); run `ecpa extract` with this config")
    emotions = attrs.get("emotions")
    if emotions is not None and list(emotions) != list(cfg.data.emotions):
        raise CacheMismatchError(f"{store_path}: store emotion classes {emotions} differ from data.emotions "
                                 f"{cfg.data.emotions}")
    # the record says complete; refuse a store damaged since (chunk files gone, done flags unreadable, arrays
    # missing) before training on fill values, naming the clips and `ecpa extract --verify`
    require_intact(g, store_path)


def run(cfg: Config, *, force: bool = False, progress: bool = True, resume: bool = True) -> dict:
    """Train for `cfg` unless a fresh run with the same key exists. `resume` continues from the run's
    last checkpoint (a killed run); `force` retrains from scratch."""
    from pipeline.train import loop as training
    from pipeline.data.manifest import read_manifest
    from stages.plan import plan

    training.check_config(cfg)
    plans = plan(cfg, upto="train")
    p, ex = plans["train"], plans["extract"]
    if p.status() == "fresh" and not force:
        return read_record(p.out_dir)
    if ex.status() != "fresh":
        raise UserError(f"the features for this config are {ex.status()} ({ex.out_dir}); run `ecpa extract` "
                        "(or `make extract`) with the same preset/--set first")
    store_path = ex.out_dir / "store.zarr"
    check_store_fits(cfg, store_path, ex)
    rank = training.dist_env()[0]
    if force and rank == 0 and p.out_dir.exists():
        shutil.rmtree(p.out_dir)
    if rank == 0:
        (p.out_dir / "stage.json").unlink(missing_ok=True)
        p.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, p.out_dir / "config.yaml")

    t0 = time.perf_counter()
    summary = training.train(cfg, store_path=store_path, clips=read_manifest(cfg.manifest_path), run_dir=p.out_dir,
                             progress=_common.progress if progress else False, resume=resume and not force,
                             note=lambda text: console.print(f"[yellow]note:[/] {text}", highlight=False))
    summary.pop("model")
    seconds = time.perf_counter() - t0
    rec = StageRecord(
        stage="train", key=p.key, version=VERSION, config=p.config, parents=p.parents,
        timings={"total_s": round(seconds, 3), "train_s": round(summary["train_s"], 3)},
        counts={k: summary[k] for k in ("epochs_run", "steps_per_epoch", "train_clips", "train_pairs", "val_clips")}
        | {"skipped_clips": len(summary["skipped_clips"])},
        extra={"run_dir": str(p.out_dir), "best": summary["best"], "last_val": summary["last_val"],
               "resumed_from_epoch": summary["start_epoch"], "steps_per_s": summary["steps_per_s"],
               "device": summary["device"], "world_size": summary["world_size"], "params": summary["params"],
               "in_memory": summary["in_memory"], "skipped": summary["skipped_clips"][:20]},
    )
    if rank == 0:
        write_record(p.out_dir, rec)
    return rec.to_dict()


@user_errors
def command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Retrain from scratch even when a fresh run exists.")] = False,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue a killed run from its last checkpoint.")] = True,
    ablation: Annotated[Optional[str], typer.Option("--ablation", help="A named row of Tables IV-VI (baseline, vep, vep_tep, ecpa, no_er_align, no_au_align, er_global, er_sim_ce, au_ce, au_contrastive, visual_sentence); --set overrides it.")] = None,
) -> None:
    """Stage two on a feature cache: `ecpa-train --cache cache/mafw [--set train.lr=1e-4 ...]`."""
    from pipeline.train.loop import ablation_sets

    sets = (ablation_sets(ablation) if ablation else []) + list(set or [])
    cfg = resolve_config(preset, sets, cache)
    rec = run(cfg, force=force, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 holds the outputs and reports them
    extra = rec.get("extra", {})
    best = extra.get("best", {})
    cider = best.get("CIDEr")
    shown = f"best val CIDEr {cider:.3f} (epoch {best.get('epoch')})" if cider is not None else \
        f"best = epoch {best.get('epoch')} (no validation)"
    out.print(f"[green]train[/] {rec['key'][:16]}: {shown}; run folder {extra.get('run_dir')}", highlight=False)
    _common.print_random_note(_common.random_extractors(cfg))
