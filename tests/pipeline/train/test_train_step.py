"""The training step after issue 16: masking in the loader's workers, no host sync in the step, the loss
registry, the sync-free ER losses against the per-clip (boolean-indexed) code they replace, fused AdamW and
torch.compile against eager."""
from __future__ import annotations

from types import SimpleNamespace as NS

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

from pipeline.train import losses as L
from pipeline.train.data import EpochSampler, EpochTagged, MaskedPairs, collate
from pipeline.train.losses import compute_losses, er_align_loss, mask_tokens, total_loss
from tests.pipeline.train.test_ecpa_model import A, C, V, batch as clip_batch, tiny

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4


class _Pairs:
    """CaptionPairs' item layout without a store: features from a seeded generator, ragged captions."""

    def __init__(self, n: int = 10):
        g = torch.Generator().manual_seed(3)
        self.items = []
        for i in range(n):
            words = torch.randint(5, 40, (2 + i % 5,), generator=g).tolist()
            self.items.append({
                "vid": torch.randn(V, C, generator=g).half().numpy(), "er": torch.randn(3, 10, generator=g).half().numpy(),
                "au_feats": torch.randn(2, A, 12, generator=g).half().numpy(),
                "au_probs": torch.rand(2, A, generator=g).numpy(), "emotion": i % 3 - (i == 4),   # one unlabelled
                "input_ids": [CLS, *words, SEP], "clip_id": f"c{i}"})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return dict(self.items[i])


_MASK = functools.partial(mask_tokens, pad_id=PAD, special_ids=frozenset({PAD, UNK, CLS, SEP, MASK}), mask_id=MASK,
                          vocab_size=40)


def _loader(workers: int, epoch: int, seed: int = 7) -> list[dict]:
    sampler = EpochTagged(EpochSampler(10, seed))
    sampler.set_epoch(epoch)
    dl = DataLoader(MaskedPairs(_Pairs(), _MASK, seed), batch_size=4, sampler=sampler, num_workers=workers,
                    collate_fn=functools.partial(collate, pad_id=PAD))
    return list(dl)


def test_worker_masking_is_seeded_per_pair_and_epoch():
    """Masking in the workers gives the same batches with 0 or 2 workers (a resumed run masks exactly as an
    uninterrupted one), a new mask every epoch, labels only where masked, and mlm_index = the flat positions."""
    a, b = _loader(0, epoch=1), _loader(2, epoch=1)
    for x, y in zip(a, b):
        for k in ("input_ids", "masked_ids", "mlm_labels", "mlm_index"):
            assert torch.equal(x[k], y[k]), k
    other = _loader(0, epoch=2)
    assert not all(torch.equal(x["mlm_labels"], y["mlm_labels"]) for x, y in zip(a, other))
    for x in a:
        sel = x["mlm_labels"] != -100
        assert torch.equal(x["mlm_index"], sel.flatten().nonzero().squeeze(1))
        assert torch.equal(x["mlm_labels"][sel], x["input_ids"][sel])            # labels are the original ids
        assert (x["masked_ids"][~sel] == x["input_ids"][~sel]).all()             # only chosen slots change
        assert ((x["input_ids"] == PAD) <= (x["masked_ids"] == PAD)).all()      # padding stays padding


def _step_batch():
    return collate([MaskedPairs(_Pairs(), _MASK, 0)[(0, i)] for i in range(4)], pad_id=PAD)


def test_mlm_index_gives_the_boolean_positions():
    m = tiny().eval()
    b = _step_batch()
    feats = {k: b[k] for k in ("vid", "er", "au_feats", "au_probs")}
    with torch.no_grad():
        with_index = m({**feats, "mlm_index": b["mlm_index"]}, b["masked_ids"], b["mlm_labels"])
        without = m(feats, b["masked_ids"], b["mlm_labels"])
    assert torch.equal(with_index["mlm_targets"], without["mlm_targets"])
    torch.testing.assert_close(with_index["mlm_logits"], without["mlm_logits"])


class _SyncOps(TorchDispatchMode):
    """Records the ops that make the host wait for the device: .item()/float()/bool() (_local_scalar_dense),
    and the ones whose output size depends on values (nonzero, masked_select, boolean indexing)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("_local_scalar_dense", "nonzero", "masked_select", "item"):
            self.seen.append(name)
        if name == "index" and any(t is not None and t.dtype == torch.bool for t in args[1]):
            self.seen.append("index(bool)")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("er_loss,au_loss", [("ce", "aucl"), ("global", "contrastive"), ("sim_ce", "ce")])
def test_forward_losses_and_backward_never_wait_for_the_device(er_loss, au_loss):
    """The step's tensor work (forward, every loss, backward) has no value-dependent op and no scalar read:
    on a GPU nothing there stalls the queue (the Hungarian matching's one host copy is plain numpy)."""
    m = tiny(use_class_tokens=True).train()
    if er_loss != "ce":
        m.emotion_readout = "similarity"
    b = _step_batch()
    tc = NS(align_er=True, align_au=True, er_loss=er_loss, au_loss=au_loss, tau_c=0.3, margin=0.5, lambda_sparse=0.1)
    weights = {k: 1.0 for k in L.task_losses(tc)}
    with _SyncOps() as mode:
        out = m({k: v for k, v in b.items() if torch.is_tensor(v)}, b["masked_ids"], b["mlm_labels"])
        loss = total_loss(compute_losses(out, b, tc, m), weights, 0.1)
        loss.backward()
    assert mode.seen == []
    assert torch.isfinite(loss)


# ---- the ER losses as they were (boolean indexing, bool(any) host syncs): the reference the new ones equal

def _er_reference(name, emotion, emotion_logits=None, er_state=None, class_states=None):
    known = emotion >= 0
    if name == "ce":
        if not bool(known.any()):
            return emotion_logits.sum() * 0.0
        return F.cross_entropy(emotion_logits.float(), emotion, ignore_index=-1)
    if not bool(known.any()):
        return er_state.sum() * 0.0 + class_states.sum() * 0.0
    cos = torch.einsum("beh,bh->be", F.normalize(class_states.float(), dim=-1, eps=1e-8),
                       F.normalize(er_state.float(), dim=-1, eps=1e-8))
    if name == "global":
        return (1 - cos[known].gather(1, emotion[known][:, None])).mean()
    return F.cross_entropy(cos[known] / L.SIM_CE_TEMPERATURE, emotion[known])


@pytest.mark.parametrize("name", ["ce", "global", "sim_ce"])
@pytest.mark.parametrize("emotion", [[0, 2, -1, 1, -1], [-1, -1, -1, -1, -1], [1, 1, 0, 2, 2]])
def test_sync_free_er_losses_equal_the_boolean_indexed_ones(name, emotion):
    g = torch.Generator().manual_seed(1)
    B, E, H = 5, 3, 8
    inputs = {"emotion_logits": torch.randn(B, E, generator=g), "er_state": torch.randn(B, H, generator=g),
              "class_states": torch.randn(B, E, H, generator=g)}
    inputs = {k: v.requires_grad_() for k, v in inputs.items()}
    y = torch.tensor(emotion)
    got, ref = er_align_loss(name, emotion=y, **inputs), _er_reference(name, y, **inputs)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-7)
    g1 = torch.autograd.grad(got, list(inputs.values()), allow_unused=True, materialize_grads=True)
    g2 = torch.autograd.grad(ref, list(inputs.values()), allow_unused=True, materialize_grads=True)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_a_new_alignment_loss_is_one_registry_entry(monkeypatch):
    """Adding an AU-word loss = one function + one AU_LOSSES line: compute_losses, the weights and the logged
    name follow, with nothing else edited."""
    def first_match_l1(D, match, ctx):
        bi, ri, ci = match
        return (1 - D[bi, ri, ci]).abs().mean()

    monkeypatch.setitem(L.AU_LOSSES, "l1", L.AULoss(first_match_l1, "au_l1"))
    tc = NS(align_er=False, align_au=True, er_loss="ce", au_loss="l1", tau_c=0.3, margin=0.5,
            lambda_mlm=1.0, lambda_er=1.0, lambda_aucl=2.0)
    assert L.task_losses(tc) == ["mlm", "au_l1"] and L.fixed_weights(tc)["au_l1"] == 2.0
    m = tiny()
    b = _step_batch()
    out = m({k: v for k, v in b.items() if torch.is_tensor(v)}, b["masked_ids"], b["mlm_labels"])
    losses = compute_losses(out, b, tc, m)
    assert set(losses) == {"mlm", "au_l1", "sparse"} and 0 < losses["au_l1"].item() <= 2


def _one_step(fused: bool, compile_: bool = False) -> tuple[list[float], dict[str, torch.Tensor]]:
    from pipeline.train.loop import make_optimizer

    m = tiny(dropout=0.0).train()   # compiled dropout draws from inductor's own RNG: compare without it
    opt = make_optimizer(m, 1e-3, 0.01, fused=fused)
    assert opt.defaults["fused"] is (True if fused else None)
    net = torch.compile(m) if compile_ else m
    tc = NS(align_er=True, align_au=True, er_loss="ce", au_loss="aucl", tau_c=0.3, margin=0.5)
    b = _step_batch()
    inputs = {k: v for k, v in b.items() if torch.is_tensor(v)}
    values = []
    for _ in range(2):
        torch.manual_seed(0)
        losses = compute_losses(net(inputs, b["masked_ids"], b["mlm_labels"]), b, tc, m)
        values.append([float(v.detach()) for v in losses.values()])
        opt.zero_grad()
        total_loss(losses, {k: 1.0 for k in losses}, 0.1).backward()
        opt.step()
    return values, {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_fused_adamw_makes_the_same_update():
    (l0, s0), (l1, s1) = _one_step(False), _one_step(True)
    assert np.allclose(l0, l1, rtol=1e-6, atol=1e-7)
    for k in s0:
        torch.testing.assert_close(s0[k], s1[k], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_compiled_and_eager_losses_agree():
    """train.compile: the compiled model gives the eager losses (two steps, so the update is compared too)."""
    (l0, s0), (l1, s1) = _one_step(False), _one_step(False, compile_=True)
    assert np.allclose(l0, l1, rtol=1e-4, atol=1e-5), (l0, l1)
    for k in s0:
        torch.testing.assert_close(s0[k], s1[k], atol=1e-4, rtol=1e-3)
