"""caption.max_length from the data (issue 18): on the real MAFW rows no reference is cut, the caption key
hashes the resolved length, and SwinBERT's 20 stays one --set away."""
from __future__ import annotations

import os

import pytest

from pipeline.train.tokenizer import decoding_length, from_bert_vocab, piece_counts


def _mafw_captions(samples) -> list[str]:
    return [line.split("\t")[3].strip() for line in (samples / "single_label.txt").read_text().splitlines() if line.strip()]


def test_real_mafw_references_fit_the_derived_length(mafw_samples, bert_vocab):
    caps = _mafw_captions(mafw_samples)
    tok = from_bert_vocab(bert_vocab)
    counts = piece_counts(tok, caps)
    n = decoding_length(counts, limit=50)
    assert all(c + 2 <= n for c in counts), (counts, n)           # [CLS] + every reference + [SEP]
    assert max(counts) + 2 == n                                    # < 100 captions: the longest decides
    assert any(c + 1 > 20 for c in counts), "SwinBERT's 20 would cut a real MAFW reference"
    # encode() at the derived length keeps every word piece
    for cap, c in zip(caps, counts):
        assert len(tok.encode(cap, n)) == c + 2


def test_decoding_length_percentile_and_cap():
    counts = list(range(1, 201))                     # 200 captions of 1..200 pieces
    assert decoding_length(counts, limit=10**6) == 198 + 2   # nearest rank: the 198th smallest
    assert decoding_length(counts, limit=50) == 50           # never above the model's positions
    assert decoding_length([3], limit=50) == 5


@pytest.fixture
def mafw_tree(tmp_path, mafw_samples, bert_vocab):
    """The three real clips laid out as the MAFW release (symlinks), all in the training split."""
    d = tmp_path / "mafw" / "data"
    (d / "clips").mkdir(parents=True)
    (d / "Labels").mkdir()
    split = d / "Train & Test Set" / "single" / "no_caption" / "set_1"
    split.mkdir(parents=True)
    lines = (mafw_samples / "single_label.txt").read_text().splitlines()
    for line in lines:
        name = line.split("\t")[0]
        os.symlink(mafw_samples / name, d / "clips" / name)
    (d / "Labels" / "single_label.txt").write_text("\n".join(lines) + "\n")
    (split / "train.txt").write_text("".join(f"{l.split(chr(9))[0]} {l.split(chr(9))[1]}\n" for l in lines[:2]))
    (split / "test.txt").write_text(f"{lines[2].split(chr(9))[0]} {lines[2].split(chr(9))[1]}\n")
    return [f"data.root={tmp_path / 'mafw'}", f"data.cache_root={tmp_path / 'cache'}", "data.val_fraction=0",
            f"model.tokenizer={bert_vocab}", "extract.random_init=true"]


def test_caption_key_hashes_the_resolved_length(mafw_tree, mafw_samples, bert_vocab):
    from pipeline.config import load_config
    from pipeline.caption import stage as caption
    from pipeline.chain.plan import prepare_and_plan as plan

    cfg = load_config("mafw", mafw_tree)
    assert cfg.caption.max_length == 0                          # the paper presets derive it
    train_caps = _mafw_captions(mafw_samples)[:2]
    want = max(piece_counts(from_bert_vocab(bert_vocab), train_caps)) + 2
    auto = plan(cfg, upto="caption")["caption"]
    assert auto.config["max_length"] == want > 20
    assert f"{want} from the 2 training captions" in caption.length_note(cfg)
    same = plan(load_config("mafw", mafw_tree + [f"caption.max_length={want}"]), upto="caption")["caption"]
    assert same.key == auto.key                                  # the number decides, not how it was given
    swinbert = plan(load_config("mafw", mafw_tree + ["caption.max_length=20"]), upto="caption")["caption"]
    assert swinbert.key != auto.key and swinbert.config["max_length"] == 20
    assert caption.length_note(load_config("mafw", mafw_tree + ["caption.max_length=20"])).startswith("20 as set")
    capped = plan(load_config("mafw", mafw_tree + ["model.max_caption_len=16"]), upto="caption")["caption"]
    assert capped.config["max_length"] == 16                     # never above the model's caption positions
