"""The chain: `ecpa run`, `ecpa status`, `ecpa sweep`, `ecpa compare`.

`ecpa run` walks extract -> train -> caption -> score for one config. A stage whose key already has
a complete output (its `stage.json`) is reused; any other stage runs, through the stage module's
own `run(cfg, force=, progress=)` (the stage contract), so the chain adds no second way to compute
anything. Keys come from `stages.plan.plan`, the one place they are computed.

Why a stage runs is told by comparison with the nearest earlier output of the same stage in the
same cache (the sibling whose recorded config slice, parents and code version differ the least, counted
field by field and parent by parent, the newest on a tie; for caption and score, only outputs on the same
dataset and split, in-domain):
"train: run (changed since runs/ab12...: model.top_k 3 -> 4)", "upstream changed: extract key",
"code version 1 -> 2".

A sweep is a grid of ordinary chain runs (pipeline.chain.sweep does the grid, CSV and plot), so the
points share whatever their keys share (usually the extraction), and rerunning a sweep reuses
every finished point.
"""
from __future__ import annotations

import importlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Optional

import typer
from rich.markup import escape
from rich.table import Table

from pipeline.config import SECTIONS, Config, DataConfig
from pipeline.errors import UserError
from pipeline.records import DamagedRecordError, diff_configs, read_record, short
from stages._common import (CacheOpt, PresetOpt, SetOpt, console, out, print_random_note, random_extractors,
                            resolve_config, user_errors)
from stages.plan import StagePlan, plan

STAGES = ["extract", "train", "caption", "score"]

SIBLINGS = {
    "extract": "features/*",
    "train": "runs/*",
    "caption": "runs/*/captions/*",
    "score": "runs/*/captions/*/scores/*",
}
"""Where earlier outputs of each stage live, relative to cache/<dataset>/ (the DESIGN.md layout)."""

STATUS_STYLE = {"fresh": "green", "stale": "yellow", "missing": "red", "partial": "magenta", "damaged": "bold red"}


def stage_module(name: str):
    """stages.<name>, looked up at call time (so a patched `run` or `VERSION` is what the chain uses)."""
    return importlib.import_module(f"stages.{name}")


# ---- why a stage is (not) fresh ------------------------------------------------------------------

@dataclass
class Why:
    """A stage's state for one config, and the reason in words."""

    status: str
    """fresh, stale (an earlier output exists, for other inputs), missing (none at all), partial
    (this key's folder without a record: unfinished, resumable) or damaged (unreadable record)."""
    changes: list[str] = field(default_factory=list)
    """What differs from `nearest`: 'model.top_k 3 -> 4', 'upstream changed: extract key', 'code version 1 -> 2'."""
    nearest: Path | None = None
    """The earlier output of this stage compared against (stale only)."""
    detail: str = ""
    """The reason for the other states."""

    def text(self, cache_dir: Path) -> str:
        if self.status == "stale" and self.nearest is not None:
            where = _abbrev(_rel(self.nearest, cache_dir))
            return f"changed since {where}: {'; '.join(self.changes) or 'no recorded difference'}"
        return self.detail


def _rel(path: Path, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


def _abbrev(path: str) -> str:
    """'runs/ab12cd34ef56ab78/captions/...' -> 'runs/ab12cd34…/captions/...' (folder keys cut to 8 digits)."""
    return re.sub(r"\b([0-9a-f]{8})[0-9a-f]{8}\b", "\\1…", path)


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return v if len(v) <= 24 else v[:12] + "…"
    if isinstance(v, (list, dict)):
        text = json.dumps(v, default=str)
        return text if len(text) <= 40 else text[:37] + "…"
    return str(v)


def _get(d: dict, dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return "<absent>"
        cur = cur[part]
    return cur


def _field_prefix(stage: str, config: dict) -> str:
    """Slices nested by section ({'model': {...}, 'train': {...}}) name fields fully already;
    flat slices get the stage's section as prefix ('num_frames' -> 'extract.num_frames')."""
    nested = bool(config) and all(k in SECTIONS and isinstance(v, dict) for k, v in config.items())
    return "" if nested else f"{stage}."


def changes_between(stage: str, old: dict, p: StagePlan) -> list[str]:
    """The differences between an earlier record `old` and the plan `p` of the same stage, in words."""
    prefix = _field_prefix(stage, p.config)
    out = [
        f"{prefix}{name} {_fmt(_get(old.get('config', {}), name))} -> {_fmt(_get(p.config, name))}"
        for name in diff_configs(old.get("config", {}), p.config)
    ]
    old_parents = old.get("parents", {})
    moved = sorted(k for k in set(old_parents) | set(p.parents) if old_parents.get(k) != p.parents.get(k))
    if moved:
        out.append("upstream changed: " + ", ".join(f"{k} key" for k in moved))
    if str(old.get("version")) != str(p.version):
        out.append(f"code version {old.get('version')} -> {p.version}")
    return out


def earlier_outputs(cfg: Config, stage: str) -> list[tuple[Path, dict]]:
    """Every complete output of `stage` in this config's cache, with its record (damaged ones skipped:
    they cannot be compared, and `status` reports them where they matter)."""
    out = []
    for d in sorted(cfg.cache_dir.glob(SIBLINGS[stage])):
        try:
            rec = read_record(d)
        except DamagedRecordError:
            continue
        if rec is not None and rec.get("stage") == stage:
            out.append((d, rec))
    return out


def explain(cfg: Config, p: StagePlan) -> Why:
    """Fresh, or why not: compared with the nearest earlier output of the same stage."""
    status = p.status()
    if status == "fresh":
        return Why("fresh", detail=_rel(p.out_dir, cfg.cache_dir))
    if status == "partial":
        return Why("partial", detail=f"unfinished output in {_rel(p.out_dir, cfg.cache_dir)} (no stage.json yet); running resumes it")
    if status == "damaged":
        return Why("damaged", detail=f"{_rel(p.out_dir, cfg.cache_dir)}/stage.json is unreadable; running rebuilds it")
    if status == "changed":  # extract: same key, other videos (pipeline.data.fingerprint)
        from stages.extract import clip_summary, clip_summary_text

        c = clip_summary(p)
        what = clip_summary_text(c) if c else "the videos changed"
        return Why("stale", detail=f"videos added, replaced or removed since the record ({what}); "
                                   "running extracts only those clips, in the same store")
    if status == "stale":  # a record for another key in this key's folder (16-digit prefix clash)
        return Why("damaged", detail=f"{_rel(p.out_dir, cfg.cache_dir)}/stage.json holds another key; running rebuilds it")
    candidates = []
    for d, rec in earlier_outputs(cfg, p.name):
        if not same_evaluation(cfg, p, d):
            continue
        ch = changes_between(p.name, rec, p)
        candidates.append((distance(rec, p), -float(rec.get("created", 0) or 0), d, ch))
    if not candidates:
        on = f" on {cfg.data.name} {cfg.caption.split}" if p.name in ("caption", "score") else ""
        return Why("missing", detail=f"no earlier output{on}")
    _, _, nearest, ch = min(candidates, key=lambda c: (c[0], c[1]))
    return Why("stale", changes=ch, nearest=nearest)


def distance(old: dict, p: StagePlan) -> int:
    """How much an earlier record differs from the plan: differing config fields + differing parent keys
    (each counted) + 1 for another code version. Ties go to the newest output."""
    old_parents = old.get("parents", {})
    parents = sum(old_parents.get(k) != p.parents.get(k) for k in set(old_parents) | set(p.parents))
    return (len(diff_configs(old.get("config", {}), p.config)) + parents
            + int(str(old.get("version")) != str(p.version)))


def same_evaluation(cfg: Config, p: StagePlan, out_dir: Path) -> bool:
    """Caption and score outputs compare only with outputs on the same dataset and split, in-domain: a
    cross-dataset or zero-shot output of a run is never the 'nearest' of an in-domain one."""
    if p.name not in ("caption", "score"):
        return True
    from pipeline.chain.compare import evaluation_of

    cap_dir = out_dir if p.name == "caption" else out_dir.parent.parent
    try:
        cap = read_record(cap_dir)
    except DamagedRecordError:
        return False
    e = evaluation_of(cap_dir, cap)
    return e.protocol == "in-domain" and e.dataset == cfg.data.name and e.split == cfg.caption.split


def store_damage(cfg: Config, p: StagePlan, full: bool = False) -> Why | None:
    """For a fresh extract record: is the store it vouches for still intact? None when it is (or when the record
    names no store), else a 'damaged' Why naming the clips and the repair. The cheap check stats the chunk files
    of every done clip and reads the done flags; `full` also decodes every chunk with its checksum
    (pipeline.extract.integrity)."""
    from pipeline.errors import CacheMismatchError
    from pipeline.extract.integrity import check_store, clip_ids_of, describe
    from pipeline.extract.store import open_store

    rec = read_record(p.out_dir)
    if rec is None or "store" not in (rec.get("extra") or {}):
        return None
    store = p.out_dir / "store.zarr"
    where = _rel(store, cfg.cache_dir)
    repair = "run `ecpa extract --verify` to recompute the damaged clips"
    if not (store / "zarr.json").exists():
        return Why("damaged", detail=f"damaged: {where} is missing although stage.json says it is complete; {repair}")
    try:
        g = open_store(store)
        bad = check_store(g, store, full=full)
    except (CacheMismatchError, OSError, ValueError, KeyError) as e:
        return Why("damaged", detail=f"damaged: {where} cannot be read ({type(e).__name__}: {e}); {repair}")
    if not bad:
        return None
    ids = clip_ids_of(g)
    return Why("damaged", detail=f"damaged: {where}: {describe(bad, ids)}; {repair}")


# ---- the chain -----------------------------------------------------------------------------------

@dataclass
class StageOutcome:
    name: str
    key: str
    out_dir: Path
    action: str
    """reused, run, or failed."""
    why: Why
    seconds: float = 0.0


@dataclass
class ChainResult:
    cfg: Config | None = None
    outcomes: list[StageOutcome] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)

    def action(self, stage: str) -> str | None:
        return next((o.action for o in self.outcomes if o.name == stage), None)

    @property
    def ran(self) -> list[str]:
        return [o.name for o in self.outcomes if o.action == "run"]

    @property
    def keys(self) -> dict[str, str]:
        return {o.name: o.key for o in self.outcomes}

    def out_dir(self, stage: str) -> Path | None:
        return next((o.out_dir for o in self.outcomes if o.name == stage), None)


def _echo_default(text: str) -> None:
    out.print(text, highlight=False, soft_wrap=True)


def run_chain(
    cfg: Config,
    *,
    upto: str = "score",
    force: Iterable[str] = (),
    progress: bool = True,
    echo: Callable[[str], None] | None = _echo_default,
    result: ChainResult | None = None,
    wait: bool = True,
) -> ChainResult:
    """Run the chain for `cfg` up to `upto`, reusing every stage whose key has a complete output.

    Prints one line per stage (reused/run and why). `force` names stages to recompute even when
    fresh. Fills and returns `result` (pass one in to keep what finished when a stage raises).
    Each stage runs under its output's lock (pipeline.chain.locks): another process computing the same key is
    waited for and its output reused (`wait=False`: a UserError naming it)."""
    if upto not in STAGES:
        raise UserError(f"--upto {upto!r}: expected one of {', '.join(STAGES)}")
    force = set(force)
    unknown = force - set(STAGES)
    if unknown:
        raise UserError(f"--force {', '.join(sorted(unknown))}: expected stage names ({', '.join(STAGES)})")
    say = echo or (lambda _t: None)
    result = result if result is not None else ChainResult()
    result.cfg = cfg
    plans = plan(cfg, upto=upto)
    from pipeline.chain.locks import in_use

    with in_use(cfg.cache_dir, [p.out_dir for p in plans.values()]):   # `ecpa gc` leaves these alone
        for name in STAGES[: STAGES.index(upto) + 1]:
            _chain_stage(cfg, plans[name], name in force, say, result, progress, wait)
    if "score" in plans:
        from pipeline.chain.compare import read_scores

        result.scores = read_scores(plans["score"].out_dir)
    return result


def _chain_stage(cfg: Config, p: StagePlan, forced: bool, say: Callable[[str], None], result: ChainResult,
                 progress: bool, wait: bool) -> None:
    """One stage of `run_chain`: reuse it when fresh, else compute it under its output's lock."""
    from pipeline.chain.locks import hold_stage

    name = p.name
    why = explain(cfg, p)
    repair = False
    if name == "extract" and why.status == "fresh":
        # what `ecpa status` checks (records, chunk files, done flags; the checksums stay with --verify):
        # a record alone never makes a damaged store "reused"
        damage = store_damage(cfg, p)
        repair = damage is not None
        why = damage or why
    where = escape(_rel(p.out_dir, cfg.cache_dir))
    if why.status == "fresh" and not forced:
        result.outcomes.append(StageOutcome(name, p.key, p.out_dir, "reused", why))
        say(f"[green]{name}: reused[/] ({where})")
        return
    run = getattr(stage_module(name), "run", None)
    if run is None:
        raise UserError(f"stage {name} has no run() yet; it cannot be chained")
    with hold_stage(p.out_dir, p.key, wait=wait, what=f"{name} output {_rel(p.out_dir, cfg.cache_dir)}",
                    report=lambda text: say(f"[yellow]{escape(text)}[/]")) as hold:
        if hold.took_over is not None:
            say(f"[yellow]{name}: took over the lock of {escape(hold.took_over.text())}, a process that is gone[/]")
        if hold.waited and not forced and p.status() == "fresh":   # the other process computed it meanwhile
            result.outcomes.append(StageOutcome(name, p.key, p.out_dir, "reused", Why("fresh", detail=where)))
            say(f"[green]{name}: reused[/] ({where}, computed by the process waited for)")
            return
        reason = "forced" if why.status == "fresh" else escape(why.text(cfg.cache_dir))
        say(f"[bold cyan]{name}: run[/] ({reason}{' - doing that now' if repair else ''})")
        outcome = StageOutcome(name, p.key, p.out_dir, "failed", why)
        result.outcomes.append(outcome)
        t0 = time.perf_counter()
        try:
            if repair:
                run(cfg, force=forced, progress=progress, verify=True)   # recomputes the damaged clips
            else:
                run(cfg, force=forced, progress=progress)
        finally:
            outcome.seconds = time.perf_counter() - t0
    if p.status() != "fresh":
        raise RuntimeError(
            f"stages.{name}.run returned but {p.out_dir} holds no complete record for key {short(p.key)} "
            "(a stage must write its stage.json last, for the key plan() gives)"
        )
    outcome.action = "run"
    say(f"[green]{name}: done[/] in {outcome.seconds:.1f}s ({where})")

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
        t.add_row(o.name, f"[{style}]{o.action}[/]", f"{o.seconds:.1f}s", escape(_rel(o.out_dir, base)))
    out.print(t)
    if cfg is not None:
        print_random_note(random_extractors(cfg))
    if cfg is not None and cfg.extract.demo_fit:
        from stages.data import print_extractor_quality

        print_extractor_quality(cfg)
    cap_dir = result.out_dir("caption")
    cap = read_record(cap_dir) if cap_dir is not None and (cap_dir / "stage.json").is_file() else None
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
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars of the stages.")]
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
        run_chain(cfg, upto=upto, force=force or (), progress=progress, result=result, wait=wait)
    except BaseException:
        if result.outcomes:
            print_summary(result, failed=True)
        raise
    print_summary(result)
    out.print(f"[green]chain done[/] in {time.perf_counter() - t0:.1f}s", highlight=False)


def chain_status(cfg: Config, upto: str = "score", verify: bool = False) -> list[dict]:
    """One dict per stage: stage, key, short, dir, status, reason, changes. A fresh extraction's store is
    checked too (`store_damage`: chunk files and done flags; with `verify`, every chunk's checksum), so a
    damaged store shows as 'damaged' rather than trusting stage.json alone."""
    rows = []
    random = random_extractors(cfg)   # every stage of this chain stands on these features
    for name, p in plan(cfg, upto=upto).items():
        why = explain(cfg, p)
        clips = None
        if name == "extract":
            from stages.extract import clip_summary

            if why.status == "fresh":
                why = store_damage(cfg, p, full=verify) or why
            clips = clip_summary(p)
        rows.append({
            "stage": name, "key": p.key, "short": short(p.key), "dir": str(p.out_dir), "status": why.status,
            "reason": why.text(cfg.cache_dir), "changes": why.changes,
            "nearest": str(why.nearest) if why.nearest else None, "random_weights": random,
            **({"clips": clips} if clips else {}),
        })
    return rows


@user_errors
def status_command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    json_out: JsonOpt = False,
    verify: Annotated[bool, typer.Option("--verify", help="Read every chunk of the feature store and check its checksum (slow on a large store; without it only chunk files and done flags are checked).")] = False,
) -> None:
    cfg = resolve_config(preset, set, cache)
    rows = chain_status(cfg, verify=verify)
    from pipeline.chain.gc import cache_size, human_bytes

    size = cache_size(cfg.cache_dir)
    if json_out:
        print(json.dumps({"preset": cfg.preset, "cache": str(cfg.cache_dir), "cache_bytes": size, "stages": rows}, indent=2))
        return
    t = Table(title=f"{cfg.preset}: {cfg.cache_dir} ({human_bytes(size)} in all)", title_justify="left")
    for col in ("stage", "key", "status", "folder", "why"):
        t.add_column(col, overflow="fold", no_wrap=col in ("stage", "key", "status"))
    from stages.extract import clip_summary_text

    for r in rows:
        style = STATUS_STYLE.get(r["status"], "white")
        why = [r["reason"]] if r["status"] != "fresh" else []
        if r.get("clips") and r["status"] == "fresh":  # a stale extract's reason holds the counts already
            why.append(clip_summary_text(r["clips"]))
        if r["random_weights"]:
            why.append(f"RANDOM WEIGHTS: {', '.join(r['random_weights'])}")
        t.add_row(r["stage"], r["short"], f"[{style}]{r['status']}[/]", escape(_abbrev(_rel(Path(r["dir"]), cfg.cache_dir))),
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
    echo: Callable[[str], None] | None = _echo_default,
    jobs: int = 1,
    scheduler: str | None = None,
) -> tuple[Path, list]:
    """Run every point of the grid as a chain; write sweep.csv, sweep.json and sweep.png to
    cache/<ds>/sweeps/<name>/. Returns (that folder, the SweepPoints). `jobs` > 1 or a dask `scheduler`
    address: the points run side by side as `ecpa run` child processes (pipeline.chain.parallel)."""
    from pipeline.chain.sweep import SweepPoint, default_name, expand_grid, parse_grid, plot_sweep, write_csv, write_json

    say = echo or (lambda _t: None)
    grid = parse_grid(grid_args)
    fields_ = [n for n, _ in grid]
    base = resolve_config(preset, sets, cache)
    points = expand_grid(grid)
    # resolve every point first: a bad value stops the sweep before anything runs
    cfgs = [resolve_config(preset, list(sets or []) + [f"{k}={v}" for k, v in pt.items()], cache) for pt in points]
    out_dir = base.cache_dir / "sweeps" / (name or default_name(grid))
    if jobs > 1 or scheduler:
        return _sweep_parallel(preset, sets, cache, grid, points, cfgs, out_dir, jobs, scheduler, say)
    done: list[SweepPoint] = []
    for i, (pt, cfg) in enumerate(zip(points, cfgs), 1):
        desc = ", ".join(f"{k}={v}" for k, v in pt.items())
        say(f"[bold]sweep point {i}/{len(points)}[/]: {escape(desc)}")
        res = run_chain(cfg, progress=progress, echo=echo)
        values = {f: getattr(getattr(cfg, f.split(".")[0]), f.split(".")[1]) for f in fields_}
        done.append(SweepPoint(values, res.keys, res.scores, {o.name: o.action for o in res.outcomes},
                               {"dataset": cfg.data.name, "split": cfg.caption.split}))
        write_csv(out_dir / "sweep.csv", fields_, done)
        write_json(out_dir / "sweep.json", fields_, done,
                   {"preset": base.preset, "sets": list(sets or []), "grid": dict(grid)})
    plot_sweep(out_dir / "sweep.png", fields_, done, title=f"{base.preset}: {' x '.join(fields_)}")
    return out_dir, done


def _sweep_parallel(preset, sets, cache, grid, points, cfgs, out_dir: Path, jobs: int, scheduler: str | None,
                    say: Callable[[str], None]) -> tuple[Path, list]:
    """The points as `ecpa run` child processes, `jobs` at once or on a dask cluster; the stages all points
    share are run here first, once. Failed points are named with their logs (UserError) after the finished
    ones are written to sweep.csv/json/png."""
    import os
    import sys

    from pipeline.chain import parallel
    from pipeline.chain.sweep import SweepPoint, plot_sweep, write_csv, write_json

    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give 1 or more")
    fields_ = [n for n, _ in grid]
    plans = [plan(cfg) for cfg in cfgs]
    shared = [s_ for s_ in STAGES if len({pl[s_].key for pl in plans}) == 1]
    shared = STAGES[:next((i for i, s_ in enumerate(STAGES) if s_ not in shared), len(STAGES))]
    if shared and shared != STAGES and plans[0][shared[-1]].status() != "fresh":
        say(f"[bold]sweep: shared stages first[/] ({', '.join(shared)}: the same for every point)")
        run_chain(cfgs[0], upto=shared[-1], progress=False, echo=say)
    head = [sys.executable, "-m", "stages.cli", "run", "--no-progress"]
    head += (["--preset", preset] if preset else []) + (["--cache", str(cache)] if cache else [])
    todo = []
    for i, (pt, pl) in enumerate(zip(points, plans), 1):
        label = ", ".join(f"{k}={v}" for k, v in pt.items())
        sets_ = [*(sets or []), *(f"{k}={v}" for k, v in pt.items())]
        slug = re.sub(r"[^A-Za-z0-9_.=-]", "_", "_".join(f"{k}={v}" for k, v in pt.items()))
        todo.append(parallel.Point(i, label, head + sum((["--set", x] for x in sets_), []),
                                   out_dir / "logs" / f"point-{i:03d}-{slug}.log", pl["score"].status() == "fresh"))
    actions = [{s_: ("reused" if pl[s_].status() == "fresh" or s_ in shared else "run") for s_ in STAGES} for pl in plans]
    repo = str(Path(__file__).resolve().parents[1])
    env = {"PYTHONPATH": os.pathsep.join(x for x in [repo, os.environ.get("PYTHONPATH", "")] if x), "COLUMNS": "160"}
    report = lambda text: say(escape(text))  # noqa: E731
    outcomes = (parallel.run_dask(todo, scheduler, env=env, report=report) if scheduler
                else parallel.run_local(todo, jobs, env=env, report=report))
    done: list[SweepPoint] = []
    for o, cfg, pl, act in zip(outcomes, cfgs, plans, actions):
        if pl["score"].status() != "fresh":
            continue
        from pipeline.chain.compare import read_scores

        values = {f: getattr(getattr(cfg, f.split(".")[0]), f.split(".")[1]) for f in fields_}
        done.append(SweepPoint(values, {s_: pl[s_].key for s_ in STAGES}, read_scores(pl["score"].out_dir),
                               act if o.state != "reused" else {s_: "reused" for s_ in STAGES},
                               {"dataset": cfg.data.name, "split": cfg.caption.split}))
    if done:
        write_csv(out_dir / "sweep.csv", fields_, done)
        write_json(out_dir / "sweep.json", fields_, done, {"preset": cfgs[0].preset, "sets": list(sets or []),
                                                            "grid": dict(grid)})
        plot_sweep(out_dir / "sweep.png", fields_, done, title=f"{cfgs[0].preset}: {' x '.join(fields_)}")
    failed = [o for o in outcomes if o.state == "failed"]
    if failed:
        raise UserError(f"{len(failed)} of {len(outcomes)} sweep points failed (the others are in "
                        f"{out_dir / 'sweep.csv'}); rerun the same sweep to redo only those:\n"
                        + "\n".join(f"  {o.point.label}: exit {o.returncode}, log {o.point.log}" for o in failed))
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
        t.add_row(escape(n), *[escape(_fmt(f.get(n, "<absent>"))) for f in flats])
    if not diff:
        t.add_row("[dim]config[/]", *["[dim]identical[/]" for _ in views])
    out.print(t)
