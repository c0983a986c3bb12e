"""Parameter sweeps: grid expansion, running the points, the results CSV, and the paper-style plot (ECPA Figs. 6-8).

A sweep is a list of `section.field=v1,v2,...` arguments; their cartesian product gives the points,
and each point is an ordinary chain run (`pipeline.chain.run.run_chain`) with those `--set` overrides, so
everything a point shares with earlier runs (usually the extraction) is reused. This module parses and
expands the grid, runs the points (`run_points`: one after another in this process, or side by side as
`ecpa run` child processes through `pipeline.chain.parallel`) and writes `sweep.csv` / `sweep.png` /
`sweep.json`; `stages/chain.py` resolves the configs, calls `run_points` and prints the table.

Plot: one panel per metric (BLEU-4, METEOR, ROUGE-L, CIDEr, emotion accuracy), the first swept
field on x, markers and lines; with more fields, one line per value of the others.
"""
from __future__ import annotations

import csv
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pipeline.config import parse_override
from pipeline.errors import UserError
from pipeline.records import atomic_write_text

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.progress import Reporter

# Metrics the plot shows, in panel order: (display name, the score keys that name it).
PLOT_METRICS: list[tuple[str, tuple[str, ...]]] = [
    ("BLEU-4", ("Bleu_4", "bleu_4", "BLEU-4", "bleu4")),
    ("METEOR", ("METEOR", "meteor")),
    ("ROUGE-L", ("ROUGE_L", "rouge_l", "ROUGE-L")),
    ("CIDEr", ("CIDEr", "cider")),
    ("Emotion acc.", ("emotion_acc", "emotion_accuracy", "emo_acc", "emotion")),
]


def metric_order(names: list[str] | set[str]) -> list[str]:
    """Metric keys in report order: the plotted ones first (paper order), then the rest sorted."""
    names = set(names)
    head = [k for _, aliases in PLOT_METRICS for k in aliases if k in names]
    return head + sorted(names - set(head))


def plotted_metrics(names: list[str] | set[str]) -> list[tuple[str, str]]:
    """(display name, score key) for each plotted metric present in `names`."""
    out = []
    for display, aliases in PLOT_METRICS:
        key = next((a for a in aliases if a in names), None)
        if key is not None:
            out.append((display, key))
    return out


# ---- grid ----------------------------------------------------------------------------------------

def parse_grid(args: list[str]) -> list[tuple[str, list[str]]]:
    """['model.top_k=1,2,3', 'train.tau_c=0.2,0.3'] -> [('model.top_k', ['1','2','3']), ('train.tau_c', [...])].

    Values are split on commas (so list-valued fields cannot be swept this way)."""
    if not args:
        raise UserError("sweep: give at least one field=values argument, e.g. model.top_k=1,2,3,4,5")
    grid: list[tuple[str, list[str]]] = []
    seen = set()
    for text in args:
        section, name, raw = parse_override(text)
        dotted = f"{section}.{name}"
        if dotted in seen:
            raise UserError(f"sweep: field {dotted} given twice; put all its values in one argument: {dotted}=a,b,c")
        seen.add(dotted)
        values = [v.strip() for v in raw.split(",")]
        if not raw.strip() or any(v == "" for v in values):
            raise UserError(f"sweep: {text!r}: expected comma-separated values, e.g. {dotted}=1,2,3")
        if len(set(values)) != len(values):
            raise UserError(f"sweep: {text!r}: a value is listed twice")
        grid.append((dotted, values))
    return grid


def expand_grid(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Cartesian product, the first field varying slowest: [{'model.top_k': '1', ...}, ...]."""
    names = [n for n, _ in grid]
    return [dict(zip(names, combo)) for combo in itertools.product(*(vals for _, vals in grid))]


def default_name(grid: list[tuple[str, list[str]]]) -> str:
    """Folder name of a sweep: the swept fields, e.g. 'model.top_k' or 'model.top_k--train.tau_c'."""
    return "--".join(re.sub(r"[^A-Za-z0-9_.-]", "_", n) for n, _ in grid)


# ---- results -------------------------------------------------------------------------------------

@dataclass
class SweepPoint:
    """One finished point of a sweep."""

    values: dict[str, Any]
    """Swept field -> typed value (as resolved by the config)."""
    keys: dict[str, str] = field(default_factory=dict)
    """Stage -> full key (extract, train, caption, score)."""
    metrics: dict[str, float] = field(default_factory=dict)
    actions: dict[str, str] = field(default_factory=dict)
    """Stage -> 'reused' or 'run'."""
    evaluation: dict[str, str] = field(default_factory=dict)
    """What the metrics are on: {'dataset', 'split'} (a sweep scores in-domain only)."""


def write_csv(path: Path, fields: list[str], points: list[SweepPoint], short_len: int = 16) -> Path:
    """One row per point: the swept fields, train key, caption key, the dataset and split the metrics are on,
    every metric."""
    metrics = metric_order({m for p in points for m in p.metrics})
    header = [*fields, "train_key", "caption_key", "dataset", "split", *metrics]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for p in points:
            w.writerow(
                [p.values[n] for n in fields]
                + [p.keys.get("train", "")[:short_len], p.keys.get("caption", "")[:short_len]]
                + [p.evaluation.get("dataset", ""), p.evaluation.get("split", "")]
                + [p.metrics.get(m, "") for m in metrics]
            )
    tmp.replace(path)
    return path


def write_json(path: Path, fields: list[str], points: list[SweepPoint], meta: dict) -> Path:
    payload = {
        **meta,
        "fields": fields,
        "points": [
            {"values": p.values, "keys": p.keys, "evaluation": p.evaluation, "metrics": p.metrics,
             "actions": p.actions} for p in points
        ],
    }
    atomic_write_text(Path(path), json.dumps(payload, indent=2, default=str) + "\n")
    return Path(path)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def x_axis(fields: list[str], points: list[SweepPoint]) -> tuple[list, bool]:
    """The distinct values of the first field in plotting order, and whether they are numeric
    (numbers sort; anything else keeps first-seen order at evenly spaced positions 0, 1, ...)."""
    xs = list(dict.fromkeys(p.values[fields[0]] for p in points))
    numeric = all(_is_number(x) for x in xs)
    return (sorted(xs) if numeric else xs), numeric


def sweep_lines(fields: list[str], points: list[SweepPoint], metric: str) -> dict[str, list[tuple[Any, float]]]:
    """The lines of one panel: label ('' for a 1-D sweep, else 'train.tau_c=0.3, ...' for the values of
    the fields after the first) -> [(x position, metric value)] sorted by x."""
    x_field, other_fields = fields[0], fields[1:]
    xs, numeric = x_axis(fields, points)
    pos = {x: (x if numeric else i) for i, x in enumerate(xs)}
    lines: dict[str, list[tuple[Any, float]]] = {}
    for p in points:
        if metric not in p.metrics:
            continue
        label = ", ".join(f"{f}={p.values[f]}" for f in other_fields)
        lines.setdefault(label, []).append((pos[p.values[x_field]], p.metrics[metric]))
    return {k: sorted(v, key=lambda xy: xy[0]) for k, v in lines.items()}


def plot_sweep(path: Path, fields: list[str], points: list[SweepPoint], title: str = "") -> Path:
    """The paper-style figure: one panel per metric (x100, as the paper prints them), the first field on
    x, one line per value of the other fields (a single line for a 1-D sweep). Non-numeric x values sit
    at evenly spaced ticks. The CSV keeps the raw values of scores.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {m for p in points for m in p.metrics}
    panels = plotted_metrics(present)
    if not panels:
        raise UserError(
            f"sweep plot: none of the plotted metrics ({', '.join(d for d, _ in PLOT_METRICS)}) "
            f"is in the scores (found: {', '.join(sorted(present)) or 'nothing'})"
        )
    x_ticks, numeric_x = x_axis(fields, points)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2), squeeze=False)
    x_field, other_fields = fields[0], fields[1:]
    for ax, (display, key) in zip(axes[0], panels):
        for label, xy in sweep_lines(fields, points, key).items():
            ax.plot([x for x, _ in xy], [100 * y for _, y in xy], marker="o", linewidth=1.5, markersize=5,
                    label=label or None)
        ax.set_title(display)
        ax.set_xlabel(x_field)
        ax.set_ylabel("x100" if ax is axes[0][0] else "")
        if not numeric_x:
            ax.set_xticks(range(len(x_ticks)), [str(x) for x in x_ticks])
        elif all(isinstance(x, int) for x in x_ticks):
            ax.set_xticks(x_ticks)
        ax.grid(True, alpha=0.3)
    if other_fields:
        axes[0][-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from pipeline.records import save_figure

    return save_figure(fig, path, dpi=120)


# ---- running the points --------------------------------------------------------------------------

def swept_values(cfg: "Config", fields: list[str]) -> dict[str, Any]:
    """The swept fields of a point as its resolved config types them: {'model.top_k': 2}."""
    return {f: getattr(getattr(cfg, f.split(".")[0]), f.split(".")[1]) for f in fields}


def run_points(grid: list[tuple[str, list[str]]], cfgs: list["Config"], out_dir: Path, *,
               sets: Sequence[str] = (), reporter: "Reporter | None" = None, jobs: int = 1,
               scheduler: str | None = None, child_argv: Sequence[str] | None = None,
               child_env: dict[str, str] | None = None) -> list[SweepPoint]:
    """Run every point of `grid` as a chain and write sweep.csv, sweep.json and sweep.png to `out_dir`.

    `cfgs`: each point's config, already resolved by the caller, in `expand_grid(grid)` order (`sets`: the
    overrides common to every point, as given, recorded in sweep.json and passed on to child processes).
    The sweep's own lines ('sweep point 2/5: ...', the parallel tally) go to `reporter.line`, as do the stage lines.

    One point after another (the default): each point is `run_chain` in this process with `reporter`, and the
    CSV/JSON are rewritten after every point, so an interrupted sweep keeps what finished.

    `jobs` > 1 or a dask `scheduler` address: the stages every point shares run here first, once (no progress
    bars), then the unfinished points run side by side as child processes (pipeline.chain.parallel), point i
    as `child_argv` (the `ecpa run` command line up to its options) + `--set` of `sets` and its values, with
    `child_env` added to its environment and its output in out_dir/logs/point-NNN-<values>.log. Failed
    points raise a UserError naming each log, after the finished ones are written."""
    from pipeline.progress import Reporter

    reporter = reporter or Reporter()
    points = expand_grid(grid)
    if len(cfgs) != len(points):
        raise ValueError(f"run_points: {len(cfgs)} configs for {len(points)} grid points")
    if jobs > 1 or scheduler:
        if child_argv is None:
            raise ValueError("run_points: jobs > 1 or a scheduler needs child_argv (the `ecpa run` command line)")
        return _run_parallel(grid, points, cfgs, out_dir, list(sets), reporter, jobs, scheduler,
                             list(child_argv), child_env)
    from rich.markup import escape

    from pipeline.chain.plan import prepare
    from pipeline.chain.run import run_chain

    fields_ = [n for n, _ in grid]
    preset = cfgs[0].preset
    done: list[SweepPoint] = []
    for i, (pt, cfg) in enumerate(zip(points, cfgs), 1):
        desc = ", ".join(f"{k}={v}" for k, v in pt.items())
        reporter.line(f"[bold]sweep point {i}/{len(points)}[/]: {escape(desc)}")
        res = run_chain(cfg, prepare(cfg), reporter=reporter)
        done.append(SweepPoint(swept_values(cfg, fields_), res.keys, res.scores,
                               {o.name: o.action for o in res.outcomes},
                               {"dataset": cfg.data.name, "split": cfg.caption.split}))
        write_csv(out_dir / "sweep.csv", fields_, done)
        write_json(out_dir / "sweep.json", fields_, done, {"preset": preset, "sets": list(sets), "grid": dict(grid)})
    plot_sweep(out_dir / "sweep.png", fields_, done, title=f"{preset}: {' x '.join(fields_)}")
    return done


def _run_parallel(grid: list[tuple[str, list[str]]], points: list[dict[str, str]], cfgs: list["Config"],
                  out_dir: Path, sets: list[str], reporter: "Reporter", jobs: int, scheduler: str | None,
                  child_argv: list[str], child_env: dict[str, str] | None) -> list[SweepPoint]:
    """`run_points` with the points as child processes, `jobs` at once or on a dask cluster."""
    import contextlib
    import dataclasses

    from rich.markup import escape

    from pipeline.chain import parallel
    from pipeline.chain.compare import read_scores
    from pipeline.chain.plan import plan, prepare
    from pipeline.chain.run import run_chain
    from pipeline.chain.specs import STAGES
    from pipeline.progress import quiet

    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give 1 or more")
    say = reporter.line
    fields_ = [n for n, _ in grid]
    inputs = [prepare(cfg) for cfg in cfgs]
    plans = [plan(cfg, inp) for cfg, inp in zip(cfgs, inputs)]
    shared = [s_ for s_ in STAGES if len({pl[s_].key for pl in plans}) == 1]
    shared = STAGES[:next((i for i, s_ in enumerate(STAGES) if s_ not in shared), len(STAGES))]
    if shared and shared != STAGES and plans[0][shared[-1]].status() != "fresh":
        say(f"[bold]sweep: shared stages first[/] ({', '.join(shared)}: the same for every point)")
        run_chain(cfgs[0], inputs[0], upto=shared[-1],
                  reporter=dataclasses.replace(reporter, progress=quiet,
                                               status=lambda _text: contextlib.nullcontext()))
    todo = []
    for i, (pt, pl) in enumerate(zip(points, plans), 1):
        label = ", ".join(f"{k}={v}" for k, v in pt.items())
        sets_ = [*sets, *(f"{k}={v}" for k, v in pt.items())]
        slug = re.sub(r"[^A-Za-z0-9_.=-]", "_", "_".join(f"{k}={v}" for k, v in pt.items()))
        todo.append(parallel.Point(i, label, child_argv + sum((["--set", x] for x in sets_), []),
                                   out_dir / "logs" / f"point-{i:03d}-{slug}.log", pl["score"].status() == "fresh"))
    actions = [{s_: ("reused" if pl[s_].status() == "fresh" or s_ in shared else "run") for s_ in STAGES} for pl in plans]
    report = lambda text: say(escape(text))  # noqa: E731
    outcomes = (parallel.run_dask(todo, scheduler, env=child_env, report=report) if scheduler
                else parallel.run_local(todo, jobs, env=child_env, report=report))
    done: list[SweepPoint] = []
    for o, cfg, pl, act in zip(outcomes, cfgs, plans, actions):
        if pl["score"].status() != "fresh":
            continue
        done.append(SweepPoint(swept_values(cfg, fields_), {s_: pl[s_].key for s_ in STAGES},
                               read_scores(pl["score"].out_dir),
                               act if o.state != "reused" else {s_: "reused" for s_ in STAGES},
                               {"dataset": cfg.data.name, "split": cfg.caption.split}))
    if done:
        write_csv(out_dir / "sweep.csv", fields_, done)
        write_json(out_dir / "sweep.json", fields_, done, {"preset": cfgs[0].preset, "sets": sets,
                                                            "grid": dict(grid)})
        plot_sweep(out_dir / "sweep.png", fields_, done, title=f"{cfgs[0].preset}: {' x '.join(fields_)}")
    failed = [o for o in outcomes if o.state == "failed"]
    if failed:
        raise UserError(f"{len(failed)} of {len(outcomes)} sweep points failed (the others are in "
                        f"{out_dir / 'sweep.csv'}); rerun the same sweep to redo only those:\n"
                        + "\n".join(f"  {o.point.label}: exit {o.returncode}, log {o.point.log}" for o in failed))
    return done
