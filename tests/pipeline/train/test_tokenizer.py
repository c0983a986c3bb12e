"""Caption tokenizer: BERT vocabulary ids, WordPiece trained on training captions only, save/reload."""
from __future__ import annotations

import pytest

from pipeline.errors import UserError
from pipeline.train.tokenizer import build_tokenizer, from_bert_vocab, load_tokenizer, train_wordpiece


def test_bert_vocab_ids(bert_vocab):
    tok = from_bert_vocab(bert_vocab)
    # bert-base-uncased: [PAD]=0 [CLS]=101 [SEP]=102 [MASK]=103, "a"=1037 "man"=2158 "."=1012
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 101, 102, 103)
    ids = tok.encode("A man.", 10)
    assert ids == [101, 1037, 2158, 1012, 102]
    assert tok.decode(ids) == "a man."
    assert len(tok.encode("word " * 30, 8)) == 8 and tok.encode("word " * 30, 8)[-1] == 102


def test_wordpiece_uses_training_captions_only(tmp_path):
    train = ["a man smiles at the camera", "the woman frowns and looks down"] * 3
    tok = build_tokenizer("", train, vocab_size=200)
    assert tok.decode(tok.encode("the woman smiles", 20)) == "the woman smiles"
    # 'zebra' never appears in training captions: pieces of it fall back to [UNK] or characters not seen
    assert "zebra" not in tok.tok.get_vocab()
    # the same captions always give the same vocabulary (the stage key promises the same model)
    assert build_tokenizer("", list(reversed(train)), vocab_size=200).tok.get_vocab() == tok.tok.get_vocab()
    # frequent whole words are single tokens; an unseen character makes its word [UNK]
    assert len(tok.encode("the", 5)) == 3 and tok.encode("zebra", 5)[1] == tok.unk_id
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode("a man frowns", 10) == tok.encode("a man frowns", 10)
    assert again.vocab_size == tok.vocab_size


def test_missing_vocab_and_tokenizer_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no BERT vocabulary"):
        from_bert_vocab(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(UserError, match="no training captions"):
        train_wordpiece([], 100)
