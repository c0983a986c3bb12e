"""`ecpa score`: score the captions this config decodes (the body: pipeline.score.stage). Parse options, prepare
and plan once, run the stage, print the table beside the baselines."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.chain.layout import PER_CLIP_FILE, SCORES_FILE
from pipeline.chain.plan import plan, prepare
from pipeline.score import stage
from stages._common import (CacheOpt, PresetOpt, SetOpt, console, out, print_random_note, random_extractors,
                            reporter, resolve_config, user_errors)


def print_scores(rec: dict, out_dir: Path, title: str = "scores", skip_notes: list[str] = ()) -> None:
    """The small summary table: the paper's four metrics (x100, as papers print them), BLEU-1..3, emotion acc."""
    from rich.table import Table

    metrics = rec.get("extra", {}).get("metrics", {})
    baseline = rec.get("extra", {}).get("baseline") or {}
    base = baseline.get("metrics", {})
    t = Table(title=f"{title} ({rec.get('counts', {}).get('clips')} clips, x100)", title_justify="left")
    t.add_column("metric")
    t.add_column("model", justify="right")
    if base:
        t.add_column("constant caption / majority emotion", justify="right")
    configured = rec.get("config", {}).get("metrics", [])
    order = list(dict.fromkeys([*configured, "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "Bleu_1", "Bleu_2", "Bleu_3",
                                "emotion_acc", "Acc_sw", "Acc_c", "BFS", "CFS"]))
    for m in order:
        if m in metrics:
            cells = [metrics[m]] + ([base.get(m)] if base else [])
            t.add_row(m, *("n/a" if v is None else f"{100 * v:.2f}" for v in cells))
    out.print(t)
    lengths = rec.get("extra", {}).get("lengths") or {}
    if lengths.get("mean_generated_words") is not None:
        unended = lengths.get("unended_share")
        out.print(f"caption length: {lengths['mean_generated_words']:.1f} words generated vs "
                  f"{lengths['mean_reference_words']:.1f} in the references (ratio {lengths['length_ratio']:.2f}); "
                  + ("ended with [SEP]: n/a" if unended is None else f"ended with [SEP]: {100 * (1 - unended):.1f}%"),
                  highlight=False)
    print_random_note(random_extractors(caption_dir=Path(out_dir).parent.parent))
    if base:
        out.print(f"baseline caption (most frequent in training): \"{baseline['caption']}\"; "
                      f"majority emotion: {baseline['emotion']}; chance: {100 * baseline['emotion_chance']:.1f}",
                      highlight=False)
    for note in rec.get("extra", {}).get("notes", []):
        if note not in skip_notes:  # said once: the protocols print their own notes first
            console.print(f"[yellow]note:[/] {note}", highlight=False)
    out.print(f"scores: {Path(out_dir) / SCORES_FILE}; per clip: {Path(out_dir) / PER_CLIP_FILE}", highlight=False)


@user_errors
def command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Score again even when a fresh output exists.")] = False,
) -> None:
    """Score the captions this config decodes: BLEU-1..4, METEOR, ROUGE-L, CIDEr, emotion accuracy."""
    cfg = resolve_config(preset, set, cache)
    plans = plan(cfg, prepare(cfg), upto="score")
    rec = stage.run(cfg, plans, force=force, reporter=reporter())
    print_scores(rec, plans["score"].out_dir)
