"""What each stage of the chain is: its code version, the config slice its key hashes, and its parents.

    key(stage) = sha256(stage, VERSION, config slice, parent keys)      (pipeline.records.stage_key)

A stage reads only its slice of the config, and only that slice goes into its key; knobs (batch size,
workers, device, progress) stay out, so changing them never recomputes anything. File paths are keyed by
the contents they point at (weights, vocabulary, lexicon), so an edited file recomputes and a moved one
does not. Bump a VERSION when what the stage computes changes; the history of each bump is beside it.

The stage bodies live with their concern (pipeline/<stage>/stage.py, `body` below); pipeline.chain.plan
turns these specs into keys and folders, pipeline.chain.run walks them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.config import Config, section_slice
from pipeline.errors import UserError
from pipeline.records import file_sha256

EXTRACT_VERSION = "4"
"""Bump when what extraction computes changes (decoding, sampling, extractor maths, store schema).
4: the key no longer holds the videos (per-clip fingerprints in the store), face/source array, fallback boxes."""
TRAIN_VERSION = "4"
"""Bump when what training computes changes (model maths, losses, data order).
4: MLM masking drawn per caption pair in the DataLoader workers (seeded by seed, epoch, rank, index)."""
CAPTION_VERSION = "2"
"""Bump when decoding changes what it produces."""
SCORE_VERSION = "2"
"""Bump with the scorer (tokenisation, metric set)."""

RANDOM_INIT = "random-init"


def weight_provenance(cfg: Config, write_memo: bool = True) -> dict[str, str]:
    """sha256 of each extractor checkpoint file, 'random-init' under extract.random_init, 'missing:<path>' when
    absent (extraction then stops with a message saying which file goes where). Memoised in the cache's
    hashes.json; `write_memo=False` reads the memo only (`ecpa status` writes nothing)."""
    ex = cfg.extract
    if ex.random_init:
        return {"er": RANDOM_INIT, "au": RANDOM_INIT, "swin": RANDOM_INIT}
    out = {}
    for name, rel in (("er", ex.er_weights), ("au", ex.au_weights), ("swin", ex.swin_weights)):
        path = Path(rel) if Path(rel).is_absolute() else Path(ex.weights_dir) / rel
        out[name] = (file_sha256(path, memo_dir=cfg.cache_dir, write_memo=write_memo) if path.is_file()
                     else f"missing:{path}")
    return out


def random_weights(weights: dict[str, str]) -> list[str]:
    """The extractors whose weights are random (er, au, swin order): every summary says so."""
    order = {"er": 0, "au": 1, "swin": 2}
    return sorted((k for k, v in weights.items() if v == RANDOM_INIT), key=lambda k: (order.get(k, 9), k))


def extract_slice(cfg: Config, weights: dict[str, str] | None = None) -> dict:
    """Frame sampling, crops, extractor names, weight sha256s, emotion classes. Not batch size, workers or
    device (knobs), and not the weight file *paths* (their contents are keyed instead: `weights`, computed
    once per command by pipeline.chain.plan and passed in)."""
    s = section_slice(cfg.extract)
    for k in ("weights_dir", "er_weights", "au_weights", "swin_weights", "demo_fit", "demo_fit_epochs"):
        s.pop(k)
    s["weights"] = dict(weights) if weights is not None else weight_provenance(cfg)
    s["num_emotions"] = len(cfg.data.emotions)
    return s


def _content_key(path: Path | None, missing: Path) -> str:
    return f"sha256:{file_sha256(path)}" if path is not None and path.is_file() else f"missing:{missing}"


def train_slice(cfg: Config) -> dict:
    """Model, prompt, loss and optimiser fields, the seed, and the split/class definition. The vocabulary
    and the initial weights are keyed by their files' contents (an edited vocab.txt retrains, the same file
    elsewhere does not)."""
    model = section_slice(cfg.model)
    if model["tokenizer"]:
        vocab = Path(model["tokenizer"])
        vocab = vocab / "vocab.txt" if vocab.is_dir() else vocab
        model["tokenizer"] = _content_key(vocab, vocab)
    if model["init_from"]:
        from pipeline.train.bert_init import WEIGHT_FILES

        folder = Path(model["init_from"])
        model["init_from"] = _content_key(next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None),
                                          folder)
    return {
        "model": model,
        "train": section_slice(cfg.train),
        "data": {"emotions": cfg.data.emotions, "val_fraction": cfg.data.val_fraction},
    }


def caption_slice(cfg: Config, length_from: Config | None = None) -> dict:
    """Decoding fields (split, greedy/beam, beam size, length penalty, max length, vocabulary, checkpoint), with
    caption.max_length=0 resolved to the number the training captions need (`length_from`: the config the run
    was trained with, when another dataset is captioned), so the key hashes the length actually used."""
    from pipeline.train.tokenizer import data_length

    out = section_slice(cfg.caption)
    if out["max_length"] == 0:
        try:
            out["max_length"] = data_length(length_from or cfg)[0]
        except UserError as e:
            # no vocabulary or no training captions yet: training cannot run either, so nothing can be
            # captioned under this key; `ecpa status` still shows the chain
            out["max_length"] = f"unresolved: {e}"
    return out


def score_slice(cfg: Config) -> dict:
    """The score fields; the emotion lexicon by its contents (and left out when none is set, so scores
    computed before the field existed keep their keys)."""
    s = section_slice(cfg.score)
    lexicon = s.pop("emotion_lexicon")
    if lexicon:
        from pipeline.score.emotion import lexicon_hash

        s["emotion_lexicon"] = f"sha256:{lexicon_hash(lexicon)}" if Path(lexicon).is_dir() else f"missing:{lexicon}"
    return s


@dataclass
class StageSpec:
    """One stage of the chain."""

    name: str
    version: str
    """The code version in the key (bump it when the stage computes something else)."""
    parents: tuple[str, ...]
    """The parent keys the key chains, by name ('extract', 'manifest', 'videos', ...)."""
    body: str
    """'module:function' of the stage body, imported when the stage runs (pipeline.chain.run)."""
    command: str
    """The command that computes it alone (for messages)."""

    def run_function(self) -> Callable:
        import importlib

        module, func = self.body.split(":")
        return getattr(importlib.import_module(module), func)


SPECS: dict[str, StageSpec] = {
    "extract": StageSpec("extract", EXTRACT_VERSION, ("dataset",), "pipeline.extract.stage:run", "ecpa extract"),
    "train": StageSpec("train", TRAIN_VERSION, ("extract", "manifest", "videos"), "pipeline.train.stage:run",
                       "ecpa train"),
    "caption": StageSpec("caption", CAPTION_VERSION, ("train", "features", "videos"), "pipeline.caption.stage:run",
                         "ecpa caption"),
    "score": StageSpec("score", SCORE_VERSION, ("caption", "references"), "pipeline.score.stage:run", "ecpa score"),
}
"""The chain, in order: extract -> train -> caption -> score."""

STAGES = list(SPECS)
