"""Losses against values worked by hand on tiny inputs; MLM masking statistics; DWA weights."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.losses import LossWeights, align_loss, hungarian, loss_er, mask_tokens


def _unit(*xs):
    """A 4-d unit vector whose first three components are xs (so cos with e1..e3 is exactly xs)."""
    rest = math.sqrt(1 - sum(x * x for x in xs))
    return [*xs, rest]


# AU prompts a1, a2 and word prompts e1, e2, e3 (H=4) built so that the cosine matrix is
#        w1    w2    w3
#   a1  0.40  0.35  0.00
#   a2  0.25  0.10  0.15
# Assignments (AU -> word) and their sums:
#   a1w1 + a2w2 = 0.50   a1w1 + a2w3 = 0.55 (greedy's pick: a1 takes its best w1 first)
#   a1w2 + a2w1 = 0.60 <- Hungarian maximum      a1w2 + a2w3 = 0.50   a1w3 + a2w1 = 0.25   a1w3 + a2w2 = 0.10
# With T_C = 0.3, m = 0.5:
#   (a1, w2): D = 0.35 > 0.3 -> Y = 1 -> max(0, 0.5 - 0.35)^2 = 0.0225
#   (a2, w1): D = 0.25       -> Y = 0 -> 0.25^2               = 0.0625
#   L_AUCL = mean = (0.0225 + 0.0625) / 2 = 0.0425
AU = torch.tensor([[_unit(0.40, 0.35, 0.00), _unit(0.25, 0.10, 0.15)]])
WORDS = torch.tensor([[[0.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0.0, 0, 0, 0]]])
VALID = torch.tensor([[False, True, True, True, False]])   # [CLS] w1 w2 w3 [SEP]


def test_hungarian_beats_greedy_on_the_hand_example():
    D = torch.tensor([[0.40, 0.35, 0.00], [0.25, 0.10, 0.15]])
    rows, cols = hungarian(D)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


def test_aucl_hand_value():
    loss = align_loss("aucl", AU, WORDS, VALID, tau_c=0.3, margin=0.5)
    assert loss.item() == pytest.approx(0.0425, abs=1e-6)


def test_aucl_gradient_pushes_as_the_paper_says():
    au = AU.clone().requires_grad_(True)
    align_loss("aucl", au, WORDS, VALID, tau_c=0.3, margin=0.5).backward()
    # positive pair (a1, w2), D < m: raising D lowers the loss -> gradient along w2 negative on a1's 2nd comp.
    assert au.grad[0, 0, 1] < 0
    # negative pair (a2, w1): loss D^2 -> gradient along w1 positive on a2's 1st comp.
    assert au.grad[0, 1, 0] > 0


def test_global_similarity_hand_value():
    # mean AU = ((0.4+0.25)/2, (0.35+0.1)/2, (0+0.15)/2, (r1+r2)/2); mean word = (1/3, 1/3, 1/3, 0)
    a = AU[0].mean(0)
    w = torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0])
    expect = 1 - float(a @ w / (a.norm() * w.norm()))
    # by hand: 4th comps sqrt(0.7175) = 0.84705, sqrt(0.905) = 0.95131 -> a = (0.325, 0.225, 0.075, 0.89918);
    # a.w = 0.625/3 = 0.20833; |a| = sqrt(0.970395) = 0.98509; |w| = 0.57735 -> 1 - 0.36631 = 0.63369
    assert expect == pytest.approx(0.63369, abs=1e-4)
    assert align_loss("global", AU, WORDS, VALID).item() == pytest.approx(expect, abs=1e-5)


def test_contrastive_hand_value():
    # d = 1 - D; matched pairs (a1,w2), (a2,w1) are positive: d^2 = 0.65^2, 0.75^2;
    # the other four pairs are negative: max(0, 0.5 - d)^2 with d = 0.6, 1.0, 0.9, 0.85 -> all 0.
    expect = (0.65**2 + 0.75**2) / 6
    assert align_loss("contrastive", AU, WORDS, VALID, margin=0.5).item() == pytest.approx(expect, abs=1e-6)


def test_sim_ce_targets_the_matched_word():
    # a1 row: softmax([0.4, 0.35, 0]/0.1), target w2; a2 row: softmax([0.25, 0.1, 0.15]/0.1), target w1
    def ce(row, t):
        z = [x / 0.1 for x in row]
        return -(z[t] - math.log(sum(math.exp(v) for v in z)))
    expect = (ce([0.40, 0.35, 0.0], 1) + ce([0.25, 0.10, 0.15], 0)) / 2
    assert align_loss("sim_ce", AU, WORDS, VALID).item() == pytest.approx(expect, abs=1e-5)


def test_ce_classifies_over_the_vocabulary():
    emb = torch.eye(4)                      # token t's embedding is e_t
    ids = torch.tensor([[9, 0, 1, 2, 9]])  # w1..w3 are tokens 0, 1, 2
    emb = torch.cat([emb, torch.zeros(6, 4)])  # vocab of 10
    a1, a2 = AU[0]
    def ce(a, t):
        z = emb @ a
        return float(-(z[t] - torch.logsumexp(z, 0)))
    expect = (ce(a1, 1) + ce(a2, 0)) / 2     # a1 matched w2 (token 1), a2 matched w1 (token 0)
    got = align_loss("ce", AU, WORDS, VALID, word_ids=ids, embedding_weight=emb).item()
    assert got == pytest.approx(expect, abs=1e-5)


def test_loss_er_hand_value_and_unknown_labels():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # row 0, class 0: -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2) = log(1.2706706) = 0.2395448; row 1 unknown (-1): left out
    assert loss_er(logits, torch.tensor([0, -1])).item() == pytest.approx(0.2395448, abs=1e-6)
    # row 1, class 2: log 3 = 1.098612; mean with row 0
    assert loss_er(logits, torch.tensor([0, 2])).item() == pytest.approx((0.2395448 + 1.0986123) / 2, abs=1e-6)


def test_dwa_weights_by_hand():
    w = LossWeights("dwa", ["mlm", "er"], temperature=2.0)
    assert w.weights() == {"mlm": 1.0, "er": 1.0}          # epoch 1
    w.end_epoch({"mlm": 2.0, "er": 1.0})
    assert w.weights() == {"mlm": 1.0, "er": 1.0}          # epoch 2
    w.end_epoch({"mlm": 1.0, "er": 1.0})
    # r_mlm = 1/2 = 0.5, r_er = 1; exp(0.25) = 1.2840254, exp(0.5) = 1.6487213, sum = 2.9327467
    # w_mlm = 2 * 1.2840254 / 2.9327467 = 0.8756462; w_er = 2 * 1.6487213 / 2.9327467 = 1.1243538
    got = w.weights()
    assert got["mlm"] == pytest.approx(0.8756462, abs=1e-6)
    assert got["er"] == pytest.approx(1.1243538, abs=1e-6)
    w2 = LossWeights("dwa", ["mlm", "er"], temperature=2.0)
    w2.load_state_dict(w.state_dict())
    assert w2.weights() == got
    assert LossWeights("fixed", ["mlm", "er"], fixed={"mlm": 0.5, "er": 2.0}).weights() == {"mlm": 0.5, "er": 2.0}


def test_mlm_masking_statistics():
    PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
    V = 1000
    g = torch.Generator().manual_seed(0)
    B = 400
    short = torch.full((B, 14), PAD)                  # [CLS] 10 words [SEP] pad pad
    short[:, 0], short[:, 11] = CLS, SEP
    short[:, 1:11] = torch.randint(5, V, (B, 10), generator=g)
    long = torch.cat([torch.full((B, 1), CLS), torch.randint(5, V, (B, 100), generator=g), torch.full((B, 1), SEP)], 1)
    counts = {"mask": 0, "random": 0, "kept": 0}
    for ids, n_words, n_expect in ((short, 10, 5), (long, 100, 45)):
        masked, labels = mask_tokens(ids, special_ids={PAD, UNK, CLS, SEP, MASK}, mask_id=MASK, vocab_size=V,
                                     mask_prob=0.5, max_masked=45, generator=g)
        chosen = labels != -100
        assert (chosen.sum(1) == n_expect).all()           # round(0.5 * words), capped at 45
        special = (ids == PAD) | (ids == CLS) | (ids == SEP)
        assert not (chosen & special).any()                 # never a special token
        assert torch.equal(masked[special], ids[special])
        assert torch.equal(labels[chosen], ids[chosen])
        assert torch.equal(masked[~chosen], ids[~chosen])   # unchosen tokens untouched
        m, o = masked[chosen], ids[chosen]
        counts["mask"] += int((m == MASK).sum())
        counts["kept"] += int((m == o).sum())
        counts["random"] += int(((m != MASK) & (m != o)).sum())
        assert not torch.isin(m[m != MASK], torch.tensor([PAD, UNK, CLS, SEP])).any()
    total = sum(counts.values())                            # 400 * (5 + 45) = 20000 draws
    assert total == 400 * 50
    assert counts["mask"] / total == pytest.approx(0.8, abs=0.015)
    assert counts["random"] / total == pytest.approx(0.1, abs=0.01)
    assert counts["kept"] / total == pytest.approx(0.1, abs=0.01)


def test_mlm_masking_one_word_masks_one():
    ids = torch.tensor([[2, 7, 3, 0]])
    _, labels = mask_tokens(ids, special_ids={0, 1, 2, 3, 4}, mask_id=4, vocab_size=10, generator=torch.Generator().manual_seed(1))
    assert labels.tolist() == [[-100, 7, -100, -100]]
