"""pipeline/train/attention.py: the CPU training attention core equals PyTorch's SDPA (math path) in values,
gradients (q, k, v and the learned mask) and, with dropout_rng=torch, dropout draws; with the fast draws it
equals the plain-ops reference on the same mask, and the masks have the asked-for statistics."""
import pytest
import torch
import torch.nn.functional as F

from pipeline.train.attention import Dropout16, _takes_core, attention_core, drop_mask


def _inputs(B=2, h=3, L=7, d=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, L, d, generator=g, dtype=dtype).requires_grad_() for _ in range(3))
    bias = (torch.randn(B, 1, L, L, generator=g, dtype=dtype) * 3).requires_grad_()   # broadcast over heads
    return q, k, v, bias


def _run(fn, p, seed=1):
    q, k, v, bias = _inputs()
    torch.manual_seed(seed)
    out = fn(q, k, v, bias, p)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * w).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad, bias.grad


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_core_matches_sdpa_values_gradients_and_dropout_draws(p):
    ours = _run(lambda q, k, v, b, p: attention_core(q, k, v, b, p, 0.5, "torch"), p)
    ref = _run(lambda q, k, v, b, p: F.scaled_dot_product_attention(q, k, v, attn_mask=b, dropout_p=p, scale=0.5), p)
    for a, b, name in zip(ours, ref, ("out", "dq", "dk", "dv", "dbias")):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    if p:   # the draws matter: another seed drops other entries
        other = _run(lambda q, k, v, b, p: attention_core(q, k, v, b, p, 0.5, "torch"), p, seed=5)
        assert not torch.allclose(other[0], ours[0])


def test_fast_core_equals_plain_ops_on_the_same_mask():
    """The fast draws' core (one where() pass, 1 / (1 - p) moved onto v and d_out) against autograd through plain
    ops with the mask `drop_mask` gives for the same seed: values and every gradient."""
    p = 0.3

    def plain(q, k, v, b, p):
        probs = torch.softmax(q @ k.transpose(-1, -2) * 0.5 + b, dim=-1)
        drop = drop_mask(probs, p)      # the core's one draw, replayed under the same seed
        return probs.masked_fill(drop, 0.0) / (1 - p) @ v

    ours = _run(lambda q, k, v, b, p: attention_core(q, k, v, b, p, 0.5, "fast"), p)
    ref = _run(plain, p)
    for a, b, name in zip(ours, ref, ("out", "dq", "dk", "dv", "dbias")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.allclose(_run(lambda q, k, v, b, p: attention_core(q, k, v, b, p, 0.5, "fast"), p, seed=5)[0],
                              ours[0])


def test_drop_mask_statistics():
    """Rate p to 1/65536 at every one of a 64-bit word's four 16-bit slices (a sign bit that never varies, or
    slices of a 63-bit draw, would show here), pairs independent, reproducible by seed, shape kept."""
    torch.manual_seed(0)
    like = torch.empty(1000, 1003)          # odd size: the last word is cut
    m = drop_mask(like, 0.1)
    assert m.shape == like.shape and m.dtype == torch.bool
    flat = m.flatten().float()
    assert abs(flat.mean().item() - 0.1) < 0.002
    slices = flat[: flat.numel() // 4 * 4].view(-1, 4).mean(dim=0)
    assert (slices - 0.1).abs().max().item() < 0.003, slices
    both = (flat[:-1] * flat[1:]).mean().item()
    assert abs(both - 0.01) < 0.001                              # P(neighbours both dropped) = p^2
    assert abs(drop_mask(like, 0.5).float().mean().item() - 0.5) < 0.003
    assert not drop_mask(like, 0.0).any()
    torch.manual_seed(7)
    a = drop_mask(like, 0.1)
    torch.manual_seed(7)
    assert torch.equal(a, drop_mask(like, 0.1)) and not torch.equal(a, drop_mask(like, 0.1))


def test_dropout16_scales_kept_values_and_their_gradient():
    d = Dropout16(0.25)
    x = torch.randn(64, 129, requires_grad=True)
    torch.manual_seed(1)
    y = d(x)
    kept = y != 0
    assert 0.2 < 1 - kept.float().mean().item() < 0.3
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    d.eval()
    assert d(x) is x


def test_core_gradcheck_with_fixed_dropout():
    q, k, v, bias = (t.detach().double().requires_grad_() for t in _inputs(B=1, h=2, L=5, d=3))

    for rng in ("fast", "torch"):
        def f(q, k, v, bias):
            torch.manual_seed(3)          # the same keep mask at every evaluation
            return attention_core(q, k, v, bias, 0.25, 0.7, rng)

        assert torch.autograd.gradcheck(f, (q, k, v, bias), eps=1e-6, atol=1e-5)


def test_core_is_taken_only_for_cpu_training_with_dropout_or_a_learned_mask():
    q, _, _, bias = _inputs()
    assert _takes_core(q, bias, 0.1) and _takes_core(q, bias, 0.0)        # learned mask
    assert not _takes_core(q, bias.detach(), 0.0)                          # fused kernel can take it
    assert not _takes_core(q, None, 0.1)
    with torch.no_grad():
        assert not _takes_core(q, bias, 0.1)                               # inference: SDPA
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _takes_core(q, bias, 0.1)


def test_model_training_step_equals_transformers_sdpa():
    """The whole model's training step with the core (dropout and the learned sparse mask) gives transformers'
    SDPA losses and gradients with model.dropout_rng=torch: same maths, same dropout draws."""
    from pipeline.config import ModelConfig
    from pipeline.train.model import ECPA

    ids = torch.tensor([[2, 5, 4, 3, 0], [2, 7, 8, 9, 3]])
    labels = torch.where(ids == 4, 6, -100)
    g = torch.Generator().manual_seed(0)
    b = {"vid": torch.randn(2, 4, 8, generator=g).half(), "er": torch.randn(2, 3, 10, generator=g).half(),
         "au_feats": torch.randn(2, 2, 5, 12, generator=g).half(), "au_probs": torch.rand(2, 2, 5, generator=g)}
    runs = []
    for impl in ("ecpa_sdpa", "sdpa"):
        torch.manual_seed(0)
        cfg = ModelConfig(hidden=32, layers=2, heads=2, intermediate=64, video_proj=16, top_k=2, max_caption_len=12,
                          dropout=0.2, dropout_rng="torch")
        m = ECPA(cfg, vocab_size=40, cls_id=2, sep_id=3, mask_id=4, pad_id=0, num_emotions=3, video_tokens=4,
                 video_channels=8, er_dim=10, au_dim=12, num_aus=5).train()
        assert m.bert_config._attn_implementation == "ecpa_sdpa"
        m.bert_config._attn_implementation = impl
        torch.manual_seed(5)
        out = m(b, ids, labels)
        loss = F.cross_entropy(out["mlm_logits"], out["mlm_targets"]) + out["emotion_logits"].sum()
        loss.backward()
        runs.append((loss.item(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = runs
    assert l0 == pytest.approx(l1, abs=1e-6) and g0.keys() == g1.keys() and "sparse_logits" in g0
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], atol=1e-6, rtol=1e-5, msg=n)


def test_fast_dropout_rng_replaces_every_dropout_and_only_changes_training_draws():
    """model.dropout_rng=fast: no nn.Dropout left (each is a Dropout16 with its p), the core told to use the
    fast draws; eval outputs equal the torch-draws model's; a seeded training step is reproducible and differs
    from the torch draws' step."""
    from pipeline.config import ModelConfig
    from pipeline.train.model import ECPA

    ids = torch.tensor([[2, 5, 4, 3, 0], [2, 7, 8, 9, 3]])
    labels = torch.where(ids == 4, 6, -100)
    g = torch.Generator().manual_seed(0)
    b = {"vid": torch.randn(2, 4, 8, generator=g).half(), "er": torch.randn(2, 3, 10, generator=g).half(),
         "au_feats": torch.randn(2, 2, 5, 12, generator=g).half(), "au_probs": torch.rand(2, 2, 5, generator=g)}
    models = {}
    for rng in ("fast", "torch"):
        torch.manual_seed(0)
        cfg = ModelConfig(hidden=32, layers=2, heads=2, intermediate=64, video_proj=16, top_k=2, max_caption_len=12,
                          dropout=0.2, dropout_rng=rng)
        models[rng] = ECPA(cfg, vocab_size=40, cls_id=2, sep_id=3, mask_id=4, pad_id=0, num_emotions=3,
                           video_tokens=4, video_channels=8, er_dim=10, au_dim=12, num_aus=5)
    fast = models["fast"]
    kinds = {type(mod) for mod in fast.modules()}
    assert torch.nn.Dropout not in kinds and Dropout16 in kinds
    assert all(mod.p == 0.2 for mod in fast.modules() if isinstance(mod, Dropout16))
    assert all(layer.attention.self.dropout_rng == "fast" for layer in fast.encoder.layer)
    with torch.no_grad():
        e = [m.eval()(b, ids, labels)["mlm_logits"] for m in models.values()]
    torch.testing.assert_close(e[0], e[1])

    def step(m, seed):
        m.train()
        torch.manual_seed(seed)
        return m(b, ids, labels)["mlm_logits"].detach()

    assert torch.equal(step(fast, 3), step(fast, 3))
    assert not torch.allclose(step(fast, 3), step(models["torch"], 3))
