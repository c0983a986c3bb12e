"""The chain commands: `ecpa run`, `ecpa status`, `ecpa sweep`, `ecpa compare`.

Each parses its options, prepares the chain's inputs once (`ecpa status`: reads them without writing anything),
plans once, calls the library (pipeline.chain.run, .sweep, .compare) and prints. A sweep is a grid of
ordinary chain runs (pipeline.chain.sweep runs the points, one after another or as child processes, and
writes the CSV, JSON and plot; this module resolves every point's config first), so the points share whatever
their keys share (usually the extraction), and rerunning a sweep reuses every finished point.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.chain.freshness import abbrev, fmt, rel
from pipeline.chain.layout import RECORD_NAME, sweep_dir
from pipeline.chain.plan import prepare, read_inputs
from pipeline.chain.run import ChainResult, chain_status, run_chain
from pipeline.chain.specs import STAGES
from pipeline.config import DataConfig
from pipeline.records import read_record, short
from stages._common import (CacheOpt, PresetOpt, ProgressOpt, SetOpt, echo_default, out, print_random_note,
                            random_extractors, reporter, resolve_config, sweep_reporter, user_errors)

STATUS_STYLE = {"fresh": "green", "stale": "yellow", "missing": "red", "partial": "magenta", "damaged": "bold red"}


def _scores_table(scores: dict[str, float], title: str = "scores") -> Table:
    from pipeline.chain.sweep import metric_order

    t = Table(title=title, title_justify="left")
    t.add_column("metric")
    t.add_column("x100", justify="right")
    for m in metric_order(scores):
        t.add_row(m, f"{100 * scores[m]:.2f}")
    return t


def print_summary(result: ChainResult, failed: bool = False) -> None:
    """The end summary of `ecpa run`: each stage reused/run with its time, the scores, the outputs."""
    cfg = result.cfg
    base = cfg.cache_dir if cfg is not None else Path(".")
    t = Table(title="chain" + (" (FAILED)" if failed else ""), title_justify="left")
    for col in ("stage", "action", "time", "output"):
        t.add_column(col, justify="right" if col == "time" else "left")
    for o in result.outcomes:
        style = {"reused": "green", "run": "cyan", "failed": "bold red"}[o.action]
        t.add_row(o.name, f"[{style}]{o.action}[/]", f"{o.seconds:.1f}s", escape(rel(o.out_dir, base)))
    out.print(t)
    if cfg is not None:
        print_random_note(random_extractors(cfg))
    if cfg is not None and cfg.extract.demo_fit:
        from stages.data import print_extractor_quality

        print_extractor_quality(cfg)
    cap_dir = result.out_dir("caption")
    cap = read_record(cap_dir) if cap_dir is not None and (cap_dir / RECORD_NAME).is_file() else None
    if cap and (cap.get("extra") or {}).get("max_length_from"):
        ex = cap["extra"]
        out.print(f"caption max length {ex['max_length_from']}; vocabulary: {ex.get('vocabulary')}", highlight=False)
    if result.scores:
        from stages.score import print_scores

        score_dir = result.out_dir("score")
        print_scores(read_record(score_dir), score_dir)  # model beside the constant-caption baseline
    if not failed and result.outcomes:
        out.print(f"outputs under {escape(str(base))}/:", highlight=False)
        for o in result.outcomes:
            out.print(f"  {o.name:8s} {escape(str(o.out_dir))}", highlight=False)


# ---- commands ------------------------------------------------------------------------------------

UptoOpt = Annotated[str, typer.Option("--upto", help="Last stage to run: extract, train, caption or score.")]
ForceOpt = Annotated[
    Optional[list[str]], typer.Option("--force", help="Recompute this stage even when fresh (repeatable).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="When another process is computing a stage of this "
                                       "chain: wait for it and reuse its output (default), or stop at once naming it.")]


@user_errors
def run_command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    upto: UptoOpt = "score",
    force: ForceOpt = None,
    progress: ProgressOpt = True,
    wait: WaitOpt = True,
) -> None:
    cfg = resolve_config(preset, set, cache)
    result = ChainResult(cfg=cfg)
    t0 = time.perf_counter()
    try:
        run_chain(cfg, prepare(cfg), upto=upto, force=force or (), reporter=reporter(progress), result=result,
                  wait=wait)
    except BaseException:
        if result.outcomes:
            print_summary(result, failed=True)
        raise
    print_summary(result)
    out.print(f"[green]chain done[/] in {time.perf_counter() - t0:.1f}s", highlight=False)


@user_errors
def status_command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    json_out: JsonOpt = False,
    verify: Annotated[bool, typer.Option("--verify", help="Read every chunk of the feature store and check its checksum (slow on a large store; without it only chunk files and done flags are checked).")] = False,
) -> None:
    cfg = resolve_config(preset, set, cache)
    inputs = read_inputs(cfg)   # nothing is written: no manifest, no memo, no demo data, no fitting
    rows = chain_status(cfg, inputs, verify=verify)
    todo = None if inputs is not None else (f"the {cfg.data.name} dataset is not generated yet under "
                                            f"{cfg.data.root}: `ecpa run` (or `ecpa demo-data`) makes it")
    from pipeline.chain.gc import cache_size, human_bytes

    size = cache_size(cfg.cache_dir)
    if json_out:
        print(json.dumps({"preset": cfg.preset, "cache": str(cfg.cache_dir), "cache_bytes": size, "stages": rows,
                          **({"todo": todo} if todo else {})}, indent=2))
        return
    if todo:
        out.print(f"{cfg.preset}: {escape(str(cfg.cache_dir))}: nothing planned yet; {escape(todo)}", highlight=False)
        return
    t = Table(title=f"{cfg.preset}: {cfg.cache_dir} ({human_bytes(size)} in all)", title_justify="left")
    for col in ("stage", "key", "status", "folder", "why"):
        t.add_column(col, overflow="fold", no_wrap=col in ("stage", "key", "status"))
    from pipeline.chain.freshness import clip_summary_text

    for r in rows:
        style = STATUS_STYLE.get(r["status"], "white")
        why = [r["reason"]] if r["status"] != "fresh" else []
        if r.get("clips") and r["status"] == "fresh":  # a stale extract's reason holds the counts already
            why.append(clip_summary_text(r["clips"]))
        if r["random_weights"]:
            why.append(f"RANDOM WEIGHTS: {', '.join(r['random_weights'])}")
        t.add_row(r["stage"], r["short"], f"[{style}]{r['status']}[/]", escape(abbrev(rel(Path(r["dir"]), cfg.cache_dir))),
                  escape("; ".join(why)))
    out.print(t)
    print_random_note(rows[0]["random_weights"] if rows else [])


def run_sweep(
    preset: str | None,
    sets: list[str] | None,
    grid_args: list[str],
    *,
    cache: Path | None = None,
    name: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = echo_default,
    jobs: int = 1,
    scheduler: str | None = None,
) -> tuple[Path, list]:
    """Run every point of the grid as a chain; write sweep.csv, sweep.json and sweep.png to
    cache/<ds>/sweeps/<name>/. Returns (that folder, the SweepPoints). `jobs` > 1 or a dask `scheduler`
    address: the points run side by side as `ecpa run` child processes (pipeline.chain.sweep.run_points)."""
    from pipeline.chain.sweep import default_name, expand_grid, parse_grid, run_points

    grid = parse_grid(grid_args)
    base = resolve_config(preset, sets, cache)
    # resolve every point first: a bad value stops the sweep before anything runs
    cfgs = [resolve_config(preset, list(sets or []) + [f"{k}={v}" for k, v in pt.items()], cache)
            for pt in expand_grid(grid)]
    out_dir = sweep_dir(base.cache_dir, name or default_name(grid))
    # run side by side (jobs > 1, a scheduler), a point is this command's `ecpa run` in a child process that
    # imports this checkout
    head = [sys.executable, "-m", "stages.cli", "run", "--no-progress"]
    head += (["--preset", preset] if preset else []) + (["--cache", str(cache)] if cache else [])
    repo = str(Path(__file__).resolve().parents[1])
    env = {"PYTHONPATH": os.pathsep.join(x for x in [repo, os.environ.get("PYTHONPATH", "")] if x), "COLUMNS": "160"}
    done = run_points(grid, cfgs, out_dir, sets=list(sets or []), reporter=sweep_reporter(progress, echo),
                      jobs=jobs, scheduler=scheduler, child_argv=head, child_env=env)
    return out_dir, done


@user_errors
def sweep_command(
    grid: Annotated[list[str], typer.Argument(help="section.field=v1,v2,... (several: a grid), e.g. model.top_k=1,2,3,4,5")],
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Sweep folder name (default: the swept fields).")] = None,
    progress: ProgressOpt = True,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Points run at once, each an `ecpa run` child process with one GPU (CUDA_VISIBLE_DEVICES) or an equal share of the CPU threads; logs in the sweep folder's logs/.")] = 1,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Run the points as tasks on this dask.distributed cluster (tcp://HOST:PORT); one GPU per task when the workers declare --resources GPU=1.")] = None,
) -> None:
    from pipeline.chain.sweep import metric_order

    out_dir, points = run_sweep(preset, set, grid, cache=cache, name=name, progress=progress, jobs=jobs,
                                scheduler=scheduler)
    fields_ = list(points[0].values) if points else []
    metrics = metric_order({m for p in points for m in p.metrics})
    t = Table(title=f"sweep: {out_dir}", title_justify="left")
    for col in [*fields_, "train", "ran", *metrics]:
        t.add_column(col, justify="right")
    for p in points:
        ran = "".join(s[0].upper() if p.actions.get(s) == "run" else "·" for s in STAGES)
        t.add_row(*[str(p.values[f]) for f in fields_], short(p.keys.get("train", ""))[:8], ran,
                  *[f"{100 * p.metrics[m]:.2f}" if m in p.metrics else "-" for m in metrics])
    out.print(t)
    out.print("metrics x100; ran: E extract, T train, C caption, S score (· reused)", highlight=False)
    out.print(f"[green]sweep done[/]: {escape(str(out_dir / 'sweep.png'))}, {escape(str(out_dir / 'sweep.csv'))}",
                  highlight=False)


@user_errors
def compare_command(
    runs: Annotated[list[str], typer.Argument(help="Run folders (cache/<ds>/runs/<key>, or caption/score folders) or short train keys.")],
    cache: CacheOpt = None,
    json_out: JsonOpt = False,
) -> None:
    from pipeline.chain.compare import differing_fields, evaluations, load_view, resolve_run
    from pipeline.chain.sweep import metric_order

    if cache is not None:
        caches = [Path(cache)]
    else:
        root = Path(DataConfig().cache_root)
        caches = sorted(d for d in root.glob("*") if d.is_dir())
    views = [load_view(resolve_run(a, caches), label=a) for a in runs]
    diff = differing_fields(views)
    blocks = evaluations(views)
    if json_out:
        print(json.dumps({
            "runs": [{"label": v.label, "run_dir": str(v.run_dir), "score_dir": str(v.score_dir) if v.score_dir else None,
                      "evaluation": v.evaluation.to_dict() if v.evaluation else None,
                      "metrics": v.metrics, "fields": {n: v.fields().get(n) for n in diff},
                      "other_evaluations": [{**x.evaluation.to_dict(), "score_dir": str(x.score_dir),
                                             "metrics": x.metrics} for x in v.others]} for v in views],
            "differing": diff,
        }, indent=2, default=str))
        return
    t = Table(title="compare", title_justify="left")
    t.add_column("")
    for v in views:
        t.add_column(escape(v.label), justify="right", overflow="fold")
    t.add_row("run", *[escape(short(v.train["key"])) for v in views])
    if not blocks:
        t.add_row("scored", *["[yellow]no scores[/]" for _ in views])
    for e, cells in blocks:   # one block per dataset/split/protocol: a cross or zero-shot score never joins another's rows
        t.add_section()
        t.add_row(f"[bold]on {escape(e.label)}[/]",
                  *[escape(short(rec["key"])) if rec else "[yellow]no scores[/]" for _, rec, _ in cells])
        for m in metric_order({m for _, _, ms in cells for m in ms}):
            vals = [ms.get(m) for _, _, ms in cells]
            best = max((x for x in vals if x is not None), default=None)
            t.add_row(f"{m} x100", *["-" if x is None else (f"[bold]{100 * x:.2f}[/]" if x == best and len(views) > 1
                                                             else f"{100 * x:.2f}") for x in vals])
    t.add_section()
    flats = [v.fields() for v in views]
    for n in diff:
        t.add_row(escape(n), *[escape(fmt(f.get(n, "<absent>"))) for f in flats])
    if not diff:
        t.add_row("[dim]config[/]", *["[dim]identical[/]" for _ in views])
    out.print(t)
