"""Cache clean-up (`ecpa gc`): the stage outputs no current config reaches, their sizes and ages, and their removal.

A cache folder (cache/<dataset>/) holds four kinds of stage output (the DESIGN.md layout):

    features/<key>                                  extract (a feature store)
    runs/<key>                                      train
    runs/<key>/captions/<key>                       caption
    runs/<key>/captions/<key>/scores/<key>          score

The caller says which outputs to keep (the folders that `plan()` gives for every config that counts: the
shipped presets, or the one given); everything else is a candidate, listed top-most (an unreached run is one
candidate with its captions and scores inside; under a kept run, an unreached caption is its own candidate).
Manifests, sweeps, fitted demo extractors and memo files are never candidates.

Never removed, even with `--delete`: an output whose lock a live process holds, or that holds one inside it
(pipeline.chain.locks.live_locks), or that a running chain announced it reads or writes
(pipeline.chain.locks.paths_in_use). Removal takes the output's own lock first (so no process starts computing
it meanwhile), renames the folder to a hidden trash name and only then deletes it, so a half-deleted output
never looks like an unfinished one; a lease that appeared in between puts the folder back.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pipeline.chain.locks import StageBusy, hold_stage, live_locks, paths_in_use
from pipeline.records import DamagedRecordError, read_record

LEVELS: list[tuple[str, str]] = [
    ("extract", "features/*"),
    ("train", "runs/*"),
    ("caption", "runs/*/captions/*"),
    ("score", "runs/*/captions/*/scores/*"),
]
"""Stage -> where its outputs live under cache/<dataset>/."""


@dataclass
class Output:
    """One stage output folder that gc looked at."""

    path: Path
    stage: str
    bytes: int
    age_s: float
    """Seconds since it was recorded (stage.json's `created`), or since the folder last changed when it has no record."""
    state: str
    """complete, partial (no record: unfinished or interrupted) or damaged (unreadable record)."""
    in_use: str = ""
    """Who holds it, in words ('' when nobody): such an output is never removed."""

    def to_dict(self) -> dict:
        return {"path": str(self.path), "stage": self.stage, "bytes": self.bytes, "age_s": round(self.age_s, 1),
                "state": self.state, "in_use": self.in_use}


def dir_size(path: Path) -> int:
    """Bytes of every file under `path` (links not followed; files vanishing meanwhile count 0)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def cache_size(cache_dir: Path) -> int:
    """Bytes held by a whole cache folder (stores, runs, manifests, sweeps, everything)."""
    return dir_size(cache_dir) if Path(cache_dir).is_dir() else 0


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _describe(path: Path, stage: str) -> Output:
    try:
        rec = read_record(path)
        state = "complete" if rec is not None else "partial"
        created = float((rec or {}).get("created") or 0) or path.stat().st_mtime
    except DamagedRecordError:
        state, created = "damaged", path.stat().st_mtime
    return Output(path, stage, dir_size(path), max(time.time() - created, 0.0), state)


def stage_outputs(cache_dir: Path) -> list[Output]:
    """Every stage output folder of a cache (hidden names, i.e. lock files and trash, left out)."""
    out = []
    for stage, pattern in LEVELS:
        for d in sorted(Path(cache_dir).glob(pattern)):
            if d.is_dir() and not d.name.startswith("."):
                out.append(_describe(d, stage))
    return out


def holder_of(path: Path, leases: dict[Path, object]) -> str:
    """Who keeps `path` from removal, in words ('' when nobody): a live lock on it or inside it, or a running
    chain's lease on it or on anything inside it."""
    for held, h in live_locks(path).items():
        if h.pid == os.getpid() and h.host == socket.gethostname():
            continue  # gc's own lock, taken to remove it
        return f"locked by {h.text()}" + ("" if held == path else f" ({held.relative_to(path)})")
    for p, h in leases.items():
        if p == path or path in p.parents:
            return f"in use by the chain of {h.text()}"
    return ""


def unreached(cache_dir: Path, keep: Iterable[Path]) -> list[Output]:
    """The outputs of `cache_dir` not in `keep`, top-most only, each with who holds it (if anyone)."""
    keep = {Path(k) for k in keep}
    leases = paths_in_use(cache_dir)
    found: list[Output] = []
    for o in stage_outputs(cache_dir):
        if o.path in keep or any(f.path in o.path.parents for f in found):
            continue
        o.in_use = holder_of(o.path, leases)
        found.append(o)
    return found


def sweep_outputs(cache_dir: Path) -> set[Path]:
    """The outputs recorded sweeps point at (sweeps/*/sweep.json keys), so a sweep's results can be kept."""
    from pipeline.records import short

    keep: set[Path] = set()
    cache_dir = Path(cache_dir)
    for f in sorted(cache_dir.glob("sweeps/*/sweep.json")):
        try:
            points = json.loads(f.read_text()).get("points", [])
        except (OSError, ValueError):
            continue
        for pt in points:
            k = pt.get("keys") or {}
            if k.get("extract"):
                keep.add(cache_dir / "features" / short(k["extract"]))
            if k.get("train"):
                run = cache_dir / "runs" / short(k["train"])
                keep.add(run)
                if k.get("caption"):
                    keep.add(run / "captions" / short(k["caption"]))
                    if k.get("score"):
                        keep.add(run / "captions" / short(k["caption"]) / "scores" / short(k["score"]))
    return keep


def remove(outputs: list[Output], cache_dir: Path,
           report: Callable[[str], None] | None = None) -> tuple[list[Output], list[Output]]:
    """Delete `outputs` (from `unreached`) that nobody holds. Returns (removed, kept because in use)."""
    say = report or (lambda _t: None)
    removed, kept = [], []
    for o in outputs:
        if o.in_use:
            kept.append(o)
            continue
        if not o.path.exists():  # removed by another gc meanwhile
            continue
        try:
            with hold_stage(o.path, wait=False, what=f"{o.stage} output {o.path}"):
                o.in_use = holder_of(o.path, paths_in_use(cache_dir))
                if o.in_use:
                    kept.append(o)
                    continue
                trash = o.path.with_name(f".gc-{o.path.name}-{os.getpid()}")
                o.path.rename(trash)
                o.in_use = holder_of(trash, {}) or _lease_on(o.path, cache_dir)
                if o.in_use:  # a chain announced it between the look and the rename: put it back
                    trash.rename(o.path)
                    kept.append(o)
                    continue
                shutil.rmtree(trash)
        except StageBusy as e:
            o.in_use = f"locked by {e.holder.text()}"
            kept.append(o)
            continue
        say(f"removed {o.path} ({human_bytes(o.bytes)})")
        removed.append(o)
    return removed, kept


def _lease_on(path: Path, cache_dir: Path) -> str:
    for p, h in paths_in_use(cache_dir).items():
        if p == path or path in p.parents:
            return f"in use by the chain of {h.text()}"
    return ""
