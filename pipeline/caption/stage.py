"""Decode captions for a split with a trained run (greedy or beam; prefix-cached): the caption stage body.

Output: cache/<dataset>/runs/<train-key>/captions/<caption-key>/
    captions.json    COCO results format, one entry per clip:
                     {"image_id": clip, "caption": text, "emotion": predicted class name, "emotion_index": int}
    references.json  COCO annotation format: {"images": [{"id", "emotion", "emotion_index"}],
                     "annotations": [{"image_id", "id", "caption"}]} (the clip's true emotion rides on "images")
    config.yaml, stage.json

Reads top to bottom: config -> parent checks -> load checkpoint + store -> decode loop -> write -> record
(pipeline.chain.run_stage). `caption_into` holds the work so the cross-dataset / zero-shot protocols
(pipeline.chain.protocols) can caption another dataset's features with a run.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from pipeline.chain.layout import CAPTIONS_FILE, CONFIG_FILE, REFERENCES_FILE, store_path as store_path_of
from pipeline.chain.specs import CAPTION_VERSION as VERSION  # noqa: F401  (the version lives with the specs)
from pipeline.config import Config
from pipeline.errors import CacheMismatchError, UserError
from pipeline.progress import Reporter
from pipeline.records import atomic_write_text
from pipeline.train.tokenizer import data_length


def length_note(cfg: Config, length_from: Config | None = None) -> str:
    """How caption.max_length was chosen, for the record and the summary."""
    if cfg.caption.max_length:
        return f"{cfg.caption.max_length} as set (caption.max_length)"
    return data_length(length_from or cfg)[1]


def check_features_fit(model_shapes: dict, store_shapes, store_path) -> None:
    """Refuse a store whose per-clip shapes the model cannot read (the cross-dataset case: another
    extraction). Frame counts may differ (ER features are pooled over frames, AU confidences averaged)."""
    need = {"tokens": "video tokens", "channels": "video channels", "er_dim": "ER feature dim",
            "aus": "AUs", "au_dim": "AU feature dim"}
    bad = [f"{what}: store {getattr(store_shapes, k)}, model {model_shapes[k]}"
           for k, what in need.items() if model_shapes.get(k) != getattr(store_shapes, k)]
    if bad:
        raise CacheMismatchError(
            f"{store_path}: these features do not fit the trained model ({'; '.join(bad)}); extract the "
            "evaluation dataset with the same extractors and frame settings as the training dataset "
            "(extract.swin, extract.num_frames, extract.crop, extract.au_model)")


def _load(run_dir: Path, store_path: Path, manifest_path: Path, ccfg) -> dict:
    """The run's model and tokenizer, the store's clips of split `ccfg.split` and a loader over them."""
    from torch.utils.data import DataLoader

    from pipeline.data.manifest import read_manifest
    from pipeline.device import resolve_device
    from pipeline.train.data import Clips, FeatureSource, collate, match_clips, open_checked_store, store_bytes
    from pipeline.train.loop import load_trained

    if ccfg.vocabulary not in ("train", "all"):
        raise UserError(f"caption.vocabulary={ccfg.vocabulary!r}: train (word pieces of the training captions) or all")
    device = resolve_device(ccfg.device, what="caption.device")
    model, tok, info = load_trained(run_dir, ccfg.checkpoint, device)
    train_emotions = _run_emotions(run_dir, model.num_emotions)
    group, shapes = open_checked_store(store_path)
    check_features_fit(info.get("meta", {}).get("shapes", {}), shapes, store_path)
    clips = read_manifest(manifest_path)
    refs, skipped = match_clips(group, store_path, clips, (ccfg.split,))
    if not refs:
        splits = sorted({c.split for c in clips})
        raise UserError(f"{manifest_path}: no extracted clips in split {ccfg.split!r} (splits here: "
                        f"{', '.join(splits)}); set caption.split")
    source = FeatureSource(store_path, [r.row for r in refs], in_memory=store_bytes(shapes, len(refs)) <= 2 * 2**30)
    loader = DataLoader(Clips(refs, source), batch_size=ccfg.batch_size, shuffle=False,
                        collate_fn=lambda items: collate(items, pad_id=tok.pad_id))
    return {"model": model, "tok": tok, "info": info, "device": device, "train_emotions": train_emotions,
            "clips": {c.id: c for c in clips}, "refs": refs, "skipped": skipped, "loader": loader}


def _decode(run: dict, ccfg, bar) -> list[dict]:
    """One captions.json entry per clip: caption, predicted emotion (by the run's class names), its length."""
    from pipeline.caption.decoding import decode_with_emotion

    model, tok, names, results = run["model"], run["tok"], run["train_emotions"], []
    for batch in run["loader"]:
        ids, emo = decode_with_emotion(
            model, batch, tok, beam_size=ccfg.beam_size, max_length=ccfg.max_length,
            length_penalty=ccfg.length_penalty, use_cache=ccfg.prefix_cache,
            words_only=ccfg.vocabulary == "train", no_repeat_ngram=ccfg.no_repeat_ngram)
        pred = emo.argmax(dim=-1).tolist() if emo is not None else [None] * len(ids)
        for cid, seq, e in zip(batch["clip_id"], ids, pred):
            results.append({"image_id": cid, "caption": tok.decode(seq),
                            "emotion": names[e] if e is not None else None,
                            "emotion_index": int(e) if e is not None else -1,
                            # [CLS] counts in max_length: a caption that used every slot never emitted [SEP]
                            "pieces": len(seq), "ended": len(seq) < ccfg.max_length - 1})
        bar.advance(len(ids))
    return results


def _write(out_dir: Path, results: list[dict], refs, by_id: dict) -> int:
    """captions.json (COCO results) and references.json (COCO annotations, true emotions on "images");
    returns the number of references."""
    images, annotations = [], []
    for r in refs:
        c = by_id[r.id]
        images.append({"id": r.id, "emotion": c.emotion, "emotion_index": c.emotion_index})
        for cap in c.captions:
            annotations.append({"image_id": r.id, "id": len(annotations), "caption": cap})
    atomic_write_text(out_dir / CAPTIONS_FILE, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / REFERENCES_FILE,
                      json.dumps({"images": images, "annotations": annotations}, indent=1, ensure_ascii=False) + "\n")
    return len(annotations)


def _notes(results: list[dict], skipped: list[str], train_emotions: list[str], eval_emotions, ccfg) -> list[str]:
    notes = []
    if skipped:
        notes.append(f"{len(skipped)} clip(s) of split {ccfg.split!r} have no extracted features and were left out "
                     f"(e.g. {', '.join(skipped[:5])}; see the extraction's errors.jsonl)")
    if train_emotions != list(eval_emotions):
        notes.append(f"emotion classes differ: the run predicts {train_emotions}, the captioned dataset is labelled "
                     f"with {list(eval_emotions)}; accuracy counts clips whose true class name the run knows")
    unended = sum(1 for r in results if not r["ended"])
    if unended:
        notes.append(f"{unended} of {len(results)} caption(s) reached caption.max_length={ccfg.max_length} without "
                     "[SEP] (cut, not ended)")
    return notes


def caption_into(out_dir: Path, *, run_dir: Path, store_path: Path, manifest_path: Path, ccfg,
                 eval_emotions: list[str], reporter: Reporter | None = None, length_note: str = "",
                 dataset: str = "", run_dataset: str = "") -> dict:
    """Caption the clips of split `ccfg.split` (manifest at `manifest_path`, features at `store_path`) with the
    run in `run_dir`; write captions.json and references.json into `out_dir`. Returns counts/timings/extra
    for the stage record. `eval_emotions` are the class names of the dataset being captioned (its true labels);
    predictions are named by the run's own classes (the checkpoint's). `ccfg.max_length` must be resolved (> 0)."""
    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    run = _load(run_dir, store_path, manifest_path, ccfg)
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    with reporter.bar("caption", len(run["refs"]), every_n=ccfg.log_every) as bar:
        results = _decode(run, ccfg, bar)
    t_decode = time.perf_counter() - t1
    n_refs = _write(Path(out_dir), results, run["refs"], run["clips"])
    notes = _notes(results, run["skipped"], run["train_emotions"], eval_emotions, ccfg)
    return {
        "timings": {"load_s": round(t_load, 3), "decode_s": round(t_decode, 3),
                    "captions_per_s": round(len(results) / t_decode, 3) if t_decode > 0 else None},
        "counts": {"clips": len(results), "skipped": len(run["skipped"]),
                   "empty_captions": sum(1 for r in results if not r["caption"]),
                   "unended_captions": sum(1 for r in results if not r["ended"]), "references": n_refs},
        "extra": {"run_dir": str(run_dir), "checkpoint": ccfg.checkpoint, "checkpoint_epoch": run["info"].get("epoch"),
                  "store": str(store_path), "device": str(run["device"]), "emotion_names": run["train_emotions"],
                  "notes": notes, "max_length": ccfg.max_length, "max_length_from": length_note or f"{ccfg.max_length}",
                  "vocabulary": ccfg.vocabulary, "dataset": dataset, "run_dataset": run_dataset,
                  "split": ccfg.split},
    }


def _run_emotions(run_dir: Path, n: int) -> list[str]:
    """The emotion class names the run was trained with (its saved config), checked against the model's count."""
    from pipeline.config import load_config

    cfg_path = Path(run_dir) / CONFIG_FILE
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: the run has no config.yaml; rerun `ecpa train` for this run")
    names = list(load_config(cfg_path).data.emotions)
    if len(names) != n:
        raise CacheMismatchError(f"{cfg_path}: {len(names)} emotion classes in the run's config, the checkpoint "
                                 f"has {n}")
    return names


def run(cfg: Config, plans: dict | None = None, *, force: bool = False, reporter: Reporter | None = None,
        lock=None) -> dict:
    """Caption `cfg.caption.split` with the run `cfg` plans, unless a fresh output for the same key exists
    (`plans`: the command's plan; planned here when not given)."""
    from pipeline.chain.run_stage import run_stage

    if plans is None:
        from pipeline.chain.plan import plan, prepare

        plans = plan(cfg, prepare(cfg), upto="caption")
    p, tr, ex = plans["caption"], plans["train"], plans["extract"]

    def work() -> dict:
        t0 = time.perf_counter()
        ccfg = dataclasses.replace(cfg.caption, max_length=p.config["max_length"])   # resolved, as keyed
        parts = caption_into(p.out_dir, run_dir=tr.out_dir, store_path=store_path_of(ex.out_dir),
                             manifest_path=cfg.manifest_path, ccfg=ccfg, eval_emotions=cfg.data.emotions,
                             reporter=reporter, length_note=length_note(cfg), dataset=cfg.data.name,
                             run_dataset=cfg.data.name)
        parts["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
        return parts

    return run_stage(p, work, cfg=cfg, parents=[(ex, "ecpa extract"), (tr, "ecpa train")], force=force,
                     lock=lock)
