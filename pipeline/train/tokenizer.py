"""Caption tokenizer: a local BERT WordPiece vocabulary, or a WordPiece vocabulary trained on the
training captions with HF `tokenizers` (DESIGN.md, "Stage two model").

Either way the run saves the tokenizer as `tokenizer.json` in its folder and every later use (resume,
caption, score) reloads that file, so a run always decodes with the vocabulary it was trained with.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from typing import TYPE_CHECKING

from pipeline.errors import UserError

if TYPE_CHECKING:
    from pipeline.config import Config

TOKENIZER_FILE = "tokenizer.json"
PIECES_FILE = "caption_pieces.json"
"""Beside tokenizer.json: the word pieces that occur in the training captions (what decoding may emit)."""
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class CaptionTokenizer:
    """Thin wrapper over a `tokenizers.Tokenizer` with BERT's special tokens.

    encode(text, max_len) -> [CLS] ids.. [SEP] (truncated to max_len); decode(ids) -> text (specials dropped)."""

    def __init__(self, tok, caption_pieces: list[int] | None = None):
        self.tok = tok
        self.caption_pieces = caption_pieces
        """Sorted ids of the word pieces the training captions contain (specials excluded); None: not known."""
        ids = {s: tok.token_to_id(s) for s in SPECIALS}
        missing = [s for s, i in ids.items() if i is None]
        if missing:
            raise UserError(f"tokenizer lacks the special tokens {', '.join(missing)}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (ids[s] for s in SPECIALS)
        self.special_ids = frozenset(ids.values())

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def tokenize_words(self, text: str) -> list[int]:
        """Word-piece ids of `text` without [CLS]/[SEP]."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode(self, text: str, max_len: int) -> list[int]:
        """[CLS] + word pieces + [SEP], the word pieces cut so the whole fits `max_len`."""
        if max_len < 2:
            raise ValueError("max_len must leave room for [CLS] and [SEP]")
        return [self.cls_id, *self.tokenize_words(text)[: max_len - 2], self.sep_id]

    def note_captions(self, captions: list[str]) -> None:
        """Remember which word pieces `captions` (the training captions) use: decoding emits only these."""
        seen = {i for enc in self.tok.encode_batch(list(captions), add_special_tokens=False) for i in enc.ids}
        self.caption_pieces = sorted(seen - self.special_ids)

    def continuation_ids(self) -> list[int]:
        """Ids of the '##' pieces (they continue a word, so they cannot start a caption)."""
        return sorted(i for t, i in self.tok.get_vocab(with_added_tokens=True).items() if t.startswith("##"))

    def decode(self, ids) -> str:
        """Text of token ids; special tokens are skipped, word pieces joined (BERT's '##' rule)."""
        ids = [int(i) for i in ids if int(i) not in self.special_ids]
        return self.tok.decode(ids, skip_special_tokens=True).strip()

    def save(self, run_dir: Path | str) -> Path:
        path = Path(run_dir) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        self.tok.save(str(tmp))
        tmp.replace(path)
        if self.caption_pieces is not None:
            side = path.with_name(PIECES_FILE)
            tmp = side.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"caption_pieces": self.caption_pieces}) + "\n")
            tmp.replace(side)
        return path


def from_bert_vocab(vocab: Path | str) -> CaptionTokenizer:
    """A BERT WordPiece tokenizer (lower-casing, like bert-base-uncased) from a local vocab.txt or its folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = Path(vocab)
    if vocab.is_dir():
        vocab = vocab / "vocab.txt"
    if not vocab.is_file():
        raise UserError(f"model.tokenizer: no BERT vocabulary at {vocab} (give vocab.txt or the folder holding it, "
                        "or leave model.tokenizer empty to train a WordPiece vocabulary on the training captions)")
    # BertTokenizerFast(vocab_file=...)'s pipeline, built directly (same vocabulary, same splits)
    tok = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return CaptionTokenizer(tok)


def train_wordpiece(captions: list[str], vocab_size: int) -> CaptionTokenizer:
    """A WordPiece tokenizer (BERT normaliser and pre-tokeniser, lower case) whose vocabulary is learnt from
    `captions`: the special tokens, every character seen (word-initial and '##' continuation, so nothing
    is ever [UNK]), then whole words by frequency (ties alphabetical) up to `vocab_size`.

    Deterministic on purpose: `tokenizers`' WordPieceTrainer breaks frequency ties in hash order, and two
    trainings on the same captions gave different vocabularies (measured), which would make the same stage
    key train a different model. The tokenizer itself is a `tokenizers` WordPiece model."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    if not captions:
        raise UserError("no training captions to build a vocabulary from (is the train split empty?)")
    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words: Counter = Counter()
    for cap in captions:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(cap)))
    chars = sorted({ch for w in words for ch in w})
    vocab = list(SPECIALS) + chars + [f"##{ch}" for ch in chars]
    seen = set(vocab)
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")
    return CaptionTokenizer(tok)


def build_tokenizer(tokenizer_path: str, train_captions: list[str], vocab_size: int) -> CaptionTokenizer:
    """cfg.model.tokenizer given: that BERT vocabulary; empty: WordPiece trained on the TRAINING captions only."""
    tok = from_bert_vocab(tokenizer_path) if tokenizer_path else train_wordpiece(train_captions, vocab_size)
    tok.note_captions(train_captions)
    return tok


def load_tokenizer(run_dir: Path | str) -> CaptionTokenizer:
    """The tokenizer a run saved (`<run_dir>/tokenizer.json`)."""
    from tokenizers import Tokenizer

    path = Path(run_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"{path}: the run has no tokenizer.json; rerun `ecpa train` for this run")
    side = path.with_name(PIECES_FILE)
    pieces = json.loads(side.read_text())["caption_pieces"] if side.is_file() else None
    return CaptionTokenizer(Tokenizer.from_file(str(path)), pieces)


def piece_counts(tok: CaptionTokenizer, captions: list[str]) -> list[int]:
    """Word pieces per caption ([CLS]/[SEP] not counted)."""
    return [len(enc.ids) for enc in tok.tok.encode_batch(list(captions), add_special_tokens=False)]


LENGTH_PERCENTILE = 99
"""Decoding length from the data: this percentile of the training captions' lengths in word pieces."""


def decoding_length(counts: list[int], limit: int, percentile: float = LENGTH_PERCENTILE) -> int:
    """[CLS] + the `percentile`-th percentile of `counts` (an observed length, rounded up) + [SEP], at most
    `limit` (the model's caption positions). With fewer than 100 captions the 99th percentile is the longest."""
    if not counts:
        raise UserError("no training captions to derive caption.max_length from; set caption.max_length")
    ranked = sorted(counts)
    p = ranked[min(len(ranked) - 1, math.ceil(percentile / 100 * len(ranked)) - 1)]
    return max(2, min(limit, p + 2))


def data_length(cfg: Config) -> tuple[int, str]:
    """caption.max_length from the data: the 99th-percentile length in word pieces of the manifest's training
    captions (under the tokenizer the run uses) + [CLS]/[SEP], at most model.max_caption_len; and the sentence
    saying so. Memoised per manifest file and tokenizer settings (plan() asks several times per command)."""
    m = cfg.manifest_path
    st = m.stat() if m.is_file() else None
    ident = (str(m.resolve()), st.st_size if st else -1, st.st_mtime_ns if st else -1, cfg.model.tokenizer,
             cfg.model.vocab_size, cfg.model.max_caption_len)
    return _data_length(ident, cfg)


_LENGTHS: dict[tuple, tuple[int, str]] = {}


def _data_length(ident: tuple, cfg: Config) -> tuple[int, str]:
    if ident not in _LENGTHS:
        from pipeline.data.manifest import read_manifest

        if not cfg.manifest_path.is_file():
            raise UserError(f"{cfg.manifest_path}: no manifest to derive caption.max_length from; run `ecpa manifest` "
                            "or set caption.max_length")
        caps = [c for clip in read_manifest(cfg.manifest_path) if clip.split == "train" for c in clip.captions]
        if not caps:
            raise UserError(f"{cfg.manifest_path}: no training captions to derive caption.max_length from; "
                            "set caption.max_length")
        tok = build_tokenizer(cfg.model.tokenizer, caps, cfg.model.vocab_size)
        counts = piece_counts(tok, caps)
        n = decoding_length(counts, cfg.model.max_caption_len)
        capped = " (capped at model.max_caption_len)" if n < decoding_length(counts, 10**9) else ""
        what = "the training caption" if len(caps) == 1 else f"the {len(caps)} training captions"
        _LENGTHS[ident] = (n, f"{n} from {what}: {LENGTH_PERCENTILE}th percentile "
                              f"{n - 2} word pieces + [CLS]/[SEP], longest {max(counts)}{capped}")
    return _LENGTHS[ident]
