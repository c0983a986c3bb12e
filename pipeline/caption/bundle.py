"""A trained model as a self-contained folder: `export_bundle(run_dir, out)` and `load_captioner(out)`.

    model.safetensors   the ECPA weights (safetensors, no pickle)
    model.json          what rebuilds the network: model config, number of emotion classes, feature shapes,
                        AU names, default decoding, and where it came from (train key, checkpoint, epoch)
    config.yaml         the run's resolved config, as trained
    tokenizer.json      the caption tokenizer (HF `tokenizers`), and vocab.txt: its vocabulary, one token a line
    emotions.txt        the emotion class names in class-index order
    extractors.json     stage one's settings (extract.*), the sha256 of each extractor checkpoint the model
                        was trained on (or "random-init" with the seed), the number of ER classes
    MANIFEST.sha256     "<sha256>  <file>" for every file above, written last

`load_captioner` checks the manifest before reading anything else: a folder with a file missing or altered
is refused with the file and the reason. The extractor checkpoints are not copied (they are public, frozen
and large): `load_captioner(folder, weights_dir=...)` finds them and checks their sha256 against
extractors.json before the first video is captioned.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pipeline.errors import UserError

FORMAT = "ecpa-model"
FORMAT_VERSION = 1
MANIFEST = "MANIFEST.sha256"
FILES = ["model.safetensors", "model.json", "config.yaml", "tokenizer.json", "caption_pieces.json", "vocab.txt",
         "emotions.txt", "extractors.json"]
"""Every file of a bundle besides the manifest; all are checksummed."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_bundle(run_dir: Path | str, out_dir: Path | str, *, checkpoint: str = "best", seed: int = 0,
                  force: bool = False) -> Path:
    """Write the model folder of training run `run_dir` into `out_dir` (built under a temporary name, then
    renamed: a folder is either whole or absent). `seed`: stage one's random-init seed. Refuses an existing
    non-empty `out_dir` unless `force`."""
    from safetensors.torch import save_model

    from pipeline.caption.captioner import captioner_from_run
    from pipeline.config import load_config
    from pipeline.records import atomic_write_text, read_record

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not force:
            raise UserError(f"{out_dir}: exists and is not empty; choose another folder or pass --force to replace it")
    cap = captioner_from_run(run_dir, checkpoint=checkpoint, device="cpu", seed=seed)
    cfg = load_config(run_dir / "config.yaml")
    rec = read_record(run_dir) or {}
    ck = _checkpoint_info(run_dir, checkpoint)

    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(cap.model, str(tmp / "model.safetensors"), metadata={"format": "pt", "ecpa_train_key": rec.get("key", "")})
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model_config": ck["meta"]["model_config"], "num_emotions": ck["meta"]["num_emotions"],
        "shapes": ck["meta"]["shapes"], "au_names": cap.au_names,
        "decoding": {"beam_size": cfg.caption.beam_size, "max_length": cap.max_length,
                     "length_penalty": cfg.caption.length_penalty, "words_only": cap.words_only,
                     "no_repeat_ngram": cap.no_repeat_ngram},
        "top_aus": cfg.model.top_k,
        "source": {"run_dir": str(run_dir), "train_key": rec.get("key"), "checkpoint": checkpoint,
                   "epoch": ck.get("epoch"), "parents": rec.get("parents", {})},
    }
    atomic_write_text(tmp / "model.json", json.dumps(meta, indent=2) + "\n")
    atomic_write_text(tmp / "config.yaml", cfg.to_yaml())
    if cap.tokenizer.caption_pieces is None:
        raise UserError(f"{run_dir}: the run has no caption_pieces.json (trained before decoding was limited to the "
                        "training vocabulary); retrain it to export")
    cap.tokenizer.save(tmp)
    vocab = cap.tokenizer.tok.get_vocab(with_added_tokens=True)
    atomic_write_text(tmp / "vocab.txt", "".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    atomic_write_text(tmp / "emotions.txt", "".join(e + "\n" for e in cap.emotions))
    atomic_write_text(tmp / "extractors.json", json.dumps(cap.setup.to_dict(), indent=2) + "\n")
    atomic_write_text(tmp / MANIFEST, "".join(f"{_sha256(tmp / name)}  {name}\n" for name in FILES))
    if out_dir.is_dir():
        shutil.rmtree(out_dir)
    elif out_dir.exists():
        out_dir.unlink()  # a file in the way, replaced under --force
    tmp.rename(out_dir)
    return out_dir


def _checkpoint_info(run_dir: Path, which: str) -> dict:
    import torch

    from pipeline.train.loop import CKPT_DIR

    path = run_dir / CKPT_DIR / f"{which}.pt"
    ck = torch.load(path, map_location="cpu", weights_only=False)
    return {k: v for k, v in ck.items() if k in ("meta", "epoch")}


def verify_bundle(folder: Path | str) -> None:
    """Refuse a model folder whose manifest is missing, or whose files are missing or altered (by sha256)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such model folder (make one with `ecpa export RUN -o {folder}`)")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise UserError(f"{folder}: not an exported model folder, or damaged: {MANIFEST} is missing")
    recorded: dict[str, str] = {}
    for no, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise UserError(f"{manifest}:{no}: not a '<sha256>  <file>' line; the manifest is damaged")
        recorded[name] = digest
    problems = []
    for name in FILES:
        path = folder / name
        if name not in recorded:
            problems.append(f"{name}: not listed in {MANIFEST}")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        else:
            got = _sha256(path)
            if got != recorded[name]:
                problems.append(f"{name}: altered (sha256 {got[:16]}..., the manifest says {recorded[name][:16]}...)")
    if problems:
        raise UserError(f"{folder}: refused, the model folder is not as exported: {'; '.join(problems)}")


def load_captioner(folder: Path | str, *, device: str = "auto", weights_dir: str | Path | None = None,
                   beam_size: int | None = None, max_length: int | None = None, top_aus: int | None = None):
    """A `pipeline.caption.captioner.Captioner` from an exported model folder (checked against its manifest first).
    `weights_dir`: where the extractor checkpoints are (default: the folder recorded at export; not needed
    for random-init extractors). `beam_size` / `max_length`: decoding, default as the model was evaluated."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model
    from tokenizers import Tokenizer

    from pipeline.caption.captioner import Captioner, ExtractorSetup
    from pipeline.config import ModelConfig
    from pipeline.train.model import build_model
    from pipeline.extract.store import StoreShapes
    from pipeline.train.tokenizer import CaptionTokenizer
    from pipeline.train.loop import resolve_device

    folder = Path(folder)
    verify_bundle(folder)
    meta = _read_json(folder / "model.json")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{folder / 'model.json'}: format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                        f"this code reads {FORMAT!r} version {FORMAT_VERSION}")
    setup = ExtractorSetup.from_dict(_read_json(folder / "extractors.json"), str(folder / "extractors.json"))
    if weights_dir is not None:
        setup.extract.weights_dir = str(weights_dir)
    emotions = [line.strip() for line in (folder / "emotions.txt").read_text().splitlines() if line.strip()]
    pieces = _read_json(folder / "caption_pieces.json").get("caption_pieces")
    tok = CaptionTokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")), pieces)
    try:
        model = build_model(ModelConfig(**meta["model_config"]), tok, num_emotions=int(meta["num_emotions"]),
                            shapes=StoreShapes(**meta["shapes"]))
    except (KeyError, TypeError) as e:
        raise UserError(f"{folder / 'model.json'}: cannot rebuild the model ({type(e).__name__}: {e})") from None
    try:
        load_model(model, str(folder / "model.safetensors"), strict=True)
    except (SafetensorError, RuntimeError) as e:
        raise UserError(f"{folder / 'model.safetensors'}: does not fit the model of model.json ({e})") from None
    model.to(resolve_device(device)).eval()
    dec = meta.get("decoding", {})
    return Captioner(model, tok, emotions, setup, au_names=meta.get("au_names") or [], shapes=meta["shapes"],
                     beam_size=beam_size or dec.get("beam_size", 1), max_length=max_length or dec.get("max_length", 20),
                     words_only=dec.get("words_only", True), no_repeat_ngram=dec.get("no_repeat_ngram", 0),
                     length_penalty=dec.get("length_penalty", 1.0),
                     top_aus=meta.get("top_aus", 3) if top_aus is None else top_aus, source=str(folder))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data
