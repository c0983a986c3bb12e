"""pipeline.score.coco against pycocoevalcap's own scorers on a small fixed caption set.

One `score_captions_per_clip` call and one reference computation (pycocoevalcap's PTBTokenizer, Bleu,
Meteor, Rouge, Cider called directly) are shared by the module: each METEOR JVM costs seconds."""
from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from pipeline.score import coco as scoring
from pipeline.errors import UserError
from pipeline.score.coco import JAVA_HINT, java_available

pytestmark = pytest.mark.java

GTS = {
    "v1": ["a man is talking to the camera.", "a man speaks with a frown on his face"],
    "v2": ["the woman looks sad and cries.", "A woman is crying, tears on her cheeks."],
    "v3": ["two people laugh together at a joke", "they are laughing happily"],
    "same": ["an old lady smiles warmly while she waves her hand at the children"],
    "disjoint": ["bright yellow taxi crosses rainy street"],
    "v6": ["he shouts angrily, the eyebrows lowered and the mouth open."],
}
RES = {
    "v1": "a man talks to the camera",
    "v2": "a woman cries with tears",
    "v3": "two people are laughing",
    "same": "an old lady smiles warmly while she waves her hand at the children",
    "disjoint": "quantum physics lecture notes",
    "v6": "a man shouts with his mouth open",
}


def _children_running(name: str) -> list[int]:
    """PIDs of live child processes of this process whose command line contains `name`."""
    me = os.getpid()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            state = stat.rsplit(")", 1)[1].split()[0]
            cmd = (d / "cmdline").read_bytes().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if ppid == me and name in cmd and state != "Z":
            out.append(int(d.name))
    return out


@pytest.fixture(scope="module")
def both():
    """(ours, reference): score_captions_per_clip, and pycocoevalcap's pipeline as COCOEvalCap.evaluate runs it.
    pycocoevalcap's METEOR JVM is started first so that its start-up overlaps ours."""
    if not java_available():
        pytest.skip("java not on PATH")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    meteor = Meteor()
    try:
        ours = scoring.score_captions_per_clip(GTS, RES, metrics=scoring.ALL_METRICS)
        tok = PTBTokenizer()
        gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in GTS.items()})
        res = tok.tokenize({k: [{"caption": v}] for k, v in RES.items()})
        out, per = {}, {k: {} for k in GTS}
        score, scores = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            out[f"Bleu_{n + 1}"] = score[n]
            for k, s in zip(gts, scores[n]):
                per[k][f"Bleu_{n + 1}"] = s
        out["METEOR"], scores = meteor.compute_score(gts, res)
        for k, s in zip(gts, scores):
            per[k]["METEOR"] = s
    finally:
        meteor.__del__()  # pycocoevalcap closes its JVM only there
        del meteor
        gc.collect()
    for name, scorer in (("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        out[name], scores = scorer.compute_score(gts, res)
        for k, s in zip(gts, scores):
            per[k][name] = s
    return ours, (out, per)


@pytest.fixture(scope="module")
def ours(both):
    return both[0]


@pytest.fixture(scope="module")
def reference(both):
    return both[1]


def test_corpus_scores_equal_pycocoevalcap(ours, reference):
    corpus, _ = ours
    ref, _ = reference
    assert list(corpus) == list(scoring.ALL_METRICS)
    for m in scoring.ALL_METRICS:
        assert corpus[m] == pytest.approx(ref[m], rel=1e-9, abs=1e-12), m


def test_per_clip_scores_equal_pycocoevalcap(ours, reference):
    _, per = ours
    _, ref = reference
    assert set(per) == set(GTS)
    for k in GTS:
        for m in scoring.ALL_METRICS:
            assert per[k][m] == pytest.approx(float(ref[k][m]), rel=1e-9, abs=1e-12), (k, m)


def test_identical_high_disjoint_zero(ours):
    _, per = ours
    assert per["same"]["Bleu_4"] > 0.99
    assert per["same"]["CIDEr"] > 5.0  # 10 x cosine 1 when the n-grams carry any IDF weight
    assert per["same"]["METEOR"] > 0.9
    assert per["same"]["ROUGE_L"] > 0.99
    for m in ("Bleu_1", "Bleu_4", "CIDEr", "METEOR", "ROUGE_L"):
        assert per["disjoint"][m] < 1e-6, m


def test_no_jvm_left_behind(ours):
    assert _children_running("meteor-1.5.jar") == []
    assert _children_running("PTBTokenizer") == []


def test_meteor_off_and_metric_subset(ours, monkeypatch):
    """meteor=False starts no METEOR JVM; asking for CIDEr alone computes CIDEr alone."""
    started = []
    monkeypatch.setattr(scoring, "MeteorProcess", lambda *a, **k: started.append(1))
    gts = {k: GTS[k] for k in ("v1", "v2", "same")}
    res = {k: RES[k] for k in gts}
    got = scoring.score_captions(gts, res, metrics=("CIDEr", "METEOR"), meteor=False)
    assert started == []
    assert list(got) == ["CIDEr"]
    got = scoring.score_captions(gts, res, metrics=("Bleu_4",), meteor=False)
    assert list(got) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]


def test_ptb_tokenize_matches_pycocoevalcap_rules():
    if not java_available():
        pytest.skip("java not on PATH")
    got = scoring.ptb_tokenize(["A Man, smiling.", "", "He's happy!\nyes"])
    assert got == ["a man smiling", "", "he 's happy yes"]


def test_java_missing_says_how_to_install(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError) as e:
        scoring.score_captions({"a": ["x"]}, {"a": "x"}, meteor=False)
    assert JAVA_HINT in str(e.value)
    assert "PTB tokenizer" in str(e.value)


def test_mismatched_clips_are_named():
    with pytest.raises(UserError, match="no caption.*'b'"):
        scoring.score_captions({"a": ["x"], "b": ["y"]}, {"a": "x"})
    with pytest.raises(UserError, match="empty reference list"):
        scoring.score_captions({"a": []}, {"a": "x"})
    with pytest.raises(UserError, match="unknown metric"):
        scoring.score_captions({"a": ["x"]}, {"a": "x"}, metrics=("BLEU4",))


def test_emotion_accuracy_counts_only_known():
    acc, n = scoring.emotion_accuracy({"a": 1, "b": 2, "c": None, "d": -1}, {"a": 1, "b": 0, "c": 3, "d": 4})
    assert (acc, n) == (0.5, 2)
    assert scoring.emotion_accuracy({"a": None}, {"a": 1}) == (None, 0)


def test_simple_tokenize_matches_ptb_on_captions(formats_dir):
    """The JVM-free tokenizer used for per-epoch validation agrees with the PTB tokenizer on real captions."""
    if not java_available():
        pytest.skip("java not on PATH")
    from pipeline.score.coco import ptb_tokenize, simple_tokenize

    lines = (formats_dir / "EmVidCap-L_EmVideo_test_captions.head.csv").read_text().splitlines()[1:]
    sents = [l.split("\t", 1)[1] for l in lines if "\t" in l]
    sents += ["a woman smiles at the camera. the raised lip corners and the wide eyes.",
              "A man talks to the other side of his head. The frown, the wrinkled nose and the slightly open mouth.",
              "He doesn't smile; she's angry!", "a man turns his head and frowns."]
    assert simple_tokenize(sents) == ptb_tokenize(sents)
