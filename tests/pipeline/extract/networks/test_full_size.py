"""The paper's networks at full size (Swin-B at 32 x 224^2, ANFL ResNet-50, ResNet50-ER): slow on CPU."""
import dataclasses

import pytest
import torch

from pipeline.config import load_config
from pipeline.extract.networks.extractors import build_extractors


@pytest.mark.slow
def test_paper_bundle_shapes_at_224():
    ex = dataclasses.replace(load_config("mafw").extract, random_init=True)
    b = build_extractors(ex, num_emotions=11, device="cpu", seed=0)
    s = b.shapes(num_frames=ex.num_frames, au_frames=ex.au_frames, crop=ex.crop)
    assert (s.tokens, s.channels, s.er_dim, s.emotions, s.aus, s.au_dim) == (784, 1024, 2048, 11, 41, 512)
    faces = torch.rand(2, 3, ex.face_size, ex.face_size)
    feats, logits = b.er(faces)
    nodes, probs = b.au(faces)
    assert feats.shape == (2, 2048) and logits.shape == (2, 11)
    assert nodes.shape == (2, 41, 512) and probs.shape == (2, 41)
    tokens = b.video(torch.rand(1, 3, ex.num_frames, ex.crop, ex.crop))
    assert tokens.shape == (1, 784, 1024) and torch.isfinite(tokens).all()
