"""Why a stage of the chain reruns (or not), and whether a complete-looking output is really intact.

Why a stage runs is told by comparison with the nearest earlier output of the same stage in the same cache
(the sibling whose recorded config slice, parents and code version differ the least, counted field by field
and parent by parent, the newest on a tie; for caption and score, only outputs on the same dataset and
split, in-domain): "changed since runs/ab12...: model.top_k 3 -> 4", "upstream changed: extract key",
"code version 1 -> 2".

A fresh extraction's store is checked too (`store_damage`: chunk files and done flags; with `full`, every
chunk's checksum), so a record alone never makes a damaged store "reused".
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.chain.layout import RECORD_NAME, SIBLINGS, store_path
from pipeline.chain.plan import StagePlan
from pipeline.config import SECTIONS, Config
from pipeline.errors import CacheMismatchError
from pipeline.records import DamagedRecordError, diff_configs, read_record

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
            where = abbrev(rel(self.nearest, cache_dir))
            return f"changed since {where}: {'; '.join(self.changes) or 'no recorded difference'}"
        return self.detail


def rel(path: Path, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


def abbrev(path: str) -> str:
    """'runs/ab12cd34ef56ab78/captions/...' -> 'runs/ab12cd34…/captions/...' (folder keys cut to 8 digits)."""
    return re.sub(r"\b([0-9a-f]{8})[0-9a-f]{8}\b", "\\1…", path)


def fmt(v: Any) -> str:
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
        f"{prefix}{name} {fmt(_get(old.get('config', {}), name))} -> {fmt(_get(p.config, name))}"
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
        return Why("fresh", detail=rel(p.out_dir, cfg.cache_dir))
    if status == "partial":
        return Why("partial", detail=f"unfinished output in {rel(p.out_dir, cfg.cache_dir)} (no {RECORD_NAME} yet); running resumes it")
    if status == "damaged":
        return Why("damaged", detail=f"{rel(p.out_dir, cfg.cache_dir)}/{RECORD_NAME} is unreadable; running rebuilds it")
    if status == "changed":  # extract: same key, other videos (pipeline.data.fingerprint)
        c = clip_summary(p)
        what = clip_summary_text(c) if c else "the videos changed"
        return Why("stale", detail=f"videos added, replaced or removed since the record ({what}); "
                                   "running extracts only those clips, in the same store")
    if status == "stale":  # a record for another key in this key's folder (16-digit prefix clash)
        return Why("damaged", detail=f"{rel(p.out_dir, cfg.cache_dir)}/{RECORD_NAME} holds another key; running rebuilds it")
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
    from pipeline.extract.integrity import check_store, clip_ids_of, describe
    from pipeline.extract.store import open_store

    rec = read_record(p.out_dir)
    if rec is None or "store" not in (rec.get("extra") or {}):
        return None
    store = store_path(p.out_dir)
    where = rel(store, cfg.cache_dir)
    repair = "run `ecpa extract --verify` to recompute the damaged clips"
    if not (store / "zarr.json").exists():
        return Why("damaged", detail=f"damaged: {where} is missing although {RECORD_NAME} says it is complete; {repair}")
    try:
        g = open_store(store)
        bad = check_store(g, store, full=full)
    except (CacheMismatchError, OSError, ValueError, KeyError) as e:
        return Why("damaged", detail=f"damaged: {where} cannot be read ({type(e).__name__}: {e}); {repair}")
    if not bad:
        return None
    ids = clip_ids_of(g)
    return Why("damaged", detail=f"damaged: {where}: {describe(bad, ids)}; {repair}")




def clip_summary(p: StagePlan) -> dict | None:
    """For `ecpa status`: the manifest clips of the extract plan `p` against its store (pipeline.extract.store.clip_states:
    fresh, stale, missing, dropped) and, from the record, the face fallback counts; None when there is no store."""
    from pipeline.extract.store import clip_states, open_store

    store = store_path(p.out_dir)
    if not (store / "zarr.json").exists():
        return None
    try:
        out: dict = clip_states(open_store(store), p.fingerprints or {})
    except (CacheMismatchError, OSError, ValueError, KeyError):
        return None  # a damaged store is reported by store_damage
    try:
        counts = (read_record(p.out_dir) or {}).get("counts", {})
    except DamagedRecordError:  # an unreadable record is reported as damaged by explain
        counts = {}
    out["failed"] = counts.get("failed", 0)
    out["fallback_clips"] = counts.get("fallback_clips", 0)
    out["fallback_frames"] = counts.get("fallback_frames", 0)
    return out


def clip_summary_text(c: dict) -> str:
    text = f"clips: {c['fresh']} fresh, {c['stale']} stale, {c['missing']} missing"
    if c.get("dropped"):
        text += f", {c['dropped']} dropped"
    if c.get("failed"):
        text += f" ({c['failed']} failed)"
    if c.get("fallback_clips"):
        text += f"; face fallback: {c['fallback_clips']} clips, {c['fallback_frames']} frames"
    return text
