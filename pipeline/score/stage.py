"""Score captions with pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr) and emotion accuracy: the score stage body.

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

import csv
import io
import json
import time
from pathlib import Path

from pipeline.chain.layout import CAPTIONS_FILE, PER_CLIP_FILE, REFERENCES_FILE, SCORES_FILE
from pipeline.chain.specs import SCORE_VERSION as VERSION  # noqa: F401  (the version lives with the specs)
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.progress import Reporter
from pipeline.records import atomic_write_text
from pipeline.score.baselines import training_baselines  # noqa: F401  (re-exported: the stage scores them)

NO_EMOTION_NOTE = ("no clip of the captioned split carries an emotion label: emotion accuracy is not reported "
                   "(the predicted emotion is still written per clip)")

def _load_json(path: Path):
    if not path.is_file():
        raise UserError(f"{path}: missing; rerun `ecpa caption`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); rerun `ecpa caption --force`") from None


def read_caption_output(caption_dir: Path) -> tuple[list[dict], dict]:
    """(captions.json entries, references.json) of a caption output, checked for the fields scoring uses."""
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


def score_into(out_dir: Path, caption_dir: Path, scfg, *, reporter: Reporter | None = None,
               baselines: dict | None = None) -> dict:
    """Score the caption output in `caption_dir` into `out_dir` (scores.json, per_clip.csv). With
    `baselines` (see `training_baselines`), the constant-caption and majority-emotion baselines are
    scored on the same references and stored beside the model's figures. Returns the record parts
    (timings, counts, extra)."""
    from pipeline.score.coco import ALL_METRICS, length_stats, score_captions_per_clip

    reporter = reporter or Reporter()
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

    with reporter.status("scoring (PTB tokenizer, BLEU, ROUGE-L, CIDEr" + (", METEOR" if scfg.meteor else "") + ")"):
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

    baseline = (_score_baselines(baselines, res, gts, true, known, scfg, lexicon, reporter)
                if baselines is not None else None)

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


def _score_baselines(baselines: dict, res: dict, gts: dict, true: dict, known: list, scfg, lexicon,
                     reporter: Reporter) -> dict:
    """The constant-caption and majority-emotion baselines (pipeline.score.baselines) on the same references."""
    from pipeline.score.coco import ALL_METRICS, score_captions

    const = {k: baselines["caption"] for k in res}
    with reporter.status("scoring the constant-caption baseline"):
        base_metrics = score_captions(gts, const, metrics=ALL_METRICS, meteor=scfg.meteor)
    base_metrics["emotion_acc"] = (sum(true[k] == baselines["emotion"] for k in known) / len(known)
                                   if known and baselines["emotion"] is not None else None)
    if lexicon is not None:
        from pipeline.score.emotion import emotion_metrics

        base_metrics.update(emotion_metrics(const, gts, lexicon, base_metrics)[0])
    return {"caption": baselines["caption"], "emotion": baselines["emotion"],
            "emotion_chance": baselines["chance"], "metrics": base_metrics}


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


def run(cfg: Config, plans: dict | None = None, *, force: bool = False, reporter: Reporter | None = None,
        lock=None) -> dict:
    """Score the caption output `cfg` plans, unless a fresh score output for the same key exists (`plans`: the
    command's plan; planned here when not given)."""
    if plans is None:
        from pipeline.chain.plan import plan, prepare

        plans = plan(cfg, prepare(cfg), upto="score")
    return score_stage(plans["score"], plans["caption"], cfg, force=force, reporter=reporter, lock=lock)


def require_java() -> None:
    """Scoring needs Java: checked before anything is written."""
    from pipeline.score.coco import JAVA_HINT, java_available

    if not java_available():
        raise UserError("scoring needs Java (the PTB tokenizer even with score.meteor=false; METEOR too). " + JAVA_HINT)


def score_stage(p, caption, cfg: Config, *, force: bool = False, reporter: Reporter | None = None,
                lock=None) -> dict:
    """The score output of plan `p` for the caption output of plan `caption` (shared with the cross/zero-shot
    protocols, whose caption plan lives under the training run)."""
    from pipeline.chain.run_stage import run_stage

    reporter = reporter or Reporter()
    return run_stage(p, lambda: score_into(p.out_dir, caption.out_dir, cfg.score, reporter=reporter,
                                           baselines=training_baselines(cfg)),
                     cfg=cfg, parents=[(caption, "ecpa caption")], guard=require_java, force=force,
                     lock=lock)
