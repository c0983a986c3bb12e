"""Decode captions for a split with a trained run (greedy or beam; prefix-cached).

Output: cache/<dataset>/runs/<train-key>/captions/<caption-key>/
    captions.json    COCO results format, one entry per clip:
                     {"image_id": clip, "caption": text, "emotion": predicted class name, "emotion_index": int}
    references.json  COCO annotation format: {"images": [{"id", "emotion", "emotion_index"}],
                     "annotations": [{"image_id", "id", "caption"}]} (the clip's true emotion rides on "images")
    config.yaml, stage.json

Reads top to bottom: config -> plan and parent checks -> load checkpoint + store -> decode loop -> write ->
record. `caption_into` holds the work so the cross-dataset / zero-shot protocols (stages/protocols.py) can
caption another dataset's features with a run.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.config import Config, save_config, section_slice
from pipeline.errors import CacheMismatchError, UserError
from pipeline.records import StageRecord, atomic_write_text, read_record, write_record
from stages import _common
from stages._common import CacheOpt, PresetOpt, SetOpt, console, out, resolve_config, user_errors

VERSION = "2"
"""Bump when decoding changes what it produces."""

CAPTIONS_FILE = "captions.json"
REFERENCES_FILE = "references.json"


from pipeline.train.tokenizer import data_length  # noqa: E402  (the length rule lives in the library)


def config_slice(cfg: Config, length_from: Config | None = None) -> dict:
    """Decoding fields (split, greedy/beam, beam size, length penalty, max length, vocabulary, checkpoint), with
    caption.max_length=0 resolved to the number the training captions need (`length_from`: the config the run
    was trained with, when another dataset is captioned), so the key hashes the length actually used."""
    out = section_slice(cfg.caption)
    if out["max_length"] == 0:
        try:
            out["max_length"] = data_length(length_from or cfg)[0]
        except UserError as e:
            # no vocabulary or no training captions yet: training cannot run either, so nothing can be
            # captioned under this key; `ecpa status` still shows the chain
            out["max_length"] = f"unresolved: {e}"
    return out


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


def caption_into(
    out_dir: Path,
    *,
    run_dir: Path,
    store_path: Path,
    manifest_path: Path,
    ccfg,
    eval_emotions: list[str],
    progress: bool = True,
    length_note: str = "",
    dataset: str = "",
    run_dataset: str = "",
) -> dict:
    """Caption the clips of split `ccfg.split` (manifest at `manifest_path`, features at `store_path`) with the
    run in `run_dir`; write captions.json and references.json into `out_dir`. Returns counts/timings/extra
    for the stage record. `eval_emotions` are the class names of the dataset being captioned (its true labels);
    predictions are named by the run's own classes (the checkpoint's). `ccfg.max_length` must be resolved (> 0)."""
    from torch.utils.data import DataLoader

    from pipeline.caption.decoding import decode_with_emotion
    from pipeline.data.manifest import read_manifest
    from pipeline.train.data import Clips, FeatureSource, collate, match_clips, open_checked_store, store_bytes
    from pipeline.train.loop import load_trained, resolve_device

    if ccfg.vocabulary not in ("train", "all"):
        raise UserError(f"caption.vocabulary={ccfg.vocabulary!r}: train (word pieces of the training captions) or all")
    t0 = time.perf_counter()
    device = resolve_device(ccfg.device)
    model, tok, info = load_trained(run_dir, ccfg.checkpoint, device)
    meta = info.get("meta", {})
    train_emotions = _run_emotions(run_dir, model.num_emotions)
    group, shapes = open_checked_store(store_path)
    check_features_fit(meta.get("shapes", {}), shapes, store_path)

    clips = read_manifest(manifest_path)
    refs, skipped = match_clips(group, store_path, clips, (ccfg.split,))
    if not refs:
        splits = sorted({c.split for c in clips})
        raise UserError(f"{manifest_path}: no extracted clips in split {ccfg.split!r} (splits here: "
                        f"{', '.join(splits)}); set caption.split")
    by_id = {c.id: c for c in clips}
    in_memory = store_bytes(shapes, len(refs)) <= 2 * 2**30
    source = FeatureSource(store_path, [r.row for r in refs], in_memory=in_memory)
    loader = DataLoader(Clips(refs, source), batch_size=ccfg.batch_size, shuffle=False,
                        collate_fn=lambda items: collate(items, pad_id=tok.pad_id))
    t_load = time.perf_counter() - t0

    results: list[dict] = []
    t1 = time.perf_counter()
    with _common.progress("caption", len(refs), enabled=progress, every_n=ccfg.log_every) as bar:
        for batch in loader:
            ids, emo = decode_with_emotion(
                model, batch, tok, beam_size=ccfg.beam_size, max_length=ccfg.max_length,
                length_penalty=ccfg.length_penalty, use_cache=ccfg.prefix_cache,
                words_only=ccfg.vocabulary == "train", no_repeat_ngram=ccfg.no_repeat_ngram)
            pred = emo.argmax(dim=-1).tolist() if emo is not None else [None] * len(ids)
            for cid, seq, e in zip(batch["clip_id"], ids, pred):
                results.append({"image_id": cid, "caption": tok.decode(seq),
                                "emotion": train_emotions[e] if e is not None else None,
                                "emotion_index": int(e) if e is not None else -1,
                                # [CLS] counts in max_length: a caption that used every slot never emitted [SEP]
                                "pieces": len(seq), "ended": len(seq) < ccfg.max_length - 1})
            bar.advance(len(ids))
    t_decode = time.perf_counter() - t1

    images, annotations = [], []
    for r in refs:
        c = by_id[r.id]
        images.append({"id": r.id, "emotion": c.emotion, "emotion_index": c.emotion_index})
        for cap in c.captions:
            annotations.append({"image_id": r.id, "id": len(annotations), "caption": cap})
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / CAPTIONS_FILE, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / REFERENCES_FILE,
                      json.dumps({"images": images, "annotations": annotations}, indent=1, ensure_ascii=False) + "\n")

    notes = []
    if skipped:
        notes.append(f"{len(skipped)} clip(s) of split {ccfg.split!r} have no extracted features and were left out "
                     f"(e.g. {', '.join(skipped[:5])}; see the extraction's errors.jsonl)")
    if train_emotions != list(eval_emotions):
        notes.append(f"emotion classes differ: the run predicts {train_emotions}, the captioned dataset is labelled "
                     f"with {list(eval_emotions)}; accuracy counts clips whose true class name the run knows")
    empty = sum(1 for r in results if not r["caption"])
    unended = sum(1 for r in results if not r["ended"])
    if unended:
        notes.append(f"{unended} of {len(results)} caption(s) reached caption.max_length={ccfg.max_length} without "
                     "[SEP] (cut, not ended)")
    return {
        "timings": {"load_s": round(t_load, 3), "decode_s": round(t_decode, 3),
                    "captions_per_s": round(len(results) / t_decode, 3) if t_decode > 0 else None},
        "counts": {"clips": len(results), "skipped": len(skipped), "empty_captions": empty,
                   "unended_captions": unended,
                   "references": len(annotations)},
        "extra": {"run_dir": str(run_dir), "checkpoint": ccfg.checkpoint, "checkpoint_epoch": info.get("epoch"),
                  "store": str(store_path), "device": str(device), "emotion_names": train_emotions, "notes": notes,
                  "max_length": ccfg.max_length, "max_length_from": length_note or f"{ccfg.max_length}",
                  "vocabulary": ccfg.vocabulary, "dataset": dataset, "run_dataset": run_dataset,
                  "split": ccfg.split},
    }


def _run_emotions(run_dir: Path, n: int) -> list[str]:
    """The emotion class names the run was trained with (its saved config), checked against the model's count."""
    from pipeline.config import load_config

    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: the run has no config.yaml; rerun `ecpa train` for this run")
    names = list(load_config(cfg_path).data.emotions)
    if len(names) != n:
        raise CacheMismatchError(f"{cfg_path}: {len(names)} emotion classes in the run's config, the checkpoint "
                                 f"has {n}")
    return names


def run(cfg: Config, *, force: bool = False, progress: bool = True) -> dict:
    """Caption `cfg.caption.split` with the run `cfg` plans, unless a fresh output for the same key exists."""
    from stages.plan import plan

    plans = plan(cfg, upto="caption")
    p, tr, ex = plans["caption"], plans["train"], plans["extract"]
    if p.status() == "fresh" and not force:
        return read_record(p.out_dir)
    for parent, cmd in ((ex, "ecpa extract"), (tr, "ecpa train")):
        if parent.status() != "fresh":
            raise UserError(f"the {parent.name} output for this config is {parent.status()} ({parent.out_dir}); "
                            f"run `{cmd}` (or `ecpa run --upto {parent.name}`) with the same preset/--set first")
    (p.out_dir / "stage.json").unlink(missing_ok=True)
    p.out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, p.out_dir / "config.yaml")
    t0 = time.perf_counter()
    ccfg = dataclasses.replace(cfg.caption, max_length=p.config["max_length"])   # resolved, as keyed
    parts = caption_into(p.out_dir, run_dir=tr.out_dir, store_path=ex.out_dir / "store.zarr",
                         manifest_path=cfg.manifest_path, ccfg=ccfg, eval_emotions=cfg.data.emotions,
                         progress=progress, length_note=length_note(cfg), dataset=cfg.data.name,
                         run_dataset=cfg.data.name)
    parts["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    rec = StageRecord(stage="caption", key=p.key, version=VERSION, config=p.config, parents=p.parents, **parts)
    write_record(p.out_dir, rec)
    return rec.to_dict()


def print_caption_summary(rec: dict, out_dir: Path, n_show: int = 3) -> None:
    c, t = rec.get("counts", {}), rec.get("timings", {})
    out.print(f"[green]caption[/] {rec['key'][:16]}: {c.get('clips')} clips "
                  f"({t.get('captions_per_s')} captions/s), {c.get('skipped', 0)} skipped, "
                  f"{c.get('empty_captions', 0)} empty -> {out_dir}", highlight=False)
    _common.print_random_note(_common.random_extractors(caption_dir=out_dir))
    ex = rec.get("extra", {})
    if ex.get("max_length_from"):
        out.print(f"  max length {ex['max_length_from']}; vocabulary: {ex.get('vocabulary', 'all')}", highlight=False)
    for note in rec.get("extra", {}).get("notes", []):
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    path = Path(out_dir) / CAPTIONS_FILE
    if path.is_file():
        for r in json.loads(path.read_text())[:n_show]:
            out.print(f"  {r['image_id']}: {r['caption']!r} [{r['emotion']}]", highlight=False)


@user_errors
def command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Decode again even when a fresh output exists.")] = False,
) -> None:
    """Decode captions (and emotion predictions) for caption.split with the run this config trains."""
    from stages.plan import plan

    cfg = resolve_config(preset, set, cache)
    rec = run(cfg, force=force)
    print_caption_summary(rec, plan(cfg, upto="caption")["caption"].out_dir)
