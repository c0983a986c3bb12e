"""Side-by-side view of several training runs: metrics and the config fields that differ.

A "run" is a train output folder (cache/<ds>/runs/<train-key>/); its metrics are the latest scores
among its caption outputs (runs/<key>/captions/*/scores/*/). A caption or score folder may be given
instead, to pick one decoding of a run. Short keys resolve under a cache folder by prefix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.records import RECORD_NAME, DamagedRecordError, read_record

SCORES_NAME = "scores.json"


def read_scores(score_dir: Path) -> dict[str, float]:
    """The corpus-level metrics of a score output: numeric values of `scores.json` (or of its
    `metrics`/`overall` mapping when it nests them)."""
    path = Path(score_dir) / SCORES_NAME
    if not path.is_file():
        raise UserError(f"{path}: no scores file in this score output; rerun `ecpa score`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); rerun `ecpa score`") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of metric -> value")
    for nest in ("metrics", "overall", "scores"):
        if isinstance(data.get(nest), dict):
            data = data[nest]
            break
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'model': {'top_k': 3}} -> {'model.top_k': 3}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


@dataclass
class RunView:
    """What compare shows for one run."""

    label: str
    """The folder as given/resolved, relative to the cache when possible."""
    run_dir: Path
    train: dict
    caption_dir: Path | None = None
    caption: dict | None = None
    score_dir: Path | None = None
    score: dict | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """Every config field behind this run's numbers, dotted (train slice, extract key, decoding, scoring)."""
        out = flatten(self.train.get("config", {}))
        for parent, key in sorted(self.train.get("parents", {}).items()):
            out[f"{parent} key"] = key[:16]
        out["train code version"] = self.train.get("version")
        if self.caption:
            out.update(flatten(self.caption.get("config", {}), "caption."))
            out["caption code version"] = self.caption.get("version")
        if self.score:
            out.update(flatten(self.score.get("config", {}), "score."))
            out["score code version"] = self.score.get("version")
        return out


def _record(path: Path) -> dict | None:
    try:
        return read_record(path)
    except DamagedRecordError:
        return None


def _latest(dirs: list[Path], stage: str) -> tuple[Path, dict] | None:
    best = None
    for d in dirs:
        rec = _record(d)
        if rec is None or rec.get("stage") != stage:
            continue
        if best is None or rec.get("created", 0) > best[1].get("created", 0):
            best = (d, rec)
    return best


def resolve_run(arg: str, caches: list[Path]) -> Path:
    """A run/caption/score folder, or a (prefix of a) train key looked up under `caches`' runs/."""
    path = Path(arg)
    if path.is_dir():
        if not (path / RECORD_NAME).is_file():
            raise UserError(f"{path}: no {RECORD_NAME} here; not a finished run/caption/score output")
        return path
    if "/" in arg or not arg.strip():
        raise UserError(f"{arg}: no such folder")
    matches = sorted({d for c in caches for d in (Path(c) / "runs").glob(f"{arg}*") if d.is_dir()})
    if not matches:
        where = ", ".join(str(Path(c) / "runs") for c in caches) or "(no cache folders)"
        raise UserError(f"{arg}: no run folder with this key prefix under {where}")
    if len(matches) > 1:
        raise UserError(f"{arg}: ambiguous key prefix, matches {', '.join(str(m) for m in matches[:5])}")
    return matches[0]


def load_view(path: Path, label: str | None = None) -> RunView:
    """Read a run (train), caption or score folder into a RunView (latest scores when not pinned)."""
    path = Path(path)
    rec = read_record(path)
    if rec is None:
        raise UserError(f"{path}: no {RECORD_NAME}; not a finished output")
    stage = rec.get("stage")
    caption_dir = score_dir = None
    caption = score = None
    if stage == "score":
        score_dir, score = path, rec
        caption_dir = path.parent.parent
        run_dir = caption_dir.parent.parent
    elif stage == "caption":
        caption_dir = path
        run_dir = path.parent.parent
    elif stage == "train":
        run_dir = path
    else:
        raise UserError(f"{path}: a {stage} output; compare takes run (train), caption or score folders")
    train = read_record(run_dir)
    if train is None or train.get("stage") != "train":
        raise UserError(f"{run_dir}: not a finished train output (no train {RECORD_NAME})")
    if score_dir is None:
        pattern = f"{caption_dir.name}/scores/*" if caption_dir is not None else "*/scores/*"
        latest = _latest(sorted((run_dir / "captions").glob(pattern)), "score")
        if latest is not None:
            score_dir, score = latest
            caption_dir = score_dir.parent.parent
    if caption_dir is not None:
        caption = read_record(caption_dir)
    metrics = read_scores(score_dir) if score_dir is not None else {}
    return RunView(label or str(path), run_dir, train, caption_dir, caption, score_dir, score, metrics)


def differing_fields(views: list[RunView]) -> list[str]:
    """Dotted config fields whose values are not the same in every view (absent counts as a value)."""
    flats = [v.fields() for v in views]
    names = sorted({n for f in flats for n in f})
    return [n for n in names if len({json.dumps(f.get(n, "<absent>"), sort_keys=True, default=str) for f in flats}) > 1]
