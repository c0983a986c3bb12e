"""tests.bench.bench_train's step: the forward goes through the compiled module with --compile, as the loop's."""
from __future__ import annotations

import contextlib

import torch

from tests.bench.bench_train import prepare, timed_steps
from tests.bench.gpu_check import TINY


class _LikeCompiled(torch.nn.Module):
    """Stands in for torch.compile's OptimizedModule: counts forwards, and (like it) refuses len(), so a
    truth test on it (`net or model`) fails as it did once."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *a):
        self.calls += 1
        return self.model(*a)

    def __len__(self):
        raise TypeError("ECPA does not support len()")


def test_timed_steps_run_the_forward_through_net_and_train_the_model():
    from pipeline.config import load_config
    from pipeline.train.model import ECPA

    cfg = load_config("mafw", list(TINY.model_sets))
    torch.manual_seed(0)
    model = ECPA(cfg.model, vocab_size=30522, cls_id=101, sep_id=102, mask_id=103, pad_id=0, num_emotions=11,
                 video_tokens=TINY.tokens, video_channels=TINY.channels).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    class Tok:
        special_ids, mask_id, vocab_size, pad_id = frozenset({0, 100, 101, 102, 103}), 103, 30522, 0

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (2, TINY.caption_len), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    b = prepare({"vid": torch.randn(2, TINY.tokens, TINY.channels, generator=g).half(),
                 "er": torch.randn(2, TINY.er_frames, 2048, generator=g).half(),
                 "au_feats": torch.randn(2, TINY.au_frames, 41, 512, generator=g).half(),
                 "au_probs": torch.rand(2, TINY.au_frames, 41, generator=g),
                 "emotion": torch.randint(0, 11, (2,), generator=g), "input_ids": ids}, Tok)
    net = _LikeCompiled(model)
    before = model.video_proj[0].weight.detach().clone()
    times, _ = timed_steps(model, opt, [b, b, b], cfg.train, torch.device("cpu"), contextlib.nullcontext(),
                           warmup=1, net=net)
    assert net.calls == 3 and len(times) == 2              # warm-up + 2 timed steps, every forward through net
    assert not torch.equal(before, model.video_proj[0].weight.detach())   # the optimiser stepped the model
