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

Outputs go under the TRAINING run, keyed like the in-domain chain (pipeline.chain.plan) but with the eval
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

from pipeline.chain.layout import PROTOCOL_FILE, store_path
from pipeline.chain.plan import PlanInputs, StagePlan, caption_plan, plan, score_plan
from pipeline.config import Config
from pipeline.errors import CacheMismatchError, UserError
from pipeline.progress import Reporter
from pipeline.records import atomic_write_text


@dataclass
class ProtocolPlan:
    """The stage plans of a cross-dataset / zero-shot evaluation."""

    train: StagePlan          # the run (train config)
    train_extract: StagePlan  # the training features
    eval_extract: StagePlan   # the eval dataset's features
    caption: StagePlan        # under the training run, parents {train, features = eval extract}
    score: StagePlan          # parents {caption, references = eval manifest}


def protocol_plan(train_cfg: Config, eval_cfg: Config, train_inputs: PlanInputs, eval_inputs: PlanInputs) -> ProtocolPlan:
    """Keys and folders for captioning/scoring `eval_cfg`'s dataset with `train_cfg`'s run (pure: the inputs of
    both datasets come in, pipeline.chain.plan.prepare / read_inputs).

    With eval_cfg's dataset equal to train_cfg's, the keys equal `pipeline.chain.plan.plan`'s in-domain keys."""
    tr_plans = plan(train_cfg, train_inputs, upto="train")
    ev = plan(eval_cfg, eval_inputs, upto="extract")["extract"]
    tr = tr_plans["train"]
    eval_manifest = eval_inputs.manifest_hash  # the eval clips' captions, emotions and splits
    extra = {}
    if not (eval_cfg.cache_dir.resolve() == train_cfg.cache_dir.resolve()
            and eval_manifest == tr.parents.get("manifest")):
        # Another dataset: its split and references (captions.json / references.json) are not behind the
        # train key, so its manifest joins the caption key. The same dataset keeps the in-domain keys.
        extra["eval_manifest"] = eval_manifest
    # the captioned clips' video fingerprints, as the in-domain plan keys them (a replaced video recaptions);
    # the run's captions set the length
    ca = caption_plan(eval_cfg, tr, ev.key, eval_inputs.videos_hash((eval_cfg.caption.split,)),
                      length_from=train_cfg, extra_parents=extra)
    sc = score_plan(eval_cfg, ca, eval_manifest)
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
        from pipeline.score.stage import NO_EMOTION_NOTE

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
    t_path, e_path = store_path(pp.train_extract.out_dir), store_path(pp.eval_extract.out_dir)
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


def _check_inputs(pp: ProtocolPlan, train_cfg: Config, eval_cfg: Config, protocol: str,
                  reporter: Reporter) -> Compatibility:
    """The run fresh, the eval features fresh, Java there, and the run able to read the eval features."""
    from pipeline.score.stage import require_java

    if pp.train.status() != "fresh":
        raise UserError(f"the training run for --train-preset {train_cfg.preset} is {pp.train.status()} "
                        f"({pp.train.out_dir}); run `ecpa train --preset {train_cfg.preset}` (same --set/--train-set) first")
    if pp.eval_extract.status() != "fresh":
        raise UserError(f"the features of the evaluation dataset {eval_cfg.data.name} are {pp.eval_extract.status()} "
                        f"({pp.eval_extract.out_dir}); run `ecpa extract --preset {eval_cfg.preset}` first")
    require_java()
    compat = check_compatibility(pp, train_cfg, eval_cfg)
    if compat.errors:
        raise CacheMismatchError(
            f"the run trained on {train_cfg.data.name} cannot read {eval_cfg.data.name}'s features: "
            + "; ".join(compat.errors)
            + f". Extract {eval_cfg.data.name} with the training dataset's extractors and frame settings "
              "(extract.swin, extract.num_frames, extract.crop, extract.au_model, ...)")
    for note in compat.notes:
        reporter.note(f"[yellow]{protocol}:[/] {note}")
    return compat


def run_protocol(train_cfg: Config, eval_cfg: Config, *, protocol: str, force: bool = False,
                 reporter: Reporter | None = None, inputs: tuple[PlanInputs, PlanInputs] | None = None) -> dict:
    """Caption and score `eval_cfg`'s dataset with `train_cfg`'s run. Returns {plan, compat, caption, score}.
    `inputs`: the (train, eval) plan inputs of the command (prepared here when not given)."""
    from pipeline.caption.stage import caption_into, length_note
    from pipeline.chain.plan import prepare
    from pipeline.chain.run_stage import run_stage
    from pipeline.score.stage import score_stage

    reporter = reporter or Reporter()
    train_inputs, eval_inputs = inputs or (prepare(train_cfg), prepare(eval_cfg))
    pp = protocol_plan(train_cfg, eval_cfg, train_inputs, eval_inputs)
    compat = _check_inputs(pp, train_cfg, eval_cfg, protocol, reporter)
    ca = pp.caption

    def work() -> dict:
        t0 = time.perf_counter()
        parts = caption_into(ca.out_dir, run_dir=pp.train.out_dir, store_path=store_path(pp.eval_extract.out_dir),
                             manifest_path=eval_cfg.manifest_path,
                             ccfg=dataclasses.replace(eval_cfg.caption, max_length=ca.config["max_length"]),
                             eval_emotions=eval_cfg.data.emotions, reporter=reporter,
                             length_note=length_note(eval_cfg, length_from=train_cfg),
                             dataset=eval_cfg.data.name, run_dataset=train_cfg.data.name)
        parts["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
        info = {"protocol": protocol, "train_preset": train_cfg.preset, "train_dataset": train_cfg.data.name,
                "eval_preset": eval_cfg.preset, "eval_dataset": eval_cfg.data.name,
                "notes": compat.notes, "vocabulary": compat.vocab, "emotions": compat.emotions}
        atomic_write_text(ca.out_dir / PROTOCOL_FILE, json.dumps(info, indent=2) + "\n")
        parts["extra"]["protocol"] = info
        return parts

    ca_rec = run_stage(ca, work, cfg=eval_cfg, configs={"train_config.yaml": train_cfg}, force=force)
    sc_rec = score_stage(pp.score, ca, eval_cfg, force=force, reporter=reporter)
    return {"plan": pp, "compat": compat, "caption": ca_rec, "score": sc_rec}
