"""Score captions with pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr) and emotion accuracy.

Output: .../captions/<caption-key>/scores/<score-key>/
    scores.json   {"metrics": {Bleu_1..4, METEOR, ROUGE_L, CIDEr, emotion_acc [, Acc_sw, Acc_c, BFS, CFS with
                  score.emotion_lexicon]}, "clips", "emotion_clips", "notes" [, "emotion_word_counts"]}
    per_clip.csv  clip, emotion true/predicted, caption, references, per-clip BLEU-4 / METEOR / ROUGE-L / CIDEr
                  (sorted by CIDEr, worst first: the error-analysis view)
    config.yaml, stage.json

Java: pycocoevalcap's PTB tokenizer and METEOR are Java programs. Without `java` on PATH the stage stops
up front with the install hint; `score.meteor=false` skips METEOR but cannot skip the tokenizer.
Reads only captions.json + references.json of its caption output, so in-domain and cross-dataset
scoring are the same code (`score_into`).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.config import Config, save_config, section_slice
from pipeline.errors import UserError
from pipeline.records import StageRecord, atomic_write_text, read_record, write_record
from stages._common import (CacheOpt, PresetOpt, SetOpt, console, out, print_random_note, random_extractors,
                            resolve_config, user_errors)

VERSION = "2"
"""Bump with the scorer (tokenisation, metric set)."""

NO_EMOTION_NOTE = ("no clip of the captioned split carries an emotion label: emotion accuracy is not reported "
                   "(the predicted emotion is still written per clip)")

SCORES_FILE = "scores.json"
PER_CLIP_FILE = "per_clip.csv"


def config_slice(cfg: Config) -> dict:
    """The score fields; the emotion lexicon by its contents (and left out when none is set, so scores
    computed before the field existed keep their keys)."""
    s = section_slice(cfg.score)
    lexicon = s.pop("emotion_lexicon")
    if lexicon:
        from pipeline.score.emotion import lexicon_hash

        s["emotion_lexicon"] = f"sha256:{lexicon_hash(lexicon)}" if Path(lexicon).is_dir() else f"missing:{lexicon}"
    return s


def _load_json(path: Path):
    if not path.is_file():
        raise UserError(f"{path}: missing; rerun `ecpa caption`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); rerun `ecpa caption --force`") from None


def read_caption_output(caption_dir: Path) -> tuple[list[dict], dict]:
    """(captions.json entries, references.json) of a caption output, checked for the fields scoring uses."""
    from stages.caption import CAPTIONS_FILE, REFERENCES_FILE

    caption_dir = Path(caption_dir)
    results = _load_json(caption_dir / CAPTIONS_FILE)
    refs = _load_json(caption_dir / REFERENCES_FILE)
    if not isinstance(results, list) or any(not isinstance(r, dict) or not {"image_id", "caption"} <= r.keys()
                                            for r in results):
        raise UserError(f"{caption_dir / CAPTIONS_FILE}: expected a COCO results list of "
                        "{{image_id, caption}} objects; rerun `ecpa caption --force`")
    if not isinstance(refs, dict) or not {"images", "annotations"} <= refs.keys():
        raise UserError(f"{caption_dir / REFERENCES_FILE}: expected COCO {{images, annotations}}; "
                        "rerun `ecpa caption --force`")
    return results, refs


def training_baselines(cfg: Config) -> dict | None:
    """What a model that ignores the video would score: the most frequent training caption for every
    clip, and the most frequent training emotion (plus chance, 1/E). None without a manifest."""
    from collections import Counter

    from pipeline.data.manifest import read_manifest

    if not cfg.manifest_path.is_file():
        return None
    train = [c for c in read_manifest(cfg.manifest_path) if c.split == "train"]
    captions = Counter(cap for c in train for cap in c.captions)
    emotions = Counter(c.emotion for c in train if c.emotion is not None)
    if not captions:
        return None
    # most frequent, ties broken by the text so the baseline never depends on file order
    caption = min(captions, key=lambda t: (-captions[t], t))
    majority = min(emotions, key=lambda e: (-emotions[e], e)) if emotions else None
    return {"caption": caption, "emotion": majority, "chance": 1.0 / len(cfg.data.emotions)}


def score_into(out_dir: Path, caption_dir: Path, scfg, *, progress: bool = True,
               baselines: dict | None = None) -> dict:
    """Score the caption output in `caption_dir` into `out_dir` (scores.json, per_clip.csv). With
    `baselines` (see `training_baselines`), the constant-caption and majority-emotion baselines are
    scored on the same references and stored beside the model's figures. Returns the record parts
    (timings, counts, extra)."""
    from pipeline.score.coco import ALL_METRICS, length_stats, score_captions, score_captions_per_clip

    t0 = time.perf_counter()
    unknown = [m for m in scfg.metrics if m not in ALL_METRICS]
    if unknown:
        raise UserError(f"score.metrics: unknown metric(s) {', '.join(unknown)}; known: {', '.join(ALL_METRICS)}")
    lexicon = None
    if getattr(scfg, "emotion_lexicon", ""):  # read first: a bad lexicon stops before the slow scoring
        from pipeline.score.emotion import load_lexicon

        lexicon = load_lexicon(scfg.emotion_lexicon)
    results, refs = read_caption_output(caption_dir)
    gts: dict[str, list[str]] = {}
    for a in refs["annotations"]:
        gts.setdefault(str(a["image_id"]), []).append(a["caption"])
    res = {str(r["image_id"]): r["caption"] for r in results}
    true = {str(im["id"]): im.get("emotion") for im in refs["images"]}

    with console.status("scoring (PTB tokenizer, BLEU, ROUGE-L, CIDEr" + (", METEOR" if scfg.meteor else "") + ")",
                        spinner="dots") if progress else contextlib.nullcontext():
        corpus, per_clip = score_captions_per_clip(gts, res, metrics=ALL_METRICS, meteor=scfg.meteor)

    # emotion accuracy by class NAME (a cross-dataset run predicts its own classes)
    pred = {str(r["image_id"]): r.get("emotion") for r in results}
    known = [k for k, t in true.items() if t is not None and k in pred]
    notes = []
    emotion_acc = None
    if known:
        emotion_acc = sum(pred[k] == true[k] for k in known) / len(known)
    elif any(r.get("emotion") is not None for r in results):
        notes.append(NO_EMOTION_NOTE)
    if not scfg.meteor:
        notes.append("METEOR skipped (score.meteor=false)")
    metrics = dict(corpus)
    metrics["emotion_acc"] = emotion_acc
    ended = ({str(r["image_id"]): bool(r["ended"]) for r in results}
             if all("ended" in r for r in results) else None)
    lengths = length_stats(res, gts, ended)
    if lengths["unended_share"]:
        notes.append(f"{100 * lengths['unended_share']:.1f}% of the captions reached caption.max_length without "
                     "[SEP]: they were cut, not ended")
    emotion_counts = None
    if lexicon is not None:
        from pipeline.score.emotion import emotion_metrics

        emo, emotion_counts, emo_notes = emotion_metrics(res, gts, lexicon, corpus)
        metrics.update(emo)
        notes += emo_notes

    baseline = None
    if baselines is not None:
        const = {k: baselines["caption"] for k in res}
        with console.status("scoring the constant-caption baseline", spinner="dots") if progress \
                else contextlib.nullcontext():
            base_metrics = score_captions(gts, const, metrics=ALL_METRICS, meteor=scfg.meteor)
        base_metrics["emotion_acc"] = (sum(true[k] == baselines["emotion"] for k in known) / len(known)
                                       if known and baselines["emotion"] is not None else None)
        if lexicon is not None:
            from pipeline.score.emotion import emotion_metrics

            base_metrics.update(emotion_metrics(const, gts, lexicon, base_metrics)[0])
        baseline = {"caption": baselines["caption"], "emotion": baselines["emotion"],
                    "emotion_chance": baselines["chance"], "metrics": base_metrics}

    out_dir = Path(out_dir)
    payload = {"metrics": metrics, "lengths": lengths, "baseline": baseline, "clips": len(res),
               "emotion_clips": len(known), "notes": notes, "caption_dir": str(caption_dir)}
    if emotion_counts is not None:
        payload["emotion_word_counts"] = emotion_counts
    atomic_write_text(out_dir / SCORES_FILE, json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out_dir / PER_CLIP_FILE, per_clip_csv(res, gts, true, pred, per_clip))
    return {
        "timings": {"score_s": round(time.perf_counter() - t0, 3)},
        "counts": {"clips": len(res), "references": sum(len(v) for v in gts.values()), "emotion_clips": len(known)},
        "extra": {"metrics": metrics, "lengths": lengths, "baseline": baseline, "notes": notes,
                  "caption_dir": str(caption_dir)},
    }


def per_clip_csv(res: dict, gts: dict, true: dict, pred: dict, per_clip: dict) -> str:
    """The error-analysis table: one row per clip, worst CIDEr first."""
    cols = ["clip", "emotion_true", "emotion_pred", "emotion_correct", "caption", "references",
            "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    order = sorted(res, key=lambda k: (per_clip[k].get("CIDEr", 0.0), k))
    for k in order:
        t, p = true.get(k), pred.get(k)
        s = per_clip[k]
        w.writerow([k, t or "", p or "", "" if t is None or p is None else int(t == p), res[k],
                    " | ".join(gts[k])] + [f"{s[m]:.4f}" if m in s else "" for m in cols[6:]])
    return buf.getvalue()


def run(cfg: Config, *, force: bool = False, progress: bool = True) -> dict:
    """Score the caption output `cfg` plans, unless a fresh score output for the same key exists."""
    from stages._common import JAVA_HINT, java_available
    from stages.plan import plan

    plans = plan(cfg, upto="score")
    p, ca = plans["score"], plans["caption"]
    if p.status() == "fresh" and not force:
        return read_record(p.out_dir)
    if ca.status() != "fresh":
        raise UserError(f"the captions for this config are {ca.status()} ({ca.out_dir}); run `ecpa caption` "
                        "(or `ecpa run --upto caption`) with the same preset/--set first")
    if not java_available():  # checked before anything is written
        raise UserError("scoring needs Java (the PTB tokenizer even with score.meteor=false; METEOR too). "
                        + JAVA_HINT)
    return score_stage(p, ca.out_dir, cfg, progress=progress)


def score_stage(p, caption_dir: Path, cfg: Config, *, progress: bool = True) -> dict:
    """Compute the score output of plan `p` (shared with the cross/zero-shot protocols)."""
    (p.out_dir / "stage.json").unlink(missing_ok=True)
    p.out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, p.out_dir / "config.yaml")
    parts = score_into(p.out_dir, caption_dir, cfg.score, progress=progress, baselines=training_baselines(cfg))
    rec = StageRecord(stage="score", key=p.key, version=VERSION, config=p.config, parents=p.parents, **parts)
    write_record(p.out_dir, rec)
    return rec.to_dict()


def print_scores(rec: dict, out_dir: Path, title: str = "scores", skip_notes: list[str] = ()) -> None:
    """The small summary table: the paper's four metrics (x100, as papers print them), BLEU-1..3, emotion acc."""
    from rich.table import Table

    metrics = rec.get("extra", {}).get("metrics", {})
    baseline = rec.get("extra", {}).get("baseline") or {}
    base = baseline.get("metrics", {})
    t = Table(title=f"{title} ({rec.get('counts', {}).get('clips')} clips, x100)", title_justify="left")
    t.add_column("metric")
    t.add_column("model", justify="right")
    if base:
        t.add_column("constant caption / majority emotion", justify="right")
    configured = rec.get("config", {}).get("metrics", [])
    order = list(dict.fromkeys([*configured, "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "Bleu_1", "Bleu_2", "Bleu_3",
                                "emotion_acc", "Acc_sw", "Acc_c", "BFS", "CFS"]))
    for m in order:
        if m in metrics:
            cells = [metrics[m]] + ([base.get(m)] if base else [])
            t.add_row(m, *("n/a" if v is None else f"{100 * v:.2f}" for v in cells))
    out.print(t)
    lengths = rec.get("extra", {}).get("lengths") or {}
    if lengths.get("mean_generated_words") is not None:
        unended = lengths.get("unended_share")
        out.print(f"caption length: {lengths['mean_generated_words']:.1f} words generated vs "
                  f"{lengths['mean_reference_words']:.1f} in the references (ratio {lengths['length_ratio']:.2f}); "
                  + ("ended with [SEP]: n/a" if unended is None else f"ended with [SEP]: {100 * (1 - unended):.1f}%"),
                  highlight=False)
    print_random_note(random_extractors(caption_dir=Path(out_dir).parent.parent))
    if base:
        out.print(f"baseline caption (most frequent in training): \"{baseline['caption']}\"; "
                      f"majority emotion: {baseline['emotion']}; chance: {100 * baseline['emotion_chance']:.1f}",
                      highlight=False)
    for note in rec.get("extra", {}).get("notes", []):
        if note not in skip_notes:  # said once: the protocols print their own notes first
            console.print(f"[yellow]note:[/] {note}", highlight=False)
    out.print(f"scores: {Path(out_dir) / SCORES_FILE}; per clip: {Path(out_dir) / PER_CLIP_FILE}", highlight=False)


@user_errors
def command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Score again even when a fresh output exists.")] = False,
) -> None:
    """Score the captions this config decodes: BLEU-1..4, METEOR, ROUGE-L, CIDEr, emotion accuracy."""
    from stages.plan import plan

    cfg = resolve_config(preset, set, cache)
    rec = run(cfg, force=force)
    print_scores(rec, plan(cfg, upto="score")["score"].out_dir)
