"""The chain as a library: walk extract -> train -> caption -> score for one config, reusing every stage whose key
already has a complete output, and tell the state of each stage (`chain_status`).

One plan per command: the command prepares the inputs once (pipeline.chain.plan.prepare), plans once, and
hands the plans here; every stage body gets the same plans (pipeline.chain.specs names the bodies), so the
chain adds no second way to compute anything. Why a stage runs comes from pipeline.chain.freshness.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pipeline.chain.freshness import Why, clip_summary, explain, rel, store_damage
from pipeline.chain.plan import PlanInputs, StagePlan, plan
from pipeline.chain.specs import SPECS, STAGES, random_weights
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.progress import Reporter
from pipeline.records import short


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


def check_stages(upto: str, force: Iterable[str]) -> set[str]:
    if upto not in STAGES:
        raise UserError(f"--upto {upto!r}: expected one of {', '.join(STAGES)}")
    force = set(force)
    unknown = force - set(STAGES)
    if unknown:
        raise UserError(f"--force {', '.join(sorted(unknown))}: expected stage names ({', '.join(STAGES)})")
    return force


def _why(cfg: Config, name: str, p: StagePlan) -> tuple[Why, bool]:
    """(the state, whether the stage is a damaged store to repair). A fresh extract's store is checked as
    `ecpa status` checks it (records, chunk files, done flags): a record alone never makes it 'reused'."""
    why = explain(cfg, p)
    if name == "extract" and why.status == "fresh":
        damage = store_damage(cfg, p)
        if damage is not None:
            return damage, True
    return why, False


def run_chain(cfg: Config, inputs: PlanInputs, *, upto: str = "score", force: Iterable[str] = (),
              reporter: Reporter | None = None, result: ChainResult | None = None, wait: bool = True) -> ChainResult:
    """Run the chain for `cfg` (its `inputs` prepared once by the command) up to `upto`, reusing every stage
    whose key has a complete output. Reports one line per stage (reused/run and why). `force` names stages to
    recompute even when fresh. Fills and returns `result` (pass one in to keep what finished when a stage raises).

    Each stage that has to run is computed under its output's lock (pipeline.chain.locks): when another process
    is computing the same key, this one waits for it and reuses its output (`wait=False`: a UserError naming the
    holder); a lock whose holder is dead is taken over. The outputs of the whole chain are announced as in use
    for the run's length, so `ecpa gc` leaves them alone."""
    from pipeline.chain.locks import in_use

    force = check_stages(upto, force)
    reporter = reporter or Reporter()
    result = result if result is not None else ChainResult()
    result.cfg = cfg
    plans = plan(cfg, inputs, upto=upto)
    with in_use(cfg.cache_dir, [p.out_dir for p in plans.values()]):
        for name in STAGES[: STAGES.index(upto) + 1]:
            _chain_stage(cfg, plans, name, name in force, reporter, result, wait)
    if "score" in plans:
        from pipeline.chain.compare import read_scores

        result.scores = read_scores(plans["score"].out_dir)
    return result


def _chain_stage(cfg: Config, plans: dict[str, StagePlan], name: str, forced: bool, reporter: Reporter,
                 result: ChainResult, wait: bool) -> None:
    """One stage of `run_chain`: reuse it when fresh; else take its output's lock (waiting for another process
    computing it), reuse what that process made, or compute it."""
    from rich.markup import escape

    from pipeline.chain.locks import hold_stage

    p = plans[name]
    why, repair = _why(cfg, name, p)
    where = escape(rel(p.out_dir, cfg.cache_dir))
    if why.status == "fresh" and not forced:
        result.outcomes.append(StageOutcome(name, p.key, p.out_dir, "reused", why))
        reporter.line(f"[green]{name}: reused[/] ({where})")
        return
    with hold_stage(p.out_dir, p.key, wait=wait, what=f"{name} output {rel(p.out_dir, cfg.cache_dir)}",
                    report=lambda text: reporter.line(f"[yellow]{escape(text)}[/]")) as hold:
        if hold.took_over is not None:
            reporter.line(f"[yellow]{name}: took over the lock of {escape(hold.took_over.text())}, a process that "
                          "is gone[/]")
        if hold.waited and not forced and p.status() == "fresh":   # the process waited for computed it
            result.outcomes.append(StageOutcome(name, p.key, p.out_dir, "reused", Why("fresh", detail=where)))
            reporter.line(f"[green]{name}: reused[/] ({where}, computed by the process waited for)")
            return
        reason = "forced" if why.status == "fresh" else escape(why.text(cfg.cache_dir))
        reporter.line(f"[bold cyan]{name}: run[/] ({reason}{' - doing that now' if repair else ''})")
        outcome = StageOutcome(name, p.key, p.out_dir, "failed", why)
        result.outcomes.append(outcome)
        body = SPECS[name].run_function()
        t0 = time.perf_counter()
        try:
            extra = {"verify": True} if repair else {}   # a damaged store: recompute the damaged clips
            body(cfg, plans, force=forced, reporter=reporter, **extra)
        finally:
            outcome.seconds = time.perf_counter() - t0
    if p.status() != "fresh":
        raise RuntimeError(
            f"{SPECS[name].body} returned but {p.out_dir} holds no complete record for key {short(p.key)} "
            "(a stage must write its stage.json last, for the key the plan gives)")
    outcome.action = "run"
    reporter.line(f"[green]{name}: done[/] in {outcome.seconds:.1f}s ({where})")


def chain_status(cfg: Config, inputs: PlanInputs | None, upto: str = "score", verify: bool = False) -> list[dict]:
    """One dict per stage: stage, key, short, dir, status, reason, changes, random_weights (, clips). Writes
    nothing. A fresh extraction's store is checked too (`store_damage`: chunk files and done flags; with
    `verify`, every chunk's checksum). `inputs` None (the dataset not there yet): no row; the command says
    what to run."""
    if inputs is None:
        return []
    rows = []
    random = random_weights(inputs.weights)   # every stage of this chain stands on these features
    for name, p in plan(cfg, inputs, upto=upto).items():
        why = explain(cfg, p)
        clips = None
        if name == "extract":
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
