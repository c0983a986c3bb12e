"""`ecpa score` with score.emotion_lexicon: Acc_sw, Acc_c, BFS, CFS in scores.json, the key, the printout,
`ecpa compare`'s reader and the sweep CSV; absent (not zero) without a lexicon."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from pipeline.chain.compare import read_scores
from pipeline.config import load_config
from pipeline.score.emotion import EMOTION_METRICS
from stages._common import java_available

pytestmark = pytest.mark.skipif(not java_available(), reason="java not on PATH (PTB tokenizer)")


@pytest.fixture
def caption_dir(tmp_path):
    d = tmp_path / "captions"
    d.mkdir()
    results = [{"image_id": "v1", "caption": "a happy man is crying", "emotion": "happiness"},
               {"image_id": "v2", "caption": "a man walks", "emotion": "anger"},
               {"image_id": "v3", "caption": "an angry woman shouts", "emotion": "anger"}]
    refs = {"images": [{"id": "v1", "emotion": "happiness"}, {"id": "v2", "emotion": "anger"},
                       {"id": "v3", "emotion": "anger"}],
            "annotations": [{"image_id": "v1", "id": 0, "caption": "a happy man smiles"},
                            {"image_id": "v2", "id": 1, "caption": "an angry man walks"},
                            {"image_id": "v3", "id": 2, "caption": "an angry woman shouts"}]}
    (d / "captions.json").write_text(json.dumps(results))
    (d / "references.json").write_text(json.dumps(refs))
    return d


@pytest.fixture
def lexicon(tmp_path):
    d = tmp_path / "lexicon"
    d.mkdir()
    (d / "joy.txt").write_text("happy\n")
    (d / "sadness.txt").write_text("crying\n")
    (d / "anger.txt").write_text("angry\n")
    return d


def _scfg(lexicon=""):
    return SimpleNamespace(metrics=["Bleu_4", "METEOR", "ROUGE_L", "CIDEr"], meteor=False, emotion_lexicon=str(lexicon))


def test_lexicon_adds_the_four_metrics(tmp_path, caption_dir, lexicon):
    from pipeline.score.stage import score_into

    out = tmp_path / "scores"
    parts = score_into(out, caption_dir, _scfg(lexicon))
    data = json.loads((out / "scores.json").read_text())
    m = data["metrics"]
    # v1: right joy + wrong sadness; v2: none; v3: right anger -> N_r 2, N_w 1, phi 1, N_r1 2, N_h 1
    assert data["emotion_word_counts"] == {"N": 3, "N_r": 2, "N_w": 1, "phi": 1, "N_r1": 2, "N_h": 1}
    assert m["Acc_sw"] == pytest.approx(2 / 4)
    acc_c = math.exp(1 / (1 - 2 + 1e-4)) * 2 / 3
    assert m["Acc_c"] == pytest.approx(acc_c)
    bleu = 0.8 * (0.1 * m["Bleu_1"] + 0.2 * m["Bleu_2"] + 0.3 * m["Bleu_3"] + 0.4 * m["Bleu_4"])
    assert m["BFS"] == pytest.approx(bleu + 0.1 * (0.5 + acc_c))
    assert m["CFS"] == pytest.approx(0.8 * m["CIDEr"] + 0.1 * (0.5 + acc_c))
    assert set(EMOTION_METRICS) <= set(parts["extra"]["metrics"])
    # what `ecpa compare` and the sweep read (a sweep point's metrics are read_scores of its score output)
    scores = read_scores(out)
    assert set(EMOTION_METRICS) <= set(scores)
    from pipeline.chain.sweep import SweepPoint, write_csv

    csv_path = write_csv(tmp_path / "sweep.csv", ["model.top_k"], [SweepPoint({"model.top_k": 3}, {}, scores)])
    header, row = csv_path.read_text().splitlines()
    cells = dict(zip(header.split(","), row.split(",")))
    assert float(cells["Acc_sw"]) == pytest.approx(0.5) and float(cells["CFS"]) == pytest.approx(m["CFS"])


def test_without_lexicon_the_metrics_are_absent(tmp_path, caption_dir):
    from pipeline.score.stage import score_into

    out = tmp_path / "scores"
    score_into(out, caption_dir, _scfg())
    data = json.loads((out / "scores.json").read_text())
    assert not set(EMOTION_METRICS) & set(data["metrics"])
    assert "emotion_word_counts" not in data
    assert not set(EMOTION_METRICS) & set(read_scores(out))


def test_printed_table_shows_them(tmp_path, caption_dir, lexicon, capsys):
    from pipeline.score import stage as score

    out = tmp_path / "scores"
    parts = score.score_into(out, caption_dir, _scfg(lexicon))
    rec = {"config": {"metrics": ["Bleu_4"]}, "counts": {"clips": 3}, **parts}
    from stages.score import print_scores

    print_scores(rec, out)
    captured = capsys.readouterr()
    printed = captured.out + captured.err       # the table is a result (stdout), notes are diagnostics
    for name in EMOTION_METRICS:
        assert name in printed
    assert "50.00" in printed  # Acc_sw x100


def test_score_key_follows_the_lexicon_contents(tmp_path, lexicon):
    from pipeline.chain.specs import score_slice as config_slice

    plain = config_slice(load_config("demo"))
    assert "emotion_lexicon" not in plain  # keys of scores made without a lexicon do not move
    with_lex = config_slice(load_config("demo", [f"score.emotion_lexicon={lexicon}"]))
    assert with_lex["emotion_lexicon"].startswith("sha256:")
    (lexicon / "fear.txt").write_text("scared\n")
    assert config_slice(load_config("demo", [f"score.emotion_lexicon={lexicon}"])) != with_lex


def test_bad_lexicon_stops_before_scoring(tmp_path, caption_dir):
    from pipeline.errors import UserError
    from pipeline.score.stage import score_into

    with pytest.raises(UserError, match="not a folder"):
        score_into(tmp_path / "scores", caption_dir, _scfg(tmp_path / "missing"))
    assert not (tmp_path / "scores" / "scores.json").exists()
