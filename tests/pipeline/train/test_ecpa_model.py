"""The multimodal transformer: SwinBERT's attention rules, context independent of the caption, prompts."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.train.model import ECPA, NEG

V, C, E, A = 4, 8, 3, 5


def tiny(**kw) -> ECPA:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=32, layers=2, heads=2, intermediate=64, video_proj=16, top_k=2, max_caption_len=12, **kw)
    return ECPA(cfg, vocab_size=40, cls_id=2, sep_id=3, mask_id=4, pad_id=0, num_emotions=E, video_tokens=V,
                video_channels=C, er_dim=10, au_dim=12, num_aus=A)


def batch(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"vid": torch.randn(B, V, C, generator=g).half(), "er": torch.randn(B, 3, 10, generator=g).half(),
            "au_feats": torch.randn(B, 2, A, 12, generator=g).half(), "au_probs": torch.rand(B, 2, A, generator=g)}


@pytest.mark.parametrize("sentence_prompt", ["caption", "context"])
def test_attention_mask_follows_swinbert_rules(sentence_prompt):
    """caption -> caption causal, everyone -> valid context, context -> caption never; the class tokens
    joined to the caption (Eq. 6) read the non-pad caption, the context and each other, and nobody reads them."""
    m = tiny(sparse_attention=False, sentence_prompt=sentence_prompt)
    Lt = 3
    n_sent = m.num_sentence_tokens
    Lc = V + m.num_prompts
    if sentence_prompt == "caption":
        assert (Lc, n_sent) == (4 + 1 + 2, E)   # 4 video + 1 ER + 2 AU; the 3 class tokens after the context
    else:
        assert (Lc, n_sent) == (4 + 1 + 2 + 3, 0)
    valid = torch.ones(2, Lc, dtype=torch.bool)
    valid[1, 2] = False                         # one padded video token in clip 1
    cap_valid = torch.tensor([[True, True, True], [True, True, False]])   # clip 1's last caption token is [PAD]
    mask = m.attention_mask(Lt, valid, cap_valid=cap_valid, n_sentence=n_sent)
    L = Lt + Lc + n_sent
    assert mask.shape == (2, 1, L, L)
    for b in range(2):
        for q in range(L):
            for k in range(L):
                if k < Lt:          # key is a caption token: captions causally, class tokens if not [PAD]
                    allowed = (q < Lt and k <= q) or (q >= Lt + Lc and bool(cap_valid[b, k]))
                elif k < Lt + Lc:   # key is context: everyone, if the token is valid
                    allowed = bool(valid[b, k - Lt])
                else:               # key is a class token: only the class tokens
                    allowed = q >= Lt + Lc
                assert mask[b, 0, q, k].item() == (0.0 if allowed else NEG), (b, q, k)


def test_swinbert_sparse_mask_hand_computed_4x4():
    """SwinBERT: M = I + (1 - I) sigmoid(W) written into the 0/1 mask, additive (1 - M) * -1e4 on
    video -> video; L1 = mean |(1 - I) sigmoid(W)| over all 16 entries."""
    m = tiny(sparse_attention=True, sparse_mask="swinbert")
    W = torch.tensor([[0.0, 2.0, -1.0, 0.5],
                      [1.0, 5.0, 0.0, -2.0],
                      [-3.0, 0.0, 9.0, 1.0],
                      [0.0, 0.0, 0.0, -7.0]])
    with torch.no_grad():
        m.sparse_logits.copy_(W)
    s = lambda x: 1 / (1 + math.exp(-x))        # noqa: E731
    expect = [[0.0 if i == j else (1 - s(W[i, j].item())) * NEG for j in range(4)] for i in range(4)]
    Lt, Lc = 2, V + m.num_prompts
    mask = m.attention_mask(Lt, torch.ones(1, Lc, dtype=torch.bool), n_sentence=m.num_sentence_tokens)[0, 0]
    torch.testing.assert_close(mask[Lt:Lt + V, Lt:Lt + V], torch.tensor(expect), atol=1e-3, rtol=1e-6)
    # e.g. W[0, 1] = 2: (1 - sigmoid(2)) * -1e4 = -1192.03; the diagonal is 0 whatever W says (W[3, 3] = -7)
    assert mask[Lt, Lt + 1].item() == pytest.approx(-1192.029, abs=1e-2)
    assert mask[Lt + 3, Lt + 3].item() == 0.0
    off = [s(W[i, j].item()) for i in range(4) for j in range(4) if i != j]
    assert m.sparse_l1().item() == pytest.approx(sum(off) / 16, abs=1e-6)
    rest = mask.clone()
    rest[Lt:Lt + V, Lt:Lt + V] = 0
    assert set(rest.unique().tolist()) <= {0.0, NEG}
    # W learns through the mask and the L1 term (an in-place write into the mask would break backward)
    (mask.sum() + m.sparse_l1()).backward()
    assert m.sparse_logits.grad is not None and m.sparse_logits.grad.diagonal().abs().max() == 0


def test_sparse_mask_init_is_swinbert_normal():
    torch.manual_seed(1)
    cfg = ModelConfig(hidden=32, layers=1, heads=2, intermediate=64, video_proj=16, top_k=2)
    m = ECPA(cfg, vocab_size=40, cls_id=2, sep_id=3, mask_id=4, pad_id=0, num_emotions=E, video_tokens=64,
             video_channels=C, er_dim=10, au_dim=12, num_aus=A)
    w = m.sparse_logits.detach()
    assert abs(w.mean().item()) < 0.1 and w.std().item() == pytest.approx(1.0, abs=0.1)


def test_logsigmoid_sparse_mask_option():
    m = tiny(sparse_attention=True, sparse_mask="logsigmoid")
    with torch.no_grad():
        m.sparse_logits.copy_(torch.randn(V, V))
    Lt, Lc = 2, V + m.num_prompts
    mask = m.attention_mask(Lt, torch.ones(1, Lc, dtype=torch.bool))[0, 0]
    vv = mask[Lt:Lt + V, Lt:Lt + V]
    assert torch.allclose(vv, torch.log(torch.sigmoid(m.sparse_logits)), atol=1e-6)
    assert m.sparse_l1().item() == pytest.approx(torch.sigmoid(m.sparse_logits).mean().item())


def test_mask_in_compute_dtype_under_bf16_autocast():
    """The additive mask is built in the autocast dtype, so a fused attention kernel can take it."""
    m = tiny()
    seen = []
    hook = m.encoder.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["attention_mask"].dtype),
                                               with_kwargs=True)
    ids = torch.tensor([[2, 5, 4, 3, 0], [2, 7, 8, 9, 3]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(batch(), ids, torch.where(ids == 4, 6, -100))
    hook.remove()
    assert seen == [torch.bfloat16]
    assert torch.isfinite(out["mlm_logits"].float()).all() and torch.isfinite(out["emotion_logits"].float()).all()


def test_context_does_not_depend_on_the_caption():
    m = tiny().eval()
    b = batch()
    ids1 = torch.tensor([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0]])
    ids2 = torch.tensor([[2, 9, 4, 8, 3], [2, 11, 12, 13, 3]])
    with torch.no_grad():
        cap1, ctx1, _ = m.encode(b, ids1)
        cap2, ctx2, _ = m.encode(b, ids2)
        alone = m.context_hidden(b)
    assert torch.allclose(ctx1, ctx2, atol=1e-5)
    assert torch.allclose(ctx1, alone, atol=1e-5)
    # the caption is causal: its first two tokens agree where the prefixes agree ([CLS] only)
    assert torch.allclose(cap1[:, 0], cap2[:, 0], atol=1e-5)
    assert not torch.allclose(cap1[:, 1], cap2[:, 1], atol=1e-3)


def test_top_k_aus_by_mean_confidence():
    m = tiny()
    probs = torch.tensor([[[0.9, 0.1, 0.5, 0.2, 0.0], [0.1, 0.1, 0.6, 0.9, 0.0]]])   # means .5 .1 .55 .55 0
    probs[0, 1, 3] = 0.7                                                             # AU3 mean .45
    feats = torch.arange(2 * A * 12, dtype=torch.float).reshape(1, 2, A, 12)
    top, idx = m.top_au(feats, probs)
    assert sorted(idx[0].tolist()) == [0, 2]          # K = 2: AU2 (.55) and AU0 (.5)
    assert torch.equal(top[0, idx[0].tolist().index(2)], feats[0, :, 2].mean(0))


def test_word_mask_zeroes_mask_embeddings():
    on, off = tiny(use_word_mask=True), tiny(use_word_mask=False)
    ids = torch.tensor([[2, 4, 7, 3]])
    assert torch.count_nonzero(on.word_vectors(ids)[0, 1]) == 0
    assert torch.count_nonzero(off.word_vectors(ids)[0, 1]) > 0
    assert torch.equal(on.word_vectors(ids)[0, 2], off.word_vectors(ids)[0, 2])


def test_prompt_switches_change_the_context_length_and_heads():
    base = tiny(use_er_prompt=False, use_au_prompts=False, use_class_tokens=False, sparse_attention=False)
    ctx, _ = base.embed_context(batch())
    assert ctx.shape[1] == V and base.emotion_logits(ctx) is None and base.au_prompts(batch()) is None
    full = tiny()
    ctx, _ = full.embed_context(batch())
    assert ctx.shape[1] == V + 1 + 2                  # the class tokens are joined to the caption, not here
    h = full.encode_all(batch(), torch.tensor([[2, 5, 3], [2, 6, 3]]))
    assert h["sent"].shape == (2, E, 32)
    assert full.emotion_logits(h["ctx"], h["sent"]).shape == (2, E)
    assert full.emotion_head.in_features == 2 * 32    # concat(P_ER, P_S)
    visual = tiny(sentence_prompt="context")
    ctx, _ = visual.embed_context(batch())
    assert ctx.shape[1] == V + 1 + 2 + E


def test_sentence_prompt_reads_the_caption():
    """Eq. 6/8: with the class tokens joined to the caption, the emotion depends on the caption (and the
    context does not); in the visual-only variant it does not depend on the caption."""
    b = batch()
    ids1 = torch.tensor([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0]])
    ids2 = torch.tensor([[2, 9, 10, 8, 3], [2, 11, 12, 13, 3]])
    for mode, depends in (("caption", True), ("context", False)):
        m = tiny(sentence_prompt=mode).eval()
        with torch.no_grad():
            e1, e2 = m(b, ids1)["emotion_logits"], m(b, ids2)["emotion_logits"]
            c1, c2 = m.encode(b, ids1)[1], m.encode(b, ids2)[1]
        assert torch.allclose(c1, c2, atol=1e-5)
        assert (not torch.allclose(e1, e2, atol=1e-4)) == depends, mode
    # padding after [SEP] does not change what the class tokens read
    m = tiny().eval()
    with torch.no_grad():
        short = m(b, torch.tensor([[2, 5, 3], [2, 7, 3]]))["emotion_logits"]
        padded = m(b, torch.tensor([[2, 5, 3, 0, 0], [2, 7, 3, 0, 0]]))["emotion_logits"]
    torch.testing.assert_close(short, padded, atol=1e-5, rtol=1e-5)


def test_top_k_never_repeats_a_node_of_opengraphau():
    """OpenGraphAU's 14 L/R AUs reuse their main AU's node: top-K runs over the 27 main AUs only, even when
    an L/R confidence is the highest."""
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=32, layers=1, heads=2, intermediate=64, video_proj=16, top_k=3, max_caption_len=12)
    m = ECPA(cfg, vocab_size=40, cls_id=2, sep_id=3, mask_id=4, pad_id=0, num_emotions=E, video_tokens=V,
             video_channels=C, er_dim=10, au_dim=12, num_aus=41)
    from pipeline.extract.networks.anfl import SUB_SOURCE

    probs = torch.full((1, 2, 41), 0.1)
    probs[0, :, 2] = 0.8                       # main AU4 (index 2)
    probs[0, :, 27 + SUB_SOURCE.index(2)] = 0.95     # AUL4 and AUR4: the same node as AU4
    probs[0, :, 27 + SUB_SOURCE.index(2) + 1] = 0.9
    probs[0, :, 5] = 0.5
    probs[0, :, 9] = 0.4
    feats = torch.randn(1, 2, 41, 12)
    feats[0, :, 27:] = feats[0, :, torch.tensor(SUB_SOURCE)]   # L/R nodes are copies, as ANFL stores them
    top, idx = m.top_au(feats, probs)
    assert idx[0].tolist() == [2, 5, 9]
    assert len({tuple(t.tolist()) for t in top[0]}) == 3
    with pytest.raises(ValueError, match="1..27"):
        ECPA(ModelConfig(hidden=32, layers=1, heads=2, intermediate=64, video_proj=16, top_k=28), vocab_size=40,
             cls_id=2, sep_id=3, mask_id=4, pad_id=0, num_emotions=E, video_tokens=V, video_channels=C,
             er_dim=10, au_dim=12, num_aus=41)


def test_forward_outputs_and_mlm_positions():
    m = tiny()
    ids = torch.tensor([[2, 5, 4, 3, 0], [2, 7, 8, 9, 3]])
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 3] = 6, 9
    out = m(batch(), ids, labels)
    assert out["mlm_logits"].shape == (2, 40) and out["mlm_targets"].tolist() == [6, 9]
    assert out["word_valid"].tolist() == [[False, True, True, False, False], [False, True, True, True, False]]
    assert out["au_prompts"].shape == (2, 2, 32)
    # the MLM decoder is tied to the word embeddings
    assert torch.allclose(m.mlm_logits(torch.zeros(1, 32)) - m.mlm_bias,
                          m.mlm_transform(torch.zeros(1, 32)) @ m.word_embeddings.weight.t())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    """train.grad_checkpoint recomputes layers in the backward pass: values and gradients are unchanged
    (dropout included: the RNG state is replayed)."""
    ids = torch.tensor([[2, 5, 4, 3, 0], [2, 7, 8, 9, 3]])
    labels = torch.where(ids == 4, 6, -100)
    grads = []
    for ckpt in (False, True):
        m = tiny(dropout=0.1).train()
        m.grad_checkpoint = ckpt
        torch.manual_seed(5)
        out = m(batch(), ids, labels)
        loss = torch.nn.functional.cross_entropy(out["mlm_logits"], out["mlm_targets"]) + out["emotion_logits"].sum()
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    assert l0 == pytest.approx(l1, abs=1e-6) and g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], atol=1e-5, rtol=1e-4)


def test_aligned_bias_same_values_and_gradients_under_bf16():
    """The CUDA path's row-aligned attention bias (`aligned_bias`), run on CPU under bf16 autocast: aligned
    row stride, the same attention output, the same gradient into the learned sparse mask."""
    from pipeline.train.model import BIAS_ALIGN, aligned_bias

    m = tiny(sparse_mask="logsigmoid")   # swinbert's (1 - M) * -1e4 saturates: no gradient left to compare
    Lt, Lc = 5, V + m.num_prompts
    w = torch.randn(2, 2, Lt + Lc + E, 16, generator=torch.Generator().manual_seed(1))
    outs = []
    for aligned in (False, True):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mask = m.attention_mask(Lt, torch.ones(2, Lc, dtype=torch.bool), n_sentence=E, dtype=torch.bfloat16)
            if aligned:
                mask = aligned_bias(mask, always=True)
                assert mask.stride(-2) % BIAS_ALIGN == 0 and mask.shape[1] == 1
            L = mask.shape[-1]
            q = torch.randn(2, 2, L, 16, generator=torch.Generator().manual_seed(0)).bfloat16()
            a = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
        (a.float() * w).sum().backward()
        outs.append((a.float(), m.sparse_logits.grad.clone()))
    assert outs[0][0].dtype == torch.float32 and L % BIAS_ALIGN != 0
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    assert outs[0][1].abs().sum() > 0      # the sparse mask does learn through the bias
