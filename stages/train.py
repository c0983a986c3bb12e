"""`ecpa train` / `ecpa-train`: stage two on one config (the body: pipeline.train.stage). Parse options, prepare
and plan once, run the stage, print what it did. Under torchrun only rank 0 reports."""
from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from pipeline.chain.plan import plan, prepare
from pipeline.train import stage
from stages import _common
from stages._common import CacheOpt, PresetOpt, SetOpt, out, resolve_config, user_errors


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
    rec = stage.run(cfg, plan(cfg, prepare(cfg), upto="train"), force=force, resume=resume,
                    reporter=_common.reporter())
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 holds the outputs and reports them
    extra = rec.get("extra", {})
    best = extra.get("best", {})
    cider = best.get("CIDEr")
    shown = f"best val CIDEr {cider:.3f} (epoch {best.get('epoch')})" if cider is not None else \
        f"best = epoch {best.get('epoch')} (no validation)"
    out.print(f"[green]train[/] {rec['key'][:16]}: {shown}; run folder {extra.get('run_dir')}", highlight=False)
    _common.print_random_note(_common.random_extractors(cfg))
