"""pipeline.score.emotion: Acc_sw, Acc_c, BFS, CFS on cases counted by hand."""
from __future__ import annotations

import math
import shutil

import pytest

from pipeline.score.emotion import (
    EmotionCounts, acc_c, acc_sw, bfs, cfs, count_emotions, emotion_metrics, lexicon_hash, load_lexicon, words,
)
from pipeline.errors import UserError

LEXICON = {
    "joy": "happy\nSmiling\njoyful\n\n",
    "sadness": "sad\ncrying\n",
    "anger": "angry\nfurious\n",
    "fear": "scared\n",
}


@pytest.fixture
def lexicon_dir(tmp_path):
    d = tmp_path / "lexicon"
    d.mkdir()
    for name, text in LEXICON.items():
        (d / f"{name}.txt").write_text(text)
    (d / "README.md").write_text("not a category\n")  # only .txt files are categories
    return d


# Four clips, counted by hand:
#   v1 "a happy man is crying"   refs -> {joy}           caption {joy, sadness}: 1 right, 1 wrong (hybrid)
#   v2 "a man walks"             refs -> {anger}         no emotion word: phi
#   v3 "an ANGRY, furious woman" refs -> {anger, fear}   {anger} (two words, one category): 1 right
#   v4 "she looks sad-eyed"      refs -> {joy}           {sadness}: 1 wrong
CAPTIONS = {"v1": "a happy man is crying", "v2": "a man walks", "v3": "an ANGRY, furious woman!",
            "v4": "she looks sad-eyed"}
REFS = {"v1": ["a happy man smiles", "the man is joyful"], "v2": ["an angry man walks"],
        "v3": ["a furious woman shouts", "she is scared"], "v4": ["she is happy"]}


def test_words_split_at_non_letters_and_lower_case():
    assert words("An ANGRY, sad-eyed man2day!") == ["an", "angry", "sad", "eyed", "man", "day"]


def test_lexicon_categories_are_file_stems(lexicon_dir):
    lex = load_lexicon(lexicon_dir)
    assert lex.categories == ["anger", "fear", "joy", "sadness"]
    assert lex.category_of["smiling"] == "joy"  # lower-cased on reading
    assert lex.categories_in("He was Smiling and crying") == {"joy", "sadness"}


def test_counts_by_hand(lexicon_dir):
    c = count_emotions(CAPTIONS, REFS, load_lexicon(lexicon_dir))
    assert c == EmotionCounts(n=4, n_r=2, n_w=2, phi=1, n_r1=2, n_h=1)


def test_formulas_by_hand(lexicon_dir):
    coco = {"Bleu_1": 0.5, "Bleu_2": 0.4, "Bleu_3": 0.3, "Bleu_4": 0.2, "CIDEr": 1.2}
    m, counts, notes = emotion_metrics(CAPTIONS, REFS, load_lexicon(lexicon_dir), coco)
    assert counts == {"N": 4, "N_r": 2, "N_w": 2, "phi": 1, "N_r1": 2, "N_h": 1}
    assert m["Acc_sw"] == pytest.approx(2 / 5)                         # 2 / (2 + 2 + 1)
    acc_c_ = math.exp(1 / (1 - 2 + 1e-4)) * 2 / 4                       # = 0.5 * e^-1.0001
    assert m["Acc_c"] == pytest.approx(acc_c_, rel=1e-12)
    assert m["Acc_c"] == pytest.approx(0.18392133, abs=1e-8)
    # 0.8 * (0.05 + 0.08 + 0.09 + 0.08) + 0.1 * (0.4 + 0.18392133)
    assert m["BFS"] == pytest.approx(0.24 + 0.1 * (0.4 + acc_c_))
    assert m["BFS"] == pytest.approx(0.298392133, abs=1e-8)
    assert m["CFS"] == pytest.approx(0.8 * 1.2 + 0.1 * (0.4 + acc_c_))
    assert notes == []


def test_no_hybrid_caption_means_no_penalty():
    # N_h = 0: the exponent is 0, Acc_c = N_r1 / N
    c = EmotionCounts(n=5, n_r=3, n_w=1, phi=1, n_r1=3, n_h=0)
    assert acc_c(c) == pytest.approx(3 / 5)
    assert acc_sw(c) == pytest.approx(3 / 5)


def test_captions_without_emotion_words_score_zero_not_absent(lexicon_dir):
    caps = {"v1": "a man walks", "v2": "two people talk"}
    refs = {"v1": ["a happy man walks"], "v2": ["they are angry"]}
    m, counts, _ = emotion_metrics(caps, refs, load_lexicon(lexicon_dir),
                                   {"Bleu_1": 0.5, "Bleu_2": 0.5, "Bleu_3": 0.5, "Bleu_4": 0.5, "CIDEr": 1.0})
    assert counts["phi"] == 2 and counts["N_r"] == counts["N_w"] == 0
    assert m["Acc_sw"] == 0.0 and m["Acc_c"] == 0.0
    assert m["BFS"] == pytest.approx(0.8 * 0.5)
    assert m["CFS"] == pytest.approx(0.8)


def test_every_right_caption_also_wrong_is_undefined_with_a_reason(lexicon_dir):
    # N_h = N_r1 = 1: exp(1 / 1e-4) overflows; reported as None with the reason, never as a number
    m, counts, notes = emotion_metrics({"v1": "a happy man is crying"}, {"v1": ["a happy man"]},
                                       load_lexicon(lexicon_dir),
                                       {"Bleu_1": 1, "Bleu_2": 1, "Bleu_3": 1, "Bleu_4": 1, "CIDEr": 1})
    assert counts["N_h"] == counts["N_r1"] == 1
    assert m["Acc_sw"] == pytest.approx(0.5)
    assert m["Acc_c"] is None and m["BFS"] is None and m["CFS"] is None
    assert len(notes) == 1 and "N_h = N_r1" in notes[0]


def test_bfs_cfs_weights():
    assert bfs([1, 0, 0, 0], 0, 0) == pytest.approx(0.08)
    assert bfs([0, 0, 0, 1], 0, 0) == pytest.approx(0.32)
    assert bfs([0, 0, 0, 0], 0.5, 0.25) == pytest.approx(0.075)
    assert cfs(0.0, 1.0, 1.0) == pytest.approx(0.2)


def test_word_in_two_categories_goes_to_first_sorted(lexicon_dir):
    (lexicon_dir / "amaze.txt").write_text("happy\n")
    lex = load_lexicon(lexicon_dir)
    assert lex.category_of["happy"] == "amaze"
    assert lex.duplicates == {"happy": ["amaze", "joy"]}


def test_bad_lexicon_line_names_file_and_line(lexicon_dir):
    (lexicon_dir / "calm.txt").write_text("calm\nat ease\n")
    with pytest.raises(UserError, match=r"calm\.txt:2: 'at ease' is not one word"):
        load_lexicon(lexicon_dir)


def test_missing_or_empty_lexicon_folder(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        load_lexicon(tmp_path / "nope")
    with pytest.raises(UserError, match="holds no .txt files"):
        load_lexicon(tmp_path)


def test_lexicon_hash_follows_contents_not_place(lexicon_dir, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(lexicon_dir, copy)
    assert lexicon_hash(copy) == lexicon_hash(lexicon_dir)
    (copy / "fear.txt").write_text("scared\nafraid\n")
    assert lexicon_hash(copy) != lexicon_hash(lexicon_dir)


def test_captions_without_references_are_refused(lexicon_dir):
    with pytest.raises(UserError, match="no references"):
        count_emotions({"v9": "happy"}, {}, load_lexicon(lexicon_dir))


def test_shipped_mafw_lexicon_covers_the_mafw_classes():
    from pipeline.config import MAFW_EMOTIONS, PRESET_DIR

    lex = load_lexicon(PRESET_DIR / "lexicons" / "mafw")
    assert sorted(lex.categories) == sorted(MAFW_EMOTIONS)
    assert lex.duplicates == {}
    assert lex.categories_in("a man looks frightened, then smiles") == {"fear", "happiness"}
