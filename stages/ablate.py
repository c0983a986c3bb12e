"""`ecpa ablate`: the paper's ablation rows (Tables IV-VI) on one cache, in one command.

    ecpa ablate --preset demo                          # baseline / vep / vep_tep / ecpa, Table V, Table VI
    ecpa ablate --preset demo --rows baseline,ecpa     # some rows only
    ecpa ablate --preset demo --set train.epochs=30    # --set applies to every row

Each row is `ecpa run` with that row's `--ablation` overrides (`pipeline.train.loop.ABLATIONS`), through
`pipeline.chain.ablation.run_rows`: the rows share the extraction (and the extractor fit), and rerunning reuses
every finished row. Writes cache/<ds>/ablations/<name>/{ablation.csv, ablation.json, ablation.md,
ablation.png} and prints the table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.markup import escape
from rich.table import Table

from stages._common import (CacheOpt, PresetOpt, ProgressOpt, SetOpt, console, echo_default, resolve_config,
                            sweep_reporter, user_errors)
from pipeline.chain.layout import ABLATIONS_DIR
from pipeline.chain.specs import STAGES


def run_ablation(
    preset: str | None,
    sets: list[str] | None,
    rows: list[str] | None = None,
    *,
    cache: Path | None = None,
    name: str = "paper",
    progress: bool = True,
    echo: Callable[[str], None] | None = echo_default,
) -> tuple[Path, list]:
    """Run each ablation row as a chain; write the table files after every row. Returns (folder, points)."""
    from pipeline.chain.ablation import resolve_rows, run_rows
    from pipeline.train.loop import ablation_sets

    names = resolve_rows(rows)
    base = resolve_config(preset, sets, cache)
    # resolve every row first: a bad --set stops before anything runs (user --set wins over the row's)
    cfgs = [resolve_config(preset, ablation_sets(n) + list(sets or []), cache) for n in names]
    out_dir = base.cache_dir / ABLATIONS_DIR / name
    done = run_rows(names, cfgs, out_dir, sets=list(sets or []), reporter=sweep_reporter(progress, echo))
    return out_dir, done


@user_errors
def command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    rows: Annotated[Optional[str], typer.Option("--rows", help="Comma-separated ablation names (default: the ten rows of Tables IV-VI).")] = None,
    name: Annotated[str, typer.Option("--name", help="Folder under cache/<ds>/ablations/.")] = "paper",
    progress: ProgressOpt = True,
) -> None:
    """Tables IV-VI on one cache: one chain per ablation row, sharing the extraction; CSV + Markdown + PNG."""
    from pipeline.chain.sweep import metric_order

    wanted = [r.strip() for r in rows.split(",") if r.strip()] if rows else None
    out_dir, points = run_ablation(preset, set, wanted, cache=cache, name=name, progress=progress)
    metrics = metric_order({m for p in points for m in p.metrics})
    t = Table(title=f"ablations: {out_dir}", title_justify="left")
    for col in ["ablation", "ran", *metrics]:
        t.add_column(col, justify="right")
    for p in points:
        ran = "".join(s[0].upper() if p.actions.get(s) == "run" else "·" for s in STAGES)
        t.add_row(p.values["ablation"], ran, *[f"{100 * p.metrics[m]:.2f}" if m in p.metrics else "-" for m in metrics])
    console.print(t)
    console.print("metrics x100; ran: E extract, T train, C caption, S score (· reused)", highlight=False)
    console.print(f"[green]ablations done[/]: {escape(str(out_dir / 'ablation.md'))}, "
                  f"{escape(str(out_dir / 'ablation.png'))}, {escape(str(out_dir / 'ablation.csv'))}", highlight=False)
