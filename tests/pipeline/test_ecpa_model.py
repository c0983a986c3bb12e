"""The multimodal transformer: SwinBERT's attention rules, context independent of the caption, prompts."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.models.ecpa import ECPA, NEG

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


def test_attention_mask_follows_swinbert_rules():
    m = tiny(sparse_attention=False)
    Lt = 3
    Lc = V + m.num_prompts                      # 4 video + 1 ER + 2 AU + 3 class = 10
    assert Lc == 10
    valid = torch.ones(2, Lc, dtype=torch.bool)
    valid[1, 2] = False                         # one padded video token in clip 1
    mask = m.attention_mask(Lt, valid)
    assert mask.shape == (2, 1, Lt + Lc, Lt + Lc)
    for b in range(2):
        for q in range(Lt + Lc):
            for k in range(Lt + Lc):
                if k < Lt:      # key is a caption token: only captions, causally
                    allowed = q < Lt and k <= q
                else:           # key is context: everyone, if the token is valid
                    allowed = bool(valid[b, k - Lt])
                assert mask[b, 0, q, k].item() == (0.0 if allowed else NEG), (b, q, k)


def test_sparse_mask_bias_on_video_block_only():
    m = tiny(sparse_attention=True)
    with torch.no_grad():
        m.sparse_logits.copy_(torch.randn(V, V))
    Lt, Lc = 2, V + m.num_prompts
    mask = m.attention_mask(Lt, torch.ones(1, Lc, dtype=torch.bool))[0, 0]
    vv = mask[Lt:Lt + V, Lt:Lt + V]
    assert torch.allclose(vv, torch.log(torch.sigmoid(m.sparse_logits)), atol=1e-6)
    rest = mask.clone()
    rest[Lt:Lt + V, Lt:Lt + V] = 0
    assert set(rest.unique().tolist()) <= {0.0, NEG}
    assert m.sparse_l1().item() == pytest.approx(torch.sigmoid(m.sparse_logits).mean().item())


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
    assert ctx.shape[1] == V + 1 + 2 + E
    assert full.emotion_logits(ctx).shape == (2, E)
    assert full.emotion_head.in_features == 2 * 32    # concat(P_ER, P_S)


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
