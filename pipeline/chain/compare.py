"""Side-by-side view of several training runs: metrics and the config fields that differ.

A "run" is a train output folder (cache/<ds>/runs/<train-key>/). Each score is on one evaluation: a dataset
and split, in-domain (the run's own dataset) or a protocol (`ecpa cross`: another dataset; `ecpa zeroshot`:
MSVD / MSR-VTT). A run's metrics are its latest in-domain scores; its other evaluations are shown beside them,
each labelled, never mixed into the in-domain rows. A caption or score folder may be given instead, to pick
one decoding (and evaluation) of a run. Short keys resolve under a cache folder by prefix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.chain.layout import CAPTIONS_DIR, RUNS_DIR, SCORES_DIR
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


@dataclass(frozen=True)
class Evaluation:
    """What a score is on."""

    dataset: str
    split: str
    protocol: str
    """in-domain, cross or zeroshot."""

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.split}" + ("" if self.protocol == "in-domain" else f" ({self.protocol})")

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "split": self.split, "protocol": self.protocol}


def evaluation_of(caption_dir: Path, caption: dict | None) -> Evaluation:
    """The dataset, split and protocol of a caption output (cache/<ds>/runs/<key>/captions/<key>/). Records
    written since issue 18 say so in `extra`; older ones are read from the protocol record and the path."""
    caption = caption or {}
    extra = caption.get("extra") or {}
    run_dataset = extra.get("run_dataset") or Path(caption_dir).parents[3].name
    proto = extra.get("protocol") or {}
    dataset = extra.get("dataset") or proto.get("eval_dataset") or run_dataset
    split = str((caption.get("config") or {}).get("split", "?"))
    kind = "in-domain" if dataset == run_dataset else str(proto.get("protocol") or "cross")
    return Evaluation(dataset, split, kind)


@dataclass
class Scored:
    """One score output of a run, with what it is on."""

    evaluation: Evaluation
    score_dir: Path
    score: dict
    caption_dir: Path
    caption: dict | None
    metrics: dict[str, float]


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
    """The shown scores: the latest in-domain ones, or those of the pinned caption/score folder."""
    evaluation: Evaluation | None = None
    """What `metrics` are on."""
    others: list[Scored] = field(default_factory=list)
    """The latest score of each other evaluation of the run (cross-dataset, zero-shot, another split)."""

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


def resolve_run(arg: str, caches: list[Path]) -> Path:
    """A run/caption/score folder, or a (prefix of a) train key looked up under `caches`' runs/."""
    path = Path(arg)
    if path.is_dir():
        if not (path / RECORD_NAME).is_file():
            raise UserError(f"{path}: no {RECORD_NAME} here; not a finished run/caption/score output")
        return path
    if "/" in arg or not arg.strip():
        raise UserError(f"{arg}: no such folder")
    matches = sorted({d for c in caches for d in (Path(c) / RUNS_DIR).glob(f"{arg}*") if d.is_dir()})
    if not matches:
        where = ", ".join(str(Path(c) / RUNS_DIR) for c in caches) or "(no cache folders)"
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
    scored = _scored(run_dir)
    if score_dir is None and caption_dir is not None:      # a pinned decoding: its latest score
        mine = [x for x in scored if x.caption_dir == caption_dir]
        if mine:
            score_dir, score = mine[0].score_dir, mine[0].score
    elif score_dir is None:                                 # a run: its latest in-domain score
        own = [x for x in scored if x.evaluation.protocol == "in-domain"]
        if own:
            score_dir, score = own[0].score_dir, own[0].score
            caption_dir = own[0].caption_dir
    if caption_dir is not None:
        caption = read_record(caption_dir)
    metrics = read_scores(score_dir) if score_dir is not None else {}
    evaluation = evaluation_of(caption_dir, caption) if caption_dir is not None else None
    others, seen = [], {evaluation}
    for x in scored:                                        # newest first: one per other evaluation
        if x.evaluation not in seen:
            seen.add(x.evaluation)
            others.append(x)
    others.sort(key=lambda x: (x.evaluation.protocol != "in-domain", x.evaluation.label))
    return RunView(label or str(path), run_dir, train, caption_dir, caption, score_dir, score, metrics, evaluation,
                   others)


def _scored(run_dir: Path) -> list[Scored]:
    """Every finished score output of a run, newest first."""
    out = []
    for d in sorted((Path(run_dir) / CAPTIONS_DIR).glob(f"*/{SCORES_DIR}/*")):
        rec = _record(d)
        if rec is None or rec.get("stage") != "score":
            continue
        cap = _record(d.parent.parent)
        try:
            metrics = read_scores(d)
        except UserError:
            continue
        out.append(Scored(evaluation_of(d.parent.parent, cap), d, rec, d.parent.parent, cap, metrics))
    out.sort(key=lambda x: -float(x.score.get("created", 0) or 0))
    return out


def evaluations(views: list[RunView]) -> list[tuple[Evaluation, list[tuple[Path | None, dict | None, dict]]]]:
    """The rows of a comparison: one block per evaluation (in-domain first), each with every view's
    (score_dir, score record, metrics) on it (None, None, {} where a view has none)."""
    labels: list[Evaluation] = []
    for v in views:
        for e in [v.evaluation, *(x.evaluation for x in v.others)]:
            if e is not None and e not in labels:
                labels.append(e)
    labels.sort(key=lambda e: (e.protocol != "in-domain", e.label))
    blocks = []
    for e in labels:
        cells = []
        for v in views:
            if v.evaluation == e:
                cells.append((v.score_dir, v.score, v.metrics))
            else:
                x = next((x for x in v.others if x.evaluation == e), None)
                cells.append((x.score_dir, x.score, x.metrics) if x else (None, None, {}))
        blocks.append((e, cells))
    return blocks


def differing_fields(views: list[RunView]) -> list[str]:
    """Dotted config fields whose values are not the same in every view (absent counts as a value)."""
    flats = [v.fields() for v in views]
    names = sorted({n for f in flats for n in f})
    return [n for n in names if len({json.dumps(f.get(n, "<absent>"), sort_keys=True, default=str) for f in flats}) > 1]
