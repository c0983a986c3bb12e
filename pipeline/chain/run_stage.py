"""The stage-record discipline, written once: every stage body runs through `run_stage`.

    reuse if fresh -> parents fresh? -> [stage lock] -> clear the stale record -> work -> record, last, atomically

A crash anywhere before the last step leaves no record, so the output counts as partial (resumable) or
missing, never as complete (pipeline.records). The stage body only computes; it never writes stage.json.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Callable, ContextManager, Iterable

from pipeline.chain.layout import CONFIG_FILE, RECORD_NAME
from pipeline.chain.plan import StagePlan
from pipeline.config import Config, save_config
from pipeline.errors import UserError
from pipeline.records import StageRecord, read_record, write_record

log = logging.getLogger(__name__)


def no_lock(out_dir: Path, key: str) -> ContextManager:
    """No stage lock: for a stage whose body takes its own (extraction's store lock refuses a second writer at
    once instead of waiting, pipeline.extract.runner.StoreLock)."""
    return contextlib.nullcontext()


def stage_lock(out_dir: Path, key: str) -> ContextManager:
    """The default stage lock (pipeline.chain.locks.hold_stage): wait while another live process computes this
    output (who, to the log), take over a dead one's lock. Re-entrant: inside `ecpa run`, whose chain already
    holds it, this is a no-op."""
    from pipeline.chain.locks import hold_stage

    return hold_stage(out_dir, key, what=f"the output {out_dir}", report=lambda text: log.warning("%s", text))


def require_fresh(parents: Iterable[tuple[StagePlan, str]]) -> None:
    """Each (parent plan, command that computes it) must be fresh, else a UserError saying what to run."""
    for parent, cmd in parents:
        status = parent.status()
        if status != "fresh":
            raise UserError(f"the {parent.name} output for this config is {status} ({parent.out_dir}); run "
                            f"`{cmd}` (or `ecpa run --upto {parent.name}`) with the same preset/--set first")


def run_stage(
    p: StagePlan,
    work: Callable[[], dict],
    *,
    cfg: Config | None = None,
    parents: Iterable[tuple[StagePlan, str]] = (),
    guard: Callable[[], None] | None = None,
    force: bool = False,
    start_over: bool = False,
    write: bool = True,
    configs: dict[str, Config] | None = None,
    lock: Callable[[Path, str], ContextManager] | None = None,
) -> dict:
    """Compute the output of plan `p` with `work()` unless a complete output of its key exists.

    `guard()` checks the inputs once the parents are fresh, before anything is cleared (a store written for
    another key, a missing Java). `work()` returns the record parts (timings, counts, extra; an optional 'summary' is handed back beside
    the record, not stored in it). `cfg` is saved as config.yaml beside the output (`configs`: more files,
    name -> config). `force` recomputes a fresh output; with `start_over` the folder is deleted first (else
    the body resumes what it finds). `write=False` (a torchrun rank other than 0) computes but writes nothing.
    Returns the record as a dict (plus 'summary' when the body gave one)."""
    if p.status() == "fresh" and not force:
        return read_record(p.out_dir)
    require_fresh(parents)
    if guard is not None:
        guard()
    # ---- STAGE LOCK: the one place a stage output is locked (pipeline.chain.locks.hold_stage)
    lock = lock or (stage_lock if write else no_lock)
    with lock(p.out_dir, p.key) as hold:
        if getattr(hold, "waited", False) and not force and p.status() == "fresh":
            return read_record(p.out_dir)   # the process waited for computed this very key
        if write:
            if force and start_over and p.out_dir.exists():
                shutil.rmtree(p.out_dir)
            (p.out_dir / RECORD_NAME).unlink(missing_ok=True)  # clear the stale record before any work
            p.out_dir.mkdir(parents=True, exist_ok=True)
            saved = {CONFIG_FILE: cfg} if cfg is not None else {}
            for name, c in {**saved, **(configs or {})}.items():
                save_config(c, p.out_dir / name)
        parts = dict(work())
        summary = parts.pop("summary", None)
        rec = StageRecord(stage=p.name, key=p.key, version=p.version, config=p.config, parents=p.parents, **parts)
        if write:
            write_record(p.out_dir, rec)  # last, atomically
    out = rec.to_dict()
    if summary is not None:
        out["summary"] = summary
    return out
