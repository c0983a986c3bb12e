"""pipeline.caption.decoding with words_only (caption.vocabulary=train, issue 18): only word pieces of the training
captions and [SEP] come out, never a '##' piece first; vocabulary=all (SwinBERT) would emit the others."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.caption.decoding import decode
from pipeline.errors import UserError
from pipeline.train.model import ECPA
from pipeline.train.tokenizer import build_tokenizer

WORDS = ["a", "and", "man", "woman", "talks", "the", "frown", "open", "mouth", "smile", "cries", "eyes", "wide", "nose"]
VOCAB = (["[PAD]"] + [f"[unused{i}]" for i in range(6)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
         + ["##s", "##ing", "##ed", "wrinkle", "sigh"])
TRAIN = ["a man talks", "the frown and the open mouth", "a woman cries", "the wide eyes", "a man yawns"]  # yawns: [UNK]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return build_tokenizer(str(path), TRAIN, vocab_size=0)


def _model(tok, favour: list[int], seed: int = 0) -> ECPA:
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden=32, layers=2, heads=4, intermediate=64, video_proj=16, top_k=2, max_caption_len=32)
    m = ECPA(cfg, vocab_size=tok.vocab_size, cls_id=tok.cls_id, sep_id=tok.sep_id, mask_id=tok.mask_id,
             pad_id=tok.pad_id, num_emotions=3, video_tokens=6, video_channels=8, er_dim=12, au_dim=10, num_aus=7)
    with torch.no_grad():
        m.mlm_bias[favour] = 6.0        # the tokens a words-only decoder must refuse are the likeliest ones
        m.mlm_bias[tok.sep_id] = 2.0
    return m


def _batch(B: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"vid": torch.randn(B, 6, 8, generator=g), "er": torch.randn(B, 4, 12, generator=g),
            "au_feats": torch.randn(B, 2, 7, 10, generator=g), "au_probs": torch.rand(B, 2, 7, generator=g)}


def test_caption_pieces_are_the_training_words(tok):
    names = {tok.tok.id_to_token(i) for i in tok.caption_pieces}
    assert names == set(" ".join(TRAIN).split()) - {"yawns"}   # [UNK] is not a word: never allowed
    assert not any(n.startswith("[unused") for n in names)


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("use_cache", [True, False])
def test_words_only_never_emits_unused_unseen_or_leading_continuation(tok, beam, use_cache):
    unused = [tok.tok.token_to_id(f"[unused{i}]") for i in range(6)]
    cont = tok.continuation_ids()
    unseen = [tok.tok.token_to_id(w) for w in ("smile", "nose", "wrinkle", "sigh")]
    model = _model(tok, unused + cont + unseen + [tok.unk_id])
    batch = _batch()
    free = decode(model, batch, tok, beam_size=beam, max_length=8, use_cache=use_cache)
    bad = set(unused) | set(cont) | set(unseen) | {tok.unk_id}
    assert any(t in bad for ids in free for t in ids), "the unrestricted decoder should emit them here"
    words = decode(model, batch, tok, beam_size=beam, max_length=8, use_cache=use_cache, words_only=True)
    allowed = set(tok.caption_pieces)
    for ids in words:
        assert ids, "a caption starts with a word, not [SEP]"
        assert set(ids) <= allowed, [tok.tok.id_to_token(t) for t in ids]
        assert not tok.tok.id_to_token(ids[0]).startswith("##")


def test_no_leading_continuation_even_when_the_training_captions_hold_one(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    tok = build_tokenizer(str(path), ["a man talking", "the frowns"], vocab_size=0)  # talk##ing, frown##s
    cont = [i for i in tok.continuation_ids() if i in tok.caption_pieces]
    assert cont, "the training captions use '##' pieces"
    model = _model(tok, cont)
    for beam in (1, 2):
        for ids in decode(model, _batch(), tok, beam_size=beam, max_length=6, words_only=True):
            assert ids and ids[0] not in cont


def test_words_only_without_known_pieces_is_a_user_error(tok):
    from pipeline.train.tokenizer import CaptionTokenizer

    bare = CaptionTokenizer(tok.tok)     # a run trained before caption_pieces.json existed
    with pytest.raises(UserError, match="caption.vocabulary=all"):
        decode(_model(tok, []), _batch(), bare, max_length=4, words_only=True)


def test_caption_pieces_survive_save_and_load(tok, tmp_path):
    from pipeline.train.tokenizer import load_tokenizer

    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).caption_pieces == tok.caption_pieces
