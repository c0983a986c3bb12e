"""`ecpa gc`: list (and with --delete remove) the stage outputs no current config reaches.

    ecpa gc                                  # every shipped preset counts; a dry run: list, sizes, ages
    ecpa gc --delete                         # remove them (never what a running process holds)
    ecpa gc --preset demo --set model.top_k=4 --delete    # only this config counts, in its cache

What counts as reached: the output folders `plan()` gives for each config (every shipped preset, or the one
given by --preset/--set/--cache), plus, unless --no-keep-sweeps, every point of a recorded sweep
(sweeps/*/sweep.json). Configs are planned as `ecpa status` plans them (pipeline.chain.plan.read_inputs: nothing
written, nothing fitted); a cache whose dataset is not there is left alone, and said so. The listing and removal are
pipeline.chain.gc's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.config import Config, preset_names
from pipeline.errors import UserError
from stages._common import CacheOpt, PresetOpt, SetOpt, console, out, resolve_config, user_errors


def reached(configs: list[Config]) -> tuple[dict[Path, set[Path]], dict[Path, str]]:
    """cache folder -> the output folders its configs reach; and cache folder -> why it is left alone."""
    from pipeline.chain.plan import plan, read_inputs

    keep: dict[Path, set[Path]] = {}
    skipped: dict[Path, str] = {}
    for cfg in configs:
        cache = cfg.cache_dir
        if not cache.is_dir():
            continue
        why = ""
        try:
            inputs = read_inputs(cfg)   # planned as `ecpa status` plans: nothing written, nothing fitted
            if inputs is None:
                why = f"its dataset is not there yet under {cfg.data.root}"
            else:
                keep.setdefault(cache, set()).update(p.out_dir for p in plan(cfg, inputs).values())
        except UserError as e:
            why = str(e)
        if why:
            skipped[cache] = f"{cfg.preset}: {why}"
    return keep, skipped


def _configs(preset: str | None, sets: list[str] | None, cache: Path | None) -> list[Config]:
    if preset is not None or sets or cache is not None:
        return [resolve_config(preset, sets, cache)]
    return [resolve_config(name, None) for name in preset_names()]


@user_errors
def command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the listed outputs (default: only list them).")] = False,
    keep_sweeps: Annotated[bool, typer.Option("--keep-sweeps/--no-keep-sweeps", help="Count the points of recorded sweeps as reached.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")] = False,
) -> None:
    from pipeline.chain import gc

    keep, skipped = reached(_configs(preset, set, cache))
    rows, removed = [], []
    for cache_dir, kept in sorted(keep.items()):
        if cache_dir in skipped:
            continue
        found = gc.unreached(cache_dir, kept | (gc.sweep_outputs(cache_dir) if keep_sweeps else frozenset()))
        if delete:
            removed += gc.remove(found, cache_dir)[0]
        rows += found
    if json_out:
        print(json.dumps({"outputs": [o.to_dict() | {"removed": o in removed} for o in rows],
                          "left_alone": {str(k): v for k, v in skipped.items()}, "deleted": delete}, indent=2))
        return
    _print(rows, removed, skipped, delete)


def _print(rows, removed, skipped, delete: bool) -> None:
    from pipeline.chain.gc import human_bytes
    from pipeline.progress import duration

    for cache_dir, why in sorted(skipped.items()):
        console.print(f"[yellow]left alone[/] {escape(str(cache_dir))}: {escape(why)}", highlight=False)
    if not rows:
        out.print("[green]nothing to clean[/]: every stage output is reached by a current config", highlight=False)
        return
    t = Table(title="stage outputs no current config reaches" + ("" if delete else " (dry run)"), title_justify="left")
    for col in ("stage", "output", "size", "age", "state", ""):
        t.add_column(col, justify="right" if col in ("size", "age") else "left", overflow="fold")
    for o in rows:
        action = ("[green]removed[/]" if o in removed else f"[yellow]kept: {escape(o.in_use)}[/]" if o.in_use
                  else "" if not delete else "[red]not removed[/]")
        t.add_row(o.stage, escape(str(o.path)), human_bytes(o.bytes), duration(o.age_s), o.state, action)
    out.print(t)
    total = sum(o.bytes for o in rows if not o.in_use)
    if delete:
        out.print(f"removed {len(removed)} output(s), {human_bytes(sum(o.bytes for o in removed))}", highlight=False)
    else:
        out.print(f"{human_bytes(total)} can be freed: run again with --delete to remove them", highlight=False)
