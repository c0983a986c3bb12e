"""Losses against values worked by hand on tiny inputs; MLM masking statistics; DWA weights."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.train.losses import (
    LossWeights, au_align_loss, compute_losses, er_align_loss, loss_er, match_all, loss_name, mask_tokens, task_losses,
)


def align_loss(name, *args, **kwargs):
    return au_align_loss(name, *args, **kwargs)


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
    D = torch.tensor([[[0.40, 0.35, 0.00, 0.99], [0.25, 0.10, 0.15, 0.99]]])   # word 3 is not a real word
    b, rows, cols = match_all(D, torch.tensor([[True, True, True, False]]))
    assert b.tolist() == [0, 0] and dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


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


def test_contrastive_hand_value():
    # d = 1 - D; matched pairs (a1,w2), (a2,w1) are positive: d^2 = 0.65^2, 0.75^2;
    # the other four pairs are negative: max(0, 0.5 - d)^2 with d = 0.6, 1.0, 0.9, 0.85 -> all 0.
    expect = (0.65**2 + 0.75**2) / 6
    assert align_loss("contrastive", AU, WORDS, VALID, margin=0.5).item() == pytest.approx(expect, abs=1e-6)


# ER-sentence alternatives (Table VI, upper half): P_ER = e1, class states C_0 = e1, C_1 = (0.6, 0.8), C_2 = e2
# -> cos(P_ER, C_k) = 1.0, 0.6, 0.0
ER_STATE = torch.tensor([[2.0, 0.0]])                       # norm 2: cosine ignores it
CLASS_STATES = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 3.0]]])


def test_er_global_similarity_hand_value():
    # target class 1: 1 - cos = 0.4; an unlabelled clip (-1) is left out
    got = er_align_loss("global", emotion=torch.tensor([1]), er_state=ER_STATE, class_states=CLASS_STATES)
    assert got.item() == pytest.approx(0.4, abs=1e-6)
    two = er_align_loss("global", emotion=torch.tensor([2, -1]), er_state=ER_STATE.repeat(2, 1),
                        class_states=CLASS_STATES.repeat(2, 1, 1))
    assert two.item() == pytest.approx(1.0, abs=1e-6)


def test_er_sim_ce_hand_value():
    # softmax over [1.0, 0.6, 0.0] / 0.1 = [10, 6, 0], target class 1: -(6 - log(e^10 + e^6 + e^0))
    expect = -(6 - math.log(math.exp(10) + math.exp(6) + 1))
    got = er_align_loss("sim_ce", emotion=torch.tensor([1]), er_state=ER_STATE, class_states=CLASS_STATES)
    assert got.item() == pytest.approx(expect, abs=1e-5)


def test_table_vi_sides_and_logged_names():
    """Table VI's upper half replaces the ER-sentence loss, its lower half the AU-word loss; each is logged
    under its own name, and the paper's keep `er` / `aucl`."""
    from types import SimpleNamespace as NS

    assert [loss_name("er", n) for n in ("ce", "global", "sim_ce")] == ["er", "er_global", "er_sim_ce"]
    assert [loss_name("au", n) for n in ("aucl", "ce", "contrastive")] == ["aucl", "au_ce", "au_contrastive"]
    assert task_losses(NS(align_er=True, align_au=True, er_loss="global", au_loss="contrastive")) == \
        ["mlm", "er_global", "au_contrastive"]
    with pytest.raises(ValueError, match="ER-sentence"):
        er_align_loss("contrastive", emotion=torch.tensor([0]), emotion_logits=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="AU-word"):
        au_align_loss("global", AU, WORDS, VALID)


def test_alignment_losses_run_in_fp32_under_bf16_autocast():
    """Default GPU training is bf16 autocast: the cosine matrix must reach scipy as fp32 (numpy has no bf16)."""
    from types import SimpleNamespace as NS

    torch.manual_seed(0)
    B, K, Lt, H, E = 3, 2, 6, 8, 4
    out = {"mlm_logits": torch.randn(5, 10), "mlm_targets": torch.randint(0, 10, (5,)),
           "emotion_logits": torch.randn(B, E), "er_state": torch.randn(B, H), "class_states": torch.randn(B, E, H),
           "au_prompts": torch.randn(B, K, H, requires_grad=True), "word_prompts": torch.randn(B, Lt, H),
           "word_valid": torch.ones(B, Lt, dtype=torch.bool), "word_ids": torch.randint(0, 10, (B, Lt))}
    model = NS(word_embeddings=torch.nn.Embedding(10, H))
    batch = {"emotion": torch.tensor([0, 1, -1])}
    for er_loss in ("ce", "global", "sim_ce"):
        for au_loss in ("aucl", "ce", "contrastive"):
            tc = NS(align_er=True, align_au=True, er_loss=er_loss, au_loss=au_loss, tau_c=0.3, margin=0.5)
            ref = compute_losses(out, batch, tc, model)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf = compute_losses({k: (v.bfloat16() if v.is_floating_point() else v) for k, v in out.items()},
                                    batch, tc, model)
            for k in ref:
                assert bf[k].dtype == torch.float32 and torch.isfinite(bf[k])
                assert bf[k].item() == pytest.approx(ref[k].item(), rel=0.05, abs=0.02), (er_loss, au_loss, k)


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
    """SwinBERT: candidates are positions 1..seq_len-1 ([SEP] included, [CLS]/[PAD] never), the budget is
    round(0.5 * seq_len) with [CLS] and [SEP] counted, capped at 45; 80/10/10."""
    PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
    V = 1000
    g = torch.Generator().manual_seed(0)
    B = 400
    short = torch.full((B, 14), PAD)                  # [CLS] 10 words [SEP] pad pad: seq_len 12
    short[:, 0], short[:, 11] = CLS, SEP
    short[:, 1:11] = torch.randint(5, V, (B, 10), generator=g)
    long = torch.cat([torch.full((B, 1), CLS), torch.randint(5, V, (B, 100), generator=g), torch.full((B, 1), SEP)], 1)
    counts = {"mask": 0, "random": 0, "kept": 0}
    sep_chosen = 0
    for ids, n_expect in ((short, 6), (long, 45)):
        masked, labels = mask_tokens(ids, pad_id=PAD, special_ids={PAD, UNK, CLS, SEP, MASK}, mask_id=MASK,
                                     vocab_size=V, mask_prob=0.5, max_masked=45, generator=g)
        chosen = labels != -100
        assert (chosen.sum(1) == n_expect).all()           # round(0.5 * seq_len), capped at 45
        never = (ids == PAD) | (ids == CLS)
        assert not (chosen & never).any()                   # never [CLS] or [PAD]
        assert torch.equal(masked[never], ids[never])
        assert torch.equal(labels[chosen], ids[chosen])
        assert torch.equal(masked[~chosen], ids[~chosen])   # unchosen tokens untouched
        if ids is short:
            sep_chosen = int((chosen & (ids == SEP)).sum())
        m, o = masked[chosen], ids[chosen]
        counts["mask"] += int((m == MASK).sum())
        counts["kept"] += int((m == o).sum())
        counts["random"] += int(((m != MASK) & (m != o)).sum())
        assert not torch.isin(m[(m != MASK) & (m != o)], torch.tensor([PAD, UNK, CLS, SEP])).any()
    # [SEP] is one of 11 candidates with 6 picks: chosen in ~6/11 of the short captions
    assert sep_chosen / B == pytest.approx(6 / 11, abs=0.07)
    total = sum(counts.values())                            # 400 * (6 + 45) draws
    assert total == 400 * 51
    assert counts["mask"] / total == pytest.approx(0.8, abs=0.015)
    assert counts["random"] / total == pytest.approx(0.1, abs=0.01)
    assert counts["kept"] / total == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("words,budget", [(0, 1), (1, 2), (2, 2), (3, 2), (4, 3), (5, 4), (10, 6), (60, 31), (100, 45)])
def test_mlm_budget_and_candidates_pinned(words, budget):
    """seq_len = words + 2; n = min(max(round(0.5 * seq_len), 1), 45) with Python's (banker's) round;
    over many draws the chosen positions are exactly 1..seq_len-1."""
    PAD, CLS, SEP, MASK = 0, 2, 3, 4
    seq_len = words + 2
    row = torch.tensor([[CLS] + [7] * words + [SEP] + [PAD] * 3])
    seen = set()
    g = torch.Generator().manual_seed(3)
    for _ in range(60):
        _, labels = mask_tokens(row, pad_id=PAD, special_ids={0, 1, 2, 3, 4}, mask_id=MASK, vocab_size=10,
                                generator=g)
        chosen = (labels[0] != -100).nonzero().squeeze(1).tolist()
        assert len(chosen) == budget
        seen.update(chosen)
    assert seen == set(range(1, seq_len))


def test_mlm_masking_one_word_masks_word_and_sep():
    ids = torch.tensor([[2, 7, 3, 0]])
    _, labels = mask_tokens(ids, pad_id=0, special_ids={0, 1, 2, 3, 4}, mask_id=4, vocab_size=10,
                            generator=torch.Generator().manual_seed(1))
    assert labels.tolist() == [[-100, 7, 3, -100]]      # seq_len 3 -> round(1.5) = 2: the word and [SEP]


def _per_clip_reference(name, au, words, valid, word_ids=None, emb=None, tau_c=0.3, margin=0.5):
    """The straightforward per-clip form (one cosine matrix and one matching per clip): what the batched
    `au_align_loss` must equal."""
    from scipy.optimize import linear_sum_assignment

    terms = []
    for b in range(au.shape[0]):
        if not valid[b].any():
            continue
        w = words[b][valid[b]]
        D = torch.nn.functional.normalize(au[b], dim=-1, eps=1e-8) @ torch.nn.functional.normalize(w, dim=-1, eps=1e-8).t()
        r, c = linear_sum_assignment(D.detach().numpy(), maximize=True)
        r, c = torch.as_tensor(r), torch.as_tensor(c)
        if name == "aucl":
            Dm = D[r, c]
            Y = (Dm > tau_c).float()
            terms.append((1 - Y) * Dm ** 2 + Y * (margin - Dm).clamp(min=0) ** 2)
        elif name == "ce":
            terms.append(torch.nn.functional.cross_entropy(au[b][r] @ emb.t(), word_ids[b][valid[b]][c], reduction="none"))
        else:
            Y = torch.zeros_like(D)
            Y[r, c] = 1
            d = 1 - D
            terms.append((Y * d ** 2 + (1 - Y) * (margin - d).clamp(min=0) ** 2).flatten())
    return torch.cat(terms).mean()


@pytest.mark.parametrize("name", ["aucl", "ce", "contrastive"])
def test_batched_au_losses_equal_the_per_clip_form(name):
    """One batched cosine matrix and one host copy for all matchings give the per-clip values and gradients;
    ragged captions (different numbers of words, one with none) included."""
    g = torch.Generator().manual_seed(0)
    B, K, Lt, H, V = 6, 3, 9, 16, 30
    au = torch.randn(B, K, H, generator=g, requires_grad=True)
    words = torch.randn(B, Lt, H, generator=g)
    valid = torch.zeros(B, Lt, dtype=torch.bool)
    for b, n in enumerate([7, 2, 0, 5, 1, 4]):      # fewer words than prompts too
        valid[b, 1:1 + n] = True
    ids = torch.randint(5, V, (B, Lt), generator=g)
    emb = torch.randn(V, H, generator=g)
    got = au_align_loss(name, au, words, valid, word_ids=ids, embedding_weight=emb)
    (g1,) = torch.autograd.grad(got, au)
    ref = _per_clip_reference(name, au, words, valid, word_ids=ids, emb=emb)
    (g2,) = torch.autograd.grad(ref, au)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)
