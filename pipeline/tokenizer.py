"""Caption tokenizer: a local BERT WordPiece vocabulary, or a WordPiece vocabulary trained on the
training captions with HF `tokenizers` (DESIGN.md, "Stage two model").

Either way the run saves the tokenizer as `tokenizer.json` in its folder and every later use (resume,
caption, score) reloads that file, so a run always decodes with the vocabulary it was trained with.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError

TOKENIZER_FILE = "tokenizer.json"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class CaptionTokenizer:
    """Thin wrapper over a `tokenizers.Tokenizer` with BERT's special tokens.

    encode(text, max_len) -> [CLS] ids.. [SEP] (truncated to max_len); decode(ids) -> text (specials dropped)."""

    def __init__(self, tok):
        self.tok = tok
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
    if tokenizer_path:
        return from_bert_vocab(tokenizer_path)
    return train_wordpiece(train_captions, vocab_size)


def load_tokenizer(run_dir: Path | str) -> CaptionTokenizer:
    """The tokenizer a run saved (`<run_dir>/tokenizer.json`)."""
    from tokenizers import Tokenizer

    path = Path(run_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"{path}: the run has no tokenizer.json; rerun `ecpa train` for this run")
    return CaptionTokenizer(Tokenizer.from_file(str(path)))
