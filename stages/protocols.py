"""The paper's evaluation protocols beyond in-domain testing: cross-dataset and zero-shot.

* in-domain: the normal chain (`ecpa run`): train and test on one dataset's cache.
* cross-dataset: `ecpa cross --train-preset mafw --eval-preset emvidcap` (and back): the run trained on
  one dataset's cache captions the test split of another dataset, using THAT dataset's own extraction.
* zero-shot: `ecpa zeroshot --train-preset mafw --eval-preset msvd` (or msrvtt): the same mechanics on a
  general-domain dataset without emotion labels.

Both need: the training run fresh for the train config (`ecpa train --preset mafw`) and the evaluation
dataset extracted (`ecpa extract --preset emvidcap`). Before decoding, a compatibility check compares:
- the feature shapes (video tokens and channels, ER and AU dims, AU count): a mismatch stops the command
  (the eval dataset must be extracted with the same extractors and frame settings);
- the extractor names and weight files recorded in both stores: a difference is reported;
- the emotion classes: the run predicts its own classes; accuracy counts eval clips whose true class name
  the run knows; without labels (EmVidCap, MSVD, MSR-VTT) accuracy is not reported (said once);
- the vocabulary: the share of eval reference words the run's tokenizer maps to [UNK] and the words it
  never saw whole, with examples.

Outputs go under the TRAINING run, keyed like the in-domain chain (stages/plan.py) but with the eval
dataset's extract key as the `features` parent and its manifest as the score's `references` parent:

    <train cache>/runs/<train-key>/captions/<caption-key>/{captions.json, references.json, protocol.json, ...}
                                         .../scores/<score-key>/{scores.json, per_clip.csv, ...}

For another dataset the caption key also carries the eval manifest's hash (its split and references
are not behind the train key); for the training dataset itself the keys are the in-domain ones.
The caption and score sections (split, beam, METEOR, ...) come from the eval config. `--set` applies to
both configs, `--train-set` / `--eval-set` to one.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.config import Config, save_config
from pipeline.errors import CacheMismatchError, UserError
from pipeline.records import StageRecord, atomic_write_text, read_record, short, stage_key, write_record
from stages._common import SetOpt, console, out, resolve_config, user_errors

PROTOCOL_FILE = "protocol.json"


@dataclass
class ProtocolPlan:
    """The stage plans of a cross-dataset / zero-shot evaluation."""

    train: object          # StagePlan of the run (train config)
    train_extract: object  # StagePlan of the training features
    eval_extract: object   # StagePlan of the eval dataset's features
    caption: object        # StagePlan: under the training run, parents {train, features = eval extract}
    score: object          # StagePlan: parents {caption, references = eval manifest}


def protocol_plan(train_cfg: Config, eval_cfg: Config) -> ProtocolPlan:
    """Keys and folders for captioning/scoring `eval_cfg`'s dataset with `train_cfg`'s run.

    With eval_cfg's dataset equal to train_cfg's, the keys equal `stages.plan.plan`'s in-domain keys."""
    from stages import caption, score
    from stages.plan import StagePlan, plan

    from pipeline.data.manifest import ensure_manifest

    tr_plans = plan(train_cfg, upto="train")
    ev_plans = plan(eval_cfg, upto="extract")
    tr, ev = tr_plans["train"], ev_plans["extract"]
    eval_manifest = ensure_manifest(eval_cfg)  # the eval clips' captions, emotions and splits
    ca_slice = caption.config_slice(eval_cfg, length_from=train_cfg)  # the run's captions set the length
    from pipeline.data.fingerprint import fingerprints_hash
    from pipeline.data.manifest import read_manifest

    split_ids = [c.id for c in read_manifest(eval_cfg.manifest_path) if c.split == eval_cfg.caption.split]
    # the captioned clips' video fingerprints, as the in-domain plan keys them (a replaced video recaptions)
    ca_parents = {"train": tr.key, "features": ev.key, "videos": fingerprints_hash(ev.fingerprints, split_ids)}
    if not (eval_cfg.cache_dir.resolve() == train_cfg.cache_dir.resolve()
            and eval_manifest == tr.parents.get("manifest")):
        # Another dataset: its split and references (captions.json / references.json) are not behind the
        # train key, so its manifest joins the caption key. The same dataset keeps the in-domain keys.
        ca_parents["eval_manifest"] = eval_manifest
    ca_key = stage_key("caption", caption.VERSION, ca_slice, ca_parents)
    ca_dir = tr.out_dir / "captions" / short(ca_key)
    ca = StagePlan("caption", ca_key, ca_dir, caption.VERSION, ca_slice, ca_parents)
    sc_slice = score.config_slice(eval_cfg)
    sc_parents = {"caption": ca_key, "references": eval_manifest}
    sc_key = stage_key("score", score.VERSION, sc_slice, sc_parents)
    sc = StagePlan("score", sc_key, ca_dir / "scores" / short(sc_key), score.VERSION, sc_slice, sc_parents)
    return ProtocolPlan(tr, tr_plans["extract"], ev, ca, sc)


# ---------------------------------------------------------------------------------------------
# Compatibility of a run with another dataset's cache
# ---------------------------------------------------------------------------------------------


@dataclass
class Compatibility:
    errors: list[str] = field(default_factory=list)
    """Stop the protocol: the model cannot read these features."""
    notes: list[str] = field(default_factory=list)
    """Reported, recorded in protocol.json, and the protocol goes on."""
    vocab: dict = field(default_factory=dict)
    emotions: dict = field(default_factory=dict)


SHAPE_FIELDS = {"tokens": "video tokens", "channels": "video channels", "er_dim": "ER feature dim",
                "aus": "AUs", "au_dim": "AU feature dim"}


def compare_stores(train_attrs: dict, train_shapes, eval_attrs: dict, eval_shapes, out: Compatibility) -> None:
    """Feature shapes must match; extractor names, frame settings and weight files should."""
    for k, what in SHAPE_FIELDS.items():
        a, b = getattr(train_shapes, k), getattr(eval_shapes, k)
        if a != b:
            out.errors.append(f"{what}: training features {a}, evaluation features {b}")
    for k in ("frames", "au_frames"):
        a, b = getattr(train_shapes, k), getattr(eval_shapes, k)
        if a != b:
            out.notes.append(f"{k}: {a} frames in training, {b} in evaluation (pooled by the model; allowed)")
    tx, ex = train_attrs.get("extract", {}) or {}, eval_attrs.get("extract", {}) or {}
    for k in ("swin", "er_model", "au_model", "num_frames", "size", "crop", "face_size", "au_frames", "face_detector",
              "random_init"):
        if k in tx and k in ex and tx[k] != ex[k]:
            out.notes.append(f"extract.{k} differs: training {tx[k]!r}, evaluation {ex[k]!r}")
    tw, ew = train_attrs.get("weights", {}) or {}, eval_attrs.get("weights", {}) or {}
    for k in sorted(set(tw) & set(ew)):
        if tw[k] != ew[k]:
            out.notes.append(f"{k} weights differ between the two extractions ({str(tw[k])[:12]} vs {str(ew[k])[:12]}): "
                             "the features live in different spaces")


def compare_emotions(run_emotions: list[str], eval_emotions: list[str], eval_labels: list[str | None],
                     out: Compatibility) -> None:
    """Which eval clips can count towards emotion accuracy, and why not the others."""
    labelled = [e for e in eval_labels if e is not None]
    known = [e for e in labelled if e in run_emotions]
    unknown = sorted(set(labelled) - set(run_emotions))
    out.emotions = {"run_classes": list(run_emotions), "eval_classes": list(eval_emotions),
                    "labelled_clips": len(labelled), "countable_clips": len(known), "unknown_classes": unknown}
    if not labelled:
        from stages.score import NO_EMOTION_NOTE

        out.notes.append(NO_EMOTION_NOTE)
        return
    if list(run_emotions) != list(eval_emotions):
        out.notes.append(f"emotion classes differ: the run predicts {len(run_emotions)} classes, the evaluation "
                         f"dataset has {len(eval_emotions)}; accuracy is computed by class name")
    if unknown:
        out.notes.append(f"{len(labelled) - len(known)} labelled clip(s) have classes the run cannot predict "
                         f"({', '.join(unknown)}): they count as wrong")


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def vocabulary_coverage(tokenizer, captions: list[str], show: int = 10) -> dict:
    """How well the run's tokenizer covers the eval references: [UNK] rate over words and over word pieces,
    words that are not whole vocabulary entries (split into pieces: never seen whole in training)."""
    vocab = tokenizer.tok.get_vocab()
    unk = tokenizer.unk_id
    words = Counter(w for c in captions for w in _WORD.findall(c.lower()))
    unk_words, split_words = Counter(), Counter()
    for w, n in words.items():
        ids = tokenizer.tokenize_words(w)
        if unk in ids:
            unk_words[w] = n
        elif w not in vocab:
            split_words[w] = n
    total = sum(words.values())
    return {
        "words": total, "distinct_words": len(words),
        "oov_rate": (sum(unk_words.values()) / total) if total else 0.0,
        "oov_words": [w for w, _ in unk_words.most_common(show)], "oov_distinct": len(unk_words),
        "unseen_whole_rate": (sum(split_words.values()) / total) if total else 0.0,
        "unseen_whole_words": [w for w, _ in split_words.most_common(show)], "unseen_whole_distinct": len(split_words),
    }


def check_compatibility(pp: ProtocolPlan, train_cfg: Config, eval_cfg: Config) -> Compatibility:
    from pipeline.data.manifest import read_manifest
    from pipeline.extract.store import open_store, validate_store
    from pipeline.train.tokenizer import load_tokenizer

    out = Compatibility()
    t_path, e_path = pp.train_extract.out_dir / "store.zarr", pp.eval_extract.out_dir / "store.zarr"
    tg, eg = open_store(t_path), open_store(e_path)
    compare_stores(dict(tg.attrs), validate_store(tg, t_path), dict(eg.attrs), validate_store(eg, e_path), out)

    clips = [c for c in read_manifest(eval_cfg.manifest_path) if c.split == eval_cfg.caption.split]
    compare_emotions(list(train_cfg.data.emotions), list(eval_cfg.data.emotions), [c.emotion for c in clips], out)

    tok = load_tokenizer(pp.train.out_dir)
    out.vocab = vocabulary_coverage(tok, [cap for c in clips for cap in c.captions])
    v = out.vocab
    if v["oov_distinct"]:
        out.notes.append(f"vocabulary: {100 * v['oov_rate']:.2f}% of the {v['words']} reference words map to [UNK] "
                         f"in the run's tokenizer ({v['oov_distinct']} distinct, e.g. {', '.join(v['oov_words'][:8])}); "
                         "the model can never produce them")
    if v["unseen_whole_distinct"]:
        out.notes.append(f"vocabulary: {100 * v['unseen_whole_rate']:.2f}% of the reference words are not whole "
                         f"vocabulary entries (split into word pieces; e.g. {', '.join(v['unseen_whole_words'][:8])})")
    return out


# ---------------------------------------------------------------------------------------------
# Running a protocol
# ---------------------------------------------------------------------------------------------


def run_protocol(train_cfg: Config, eval_cfg: Config, *, protocol: str, force: bool = False,
                 progress: bool = True) -> dict:
    """Caption and score `eval_cfg`'s dataset with `train_cfg`'s run. Returns {plan, compat, caption, score}."""
    from stages import caption, score
    from stages._common import JAVA_HINT, java_available

    pp = protocol_plan(train_cfg, eval_cfg)
    if pp.train.status() != "fresh":
        raise UserError(f"the training run for --train-preset {train_cfg.preset} is {pp.train.status()} "
                        f"({pp.train.out_dir}); run `ecpa train --preset {train_cfg.preset}` (same --set/--train-set) first")
    if pp.eval_extract.status() != "fresh":
        raise UserError(f"the features of the evaluation dataset {eval_cfg.data.name} are {pp.eval_extract.status()} "
                        f"({pp.eval_extract.out_dir}); run `ecpa extract --preset {eval_cfg.preset}` first")
    if not java_available():
        raise UserError("scoring needs Java (the PTB tokenizer even with score.meteor=false; METEOR too). " + JAVA_HINT)

    compat = check_compatibility(pp, train_cfg, eval_cfg)
    if compat.errors:
        raise CacheMismatchError(
            f"the run trained on {train_cfg.data.name} cannot read {eval_cfg.data.name}'s features: "
            + "; ".join(compat.errors)
            + f". Extract {eval_cfg.data.name} with the training dataset's extractors and frame settings "
              "(extract.swin, extract.num_frames, extract.crop, extract.au_model, ...)")
    for note in compat.notes:
        console.print(f"[yellow]{protocol}:[/] {note}", highlight=False)

    ca = pp.caption
    if ca.status() == "fresh" and not force:
        ca_rec = read_record(ca.out_dir)
    else:
        (ca.out_dir / "stage.json").unlink(missing_ok=True)
        ca.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(eval_cfg, ca.out_dir / "config.yaml")
        save_config(train_cfg, ca.out_dir / "train_config.yaml")
        t0 = time.perf_counter()
        parts = caption.caption_into(ca.out_dir, run_dir=pp.train.out_dir,
                                     store_path=pp.eval_extract.out_dir / "store.zarr",
                                     manifest_path=eval_cfg.manifest_path,
                                     ccfg=dataclasses.replace(eval_cfg.caption, max_length=ca.config["max_length"]),
                                     eval_emotions=eval_cfg.data.emotions, progress=progress,
                                     length_note=caption.length_note(eval_cfg, length_from=train_cfg),
                                     dataset=eval_cfg.data.name, run_dataset=train_cfg.data.name)
        parts["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
        info = {"protocol": protocol, "train_preset": train_cfg.preset, "train_dataset": train_cfg.data.name,
                "eval_preset": eval_cfg.preset, "eval_dataset": eval_cfg.data.name,
                "notes": compat.notes, "vocabulary": compat.vocab, "emotions": compat.emotions}
        atomic_write_text(ca.out_dir / PROTOCOL_FILE, json.dumps(info, indent=2) + "\n")
        parts["extra"]["protocol"] = info
        rec = StageRecord(stage="caption", key=ca.key, version=caption.VERSION, config=ca.config,
                          parents=ca.parents, **parts)
        write_record(ca.out_dir, rec)
        ca_rec = rec.to_dict()

    sc = pp.score
    if sc.status() == "fresh" and not force:
        sc_rec = read_record(sc.out_dir)
    else:
        sc_rec = score.score_stage(sc, ca.out_dir, eval_cfg, progress=progress)
    return {"plan": pp, "compat": compat, "caption": ca_rec, "score": sc_rec}


def _configs(train_preset, eval_preset, sets, train_sets, eval_sets, train_cache, eval_cache) -> tuple[Config, Config]:
    if not train_preset and train_cache is None:
        raise UserError("give --train-preset (e.g. mafw) or --train-cache")
    if not eval_preset and eval_cache is None:
        raise UserError("give --eval-preset (e.g. emvidcap) or --eval-cache")
    train_cfg = resolve_config(train_preset, list(sets or []) + list(train_sets or []), train_cache)
    eval_cfg = resolve_config(eval_preset, list(sets or []) + list(eval_sets or []), eval_cache)
    return train_cfg, eval_cfg


def _report(result: dict, protocol: str, train_cfg: Config, eval_cfg: Config) -> None:
    from stages.score import print_scores

    pp = result["plan"]
    out.print(f"[green]{protocol}[/]: run {short(pp.train.key)} ({train_cfg.data.name}) on "
                  f"{eval_cfg.data.name} split {eval_cfg.caption.split!r}: {result['caption']['counts'].get('clips')} "
                  f"clips -> {pp.caption.out_dir}", highlight=False)
    print_scores(result["score"], pp.score.out_dir, title=f"{protocol}: {train_cfg.data.name} -> {eval_cfg.data.name}",
                 skip_notes=result["compat"].notes)


TrainPresetOpt = Annotated[Optional[str], typer.Option("--train-preset", help="Preset of the training run (e.g. mafw).")]
EvalPresetOpt = Annotated[Optional[str], typer.Option("--eval-preset", help="Preset of the dataset to evaluate on.")]
TrainSetOpt = Annotated[Optional[list[str]], typer.Option("--train-set", help="Override for the training config only.")]
EvalSetOpt = Annotated[Optional[list[str]], typer.Option("--eval-set", help="Override for the evaluation config only (caption.*, score.* live here).")]
TrainCacheOpt = Annotated[Optional[Path], typer.Option("--train-cache", help="Training dataset cache folder (e.g. cache/mafw).")]
EvalCacheOpt = Annotated[Optional[Path], typer.Option("--eval-cache", help="Evaluation dataset cache folder (e.g. cache/emvidcap).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Caption and score again even when fresh outputs exist.")]


@user_errors
def cross_command(
    train_preset: TrainPresetOpt = None,
    eval_preset: EvalPresetOpt = None,
    set: SetOpt = None,
    train_set: TrainSetOpt = None,
    eval_set: EvalSetOpt = None,
    train_cache: TrainCacheOpt = None,
    eval_cache: EvalCacheOpt = None,
    force: ForceOpt = False,
) -> None:
    """Cross-dataset: `ecpa cross --train-preset mafw --eval-preset emvidcap` (and back)."""
    train_cfg, eval_cfg = _configs(train_preset, eval_preset, set, train_set, eval_set, train_cache, eval_cache)
    if train_cfg.data.name == eval_cfg.data.name:
        console.print(f"[yellow]cross:[/] both sides are {train_cfg.data.name}: this is the in-domain test "
                      "(`ecpa run` computes the same keys)", highlight=False)
    result = run_protocol(train_cfg, eval_cfg, protocol="cross", force=force)
    _report(result, "cross", train_cfg, eval_cfg)


ZERO_SHOT_DATASETS = ("msvd", "msrvtt")


@user_errors
def zeroshot_command(
    train_preset: TrainPresetOpt = None,
    eval_preset: EvalPresetOpt = None,
    set: SetOpt = None,
    train_set: TrainSetOpt = None,
    eval_set: EvalSetOpt = None,
    train_cache: TrainCacheOpt = None,
    eval_cache: EvalCacheOpt = None,
    force: ForceOpt = False,
) -> None:
    """Zero-shot: `ecpa zeroshot --train-preset mafw --eval-preset msvd` (or msrvtt)."""
    train_cfg, eval_cfg = _configs(train_preset, eval_preset, set, train_set, eval_set, train_cache, eval_cache)
    if eval_cfg.data.format not in ZERO_SHOT_DATASETS:
        console.print(f"[yellow]zeroshot:[/] the paper's zero-shot targets are MSVD and MSR-VTT; "
                      f"{eval_cfg.data.name} (format {eval_cfg.data.format}) is evaluated the same way", highlight=False)
    result = run_protocol(train_cfg, eval_cfg, protocol="zeroshot", force=force)
    _report(result, "zeroshot", train_cfg, eval_cfg)
