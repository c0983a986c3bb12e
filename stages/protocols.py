"""`ecpa cross` and `ecpa zeroshot`: the paper's protocols beyond in-domain testing (the library:
pipeline.chain.protocols). Parse options, prepare both datasets once, run the protocol, print."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.chain.plan import prepare
from pipeline.chain.protocols import run_protocol
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.records import short
from stages._common import SetOpt, console, out, reporter, resolve_config, user_errors


def _configs(train_preset, eval_preset, sets, train_sets, eval_sets, train_cache, eval_cache) -> tuple[Config, Config]:
    if not train_preset and train_cache is None:
        raise UserError("give --train-preset (e.g. mafw) or --train-cache")
    if not eval_preset and eval_cache is None:
        raise UserError("give --eval-preset (e.g. emvidcap) or --eval-cache")
    train_cfg = resolve_config(train_preset, list(sets or []) + list(train_sets or []), train_cache)
    eval_cfg = resolve_config(eval_preset, list(sets or []) + list(eval_sets or []), eval_cache)
    return train_cfg, eval_cfg


def _report(result: dict, protocol: str, train_cfg: Config, eval_cfg: Config) -> None:
    from stages.score import print_scores

    pp = result["plan"]
    out.print(f"[green]{protocol}[/]: run {short(pp.train.key)} ({train_cfg.data.name}) on "
                  f"{eval_cfg.data.name} split {eval_cfg.caption.split!r}: {result['caption']['counts'].get('clips')} "
                  f"clips -> {pp.caption.out_dir}", highlight=False)
    print_scores(result["score"], pp.score.out_dir, title=f"{protocol}: {train_cfg.data.name} -> {eval_cfg.data.name}",
                 skip_notes=result["compat"].notes)


TrainPresetOpt = Annotated[Optional[str], typer.Option("--train-preset", help="Preset of the training run (e.g. mafw).")]
EvalPresetOpt = Annotated[Optional[str], typer.Option("--eval-preset", help="Preset of the dataset to evaluate on.")]
TrainSetOpt = Annotated[Optional[list[str]], typer.Option("--train-set", help="Override for the training config only.")]
EvalSetOpt = Annotated[Optional[list[str]], typer.Option("--eval-set", help="Override for the evaluation config only (caption.*, score.* live here).")]
TrainCacheOpt = Annotated[Optional[Path], typer.Option("--train-cache", help="Training dataset cache folder (e.g. cache/mafw).")]
EvalCacheOpt = Annotated[Optional[Path], typer.Option("--eval-cache", help="Evaluation dataset cache folder (e.g. cache/emvidcap).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Caption and score again even when fresh outputs exist.")]


@user_errors
def cross_command(
    train_preset: TrainPresetOpt = None,
    eval_preset: EvalPresetOpt = None,
    set: SetOpt = None,
    train_set: TrainSetOpt = None,
    eval_set: EvalSetOpt = None,
    train_cache: TrainCacheOpt = None,
    eval_cache: EvalCacheOpt = None,
    force: ForceOpt = False,
) -> None:
    """Cross-dataset: `ecpa cross --train-preset mafw --eval-preset emvidcap` (and back)."""
    train_cfg, eval_cfg = _configs(train_preset, eval_preset, set, train_set, eval_set, train_cache, eval_cache)
    if train_cfg.data.name == eval_cfg.data.name:
        console.print(f"[yellow]cross:[/] both sides are {train_cfg.data.name}: this is the in-domain test "
                      "(`ecpa run` computes the same keys)", highlight=False)
    result = run_protocol(train_cfg, eval_cfg, protocol="cross", force=force, reporter=reporter(),
                          inputs=(prepare(train_cfg), prepare(eval_cfg)))
    _report(result, "cross", train_cfg, eval_cfg)


ZERO_SHOT_DATASETS = ("msvd", "msrvtt")


@user_errors
def zeroshot_command(
    train_preset: TrainPresetOpt = None,
    eval_preset: EvalPresetOpt = None,
    set: SetOpt = None,
    train_set: TrainSetOpt = None,
    eval_set: EvalSetOpt = None,
    train_cache: TrainCacheOpt = None,
    eval_cache: EvalCacheOpt = None,
    force: ForceOpt = False,
) -> None:
    """Zero-shot: `ecpa zeroshot --train-preset mafw --eval-preset msvd` (or msrvtt)."""
    train_cfg, eval_cfg = _configs(train_preset, eval_preset, set, train_set, eval_set, train_cache, eval_cache)
    if eval_cfg.data.format not in ZERO_SHOT_DATASETS:
        console.print(f"[yellow]zeroshot:[/] the paper's zero-shot targets are MSVD and MSR-VTT; "
                      f"{eval_cfg.data.name} (format {eval_cfg.data.format}) is evaluated the same way", highlight=False)
    result = run_protocol(train_cfg, eval_cfg, protocol="zeroshot", force=force, reporter=reporter(),
                          inputs=(prepare(train_cfg), prepare(eval_cfg)))
    _report(result, "zeroshot", train_cfg, eval_cfg)
