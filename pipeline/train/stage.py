"""Stage two: train ECPA's prompts, alignment losses and multimodal transformer on cached tensors (the stage body).

Output: cache/<dataset>/runs/<train-key>/{tokenizer.json, checkpoints/{last,best}.pt, metrics.jsonl,
loss_curves.png, val/epoch_<e>.json, config.yaml, stage.json}.

Reads top to bottom: config -> cache guard -> train (pipeline.train.loop) -> record (pipeline.chain.run_stage).
Under torchrun every rank runs `run`; rank 0 writes the outputs and the record.
"""
from __future__ import annotations

import time

from pipeline.chain.layout import store_path as store_path_of
from pipeline.chain.specs import TRAIN_VERSION as VERSION  # noqa: F401  (the version lives with the specs)
from pipeline.config import Config
from pipeline.errors import CacheMismatchError
from pipeline.progress import Reporter


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


def run(cfg: Config, plans: dict | None = None, *, force: bool = False, reporter: Reporter | None = None,
        resume: bool = True, lock=None) -> dict:
    """Train for `cfg` unless a fresh run with the same key exists (`plans`: the command's plan; planned here
    when not given). `resume` continues from the run's last checkpoint (a killed run); `force` retrains from
    scratch. Under torchrun every rank trains; rank 0 writes the outputs and the record."""
    from pipeline.chain.run_stage import run_stage
    from pipeline.data.manifest import read_manifest
    from pipeline.train import loop as training

    reporter = reporter or Reporter()
    training.check_config(cfg)
    if plans is None:
        from pipeline.chain.plan import plan, prepare

        plans = plan(cfg, prepare(cfg), upto="train")
    p, ex = plans["train"], plans["extract"]
    rank = training.dist_env()[0]
    store_path = store_path_of(ex.out_dir)

    def work() -> dict:
        t0 = time.perf_counter()
        summary = training.train(cfg, store_path=store_path, clips=read_manifest(cfg.manifest_path),
                                 run_dir=p.out_dir, progress=reporter.progress, resume=resume and not force,
                                 note=lambda text: reporter.note(f"[yellow]note:[/] {text}"))
        summary.pop("model")
        return {
            "timings": {"total_s": round(time.perf_counter() - t0, 3), "train_s": round(summary["train_s"], 3)},
            "counts": {k: summary[k] for k in ("epochs_run", "steps_per_epoch", "train_clips", "train_pairs",
                                               "val_clips")} | {"skipped_clips": len(summary["skipped_clips"])},
            "extra": {"run_dir": str(p.out_dir), "best": summary["best"], "last_val": summary["last_val"],
                      "resumed_from_epoch": summary["start_epoch"], "steps_per_s": summary["steps_per_s"],
                      "device": summary["device"], "world_size": summary["world_size"], "params": summary["params"],
                      "in_memory": summary["in_memory"], "skipped": summary["skipped_clips"][:20]},
        }

    return run_stage(p, work, cfg=cfg, parents=[(ex, "ecpa extract")],
                     guard=lambda: check_store_fits(cfg, store_path, ex), force=force, start_over=True,
                     write=rank == 0, lock=lock)
