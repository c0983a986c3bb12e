"""The stage-one bundle: shapes/dtypes, seeded random init, weight files through the real loaders."""
import dataclasses

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import UserError, WeightsMissingError
from pipeline.extract.networks.extractors import build_extractors
from pipeline.records import file_sha256


@pytest.fixture(scope="module")
def demo_ex():
    return load_config("demo", ["extract.random_init=true"]).extract  # face 64, 8 x 64^2 clips, resnet18 ER, swin3d_demo, anfl_demo, random_init


@pytest.fixture(scope="module")
def bundle(demo_ex):
    return build_extractors(demo_ex, num_emotions=7, device="cpu", seed=0)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(5, 3, 64, 64, generator=g), torch.rand(2, 3, 8, 64, 64, generator=g)


def test_outputs_have_the_store_shapes_and_dtypes(bundle):
    faces, clip = _inputs()
    feats, logits = bundle.er(faces)
    nodes, probs = bundle.au(faces)
    tokens = bundle.video(clip)
    s = bundle.shapes(num_frames=8, au_frames=4, crop=64)
    assert feats.shape == (5, s.er_dim) == (5, 512) and logits.shape == (5, s.emotions) == (5, 7)  # ResNet-18: 512-d
    assert nodes.shape == (5, s.aus, s.au_dim) == (5, 41, 128) and probs.shape == (5, 41)
    assert tokens.shape == (2, s.tokens, s.channels) == (2, 16, 256)
    assert all(t.dtype == torch.float32 for t in (feats, logits, nodes, probs, tokens))
    assert ((probs >= 0) & (probs <= 1 + 1e-6)).all() and torch.isfinite(tokens).all()
    assert len(bundle.au_names) == 41 and bundle.au_names[0] == "AU1"
    assert bundle.provenance == {"er": "random-init", "au": "random-init", "swin": "random-init"}
    assert not any(m.training for m in (bundle.er_model, bundle.au_model, bundle.swin_model))


@pytest.fixture(scope="module")
def small_ex(demo_ex):
    return dataclasses.replace(demo_ex, er_model="resnet18")  # same code paths, a quarter of the init cost


@pytest.fixture(scope="module")
def small(small_ex):
    return build_extractors(small_ex, num_emotions=7, device="cpu", seed=0)


def test_same_seed_same_weights_other_seed_other_weights(small, small_ex):
    torch.manual_seed(777)
    before = torch.rand(1)
    again = build_extractors(small_ex, num_emotions=7, device="cpu", seed=0)
    torch.manual_seed(777)
    assert torch.equal(torch.rand(1), before)  # building does not consume the caller's RNG stream
    for name in ("er_model", "au_model", "swin_model"):
        sd0, sd1 = getattr(small, name).state_dict(), getattr(again, name).state_dict()
        assert all(torch.equal(v, sd1[k]) for k, v in sd0.items()), name
    faces, clip = _inputs(1)
    assert torch.equal(small.au(faces)[1], again.au(faces)[1])
    assert torch.equal(small.video(clip), again.video(clip))
    other = build_extractors(small_ex, num_emotions=7, device="cpu", seed=1)
    assert not torch.allclose(small.au(faces)[1], other.au(faces)[1])
    assert not torch.allclose(small.er(faces)[1], other.er(faces)[1])


def test_missing_weights_name_every_file_and_where_it_goes(tmp_path, demo_ex):
    ex = dataclasses.replace(demo_ex, random_init=False, weights_dir=str(tmp_path / "weights"))
    with pytest.raises(WeightsMissingError) as e:
        build_extractors(ex, 7, "cpu")
    msg = str(e.value)
    for name, field in (("resnet50_er_mafw.pth", "er_weights"),
                        ("OpenGprahAU-ResNet50_first_stage.pth", "au_weights"),
                        ("swin_base_patch244_window877_kinetics600_22k.pth", "swin_weights")):
        assert f"put {name} in {tmp_path / 'weights'}/ or pass --set extract.{field}=path" in msg


def test_weight_files_load_through_the_real_loaders(tmp_path, small, small_ex):
    """Files written in each network's original layout from the seed-0 bundle, loaded by a build
    with another seed: the features must be the seed-0 features, provenance the files' sha256."""
    from tests.pipeline.extract.networks.test_video_swin import to_original_layout

    wd = tmp_path / "weights"
    wd.mkdir()
    torch.save({"state_dict": {"module." + k: v for k, v in small.er_model.state_dict().items()}}, wd / "er.pth")
    torch.save({"epoch": 1, "optimizer": {}, "state_dict": {"module." + k: v for k, v in
                                                           small.au_model.state_dict().items()}}, wd / "au.pth")
    torch.save({"state_dict": {"backbone." + k: v for k, v in
                               to_original_layout(small.swin_model.state_dict()).items()}}, wd / "swin.pth")
    ex = dataclasses.replace(small_ex, random_init=False, weights_dir=str(wd), er_weights="er.pth",
                             au_weights="au.pth", swin_weights=str(wd / "swin.pth"))  # relative and absolute
    loaded = build_extractors(ex, 7, "cpu", seed=5)
    faces, clip = _inputs(2)
    assert torch.equal(loaded.er(faces)[1], small.er(faces)[1])
    assert torch.equal(loaded.au(faces)[0], small.au(faces)[0])
    assert torch.equal(loaded.video(clip), small.video(clip))
    assert loaded.provenance == {k: file_sha256(wd / f"{k}.pth") for k in ("er", "au", "swin")}


def test_unknown_builder_names_are_user_errors(demo_ex):
    with pytest.raises(UserError, match="extract.swin='swin3d_xl'"):
        build_extractors(dataclasses.replace(demo_ex, swin="swin3d_xl"), 7, "cpu")
    with pytest.raises(UserError, match="extract.er_model='resnet5'"):
        build_extractors(dataclasses.replace(demo_ex, er_model="resnet5"), 7, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_is_close_to_fp32(demo_ex, bundle):
    gpu = build_extractors(demo_ex, 7, "cuda", seed=0)
    faces, clip = _inputs(3)
    for fn in ("er", "au"):
        g, c = getattr(gpu, fn)(faces), getattr(bundle, fn)(faces)
        for a, b in zip(g, c):
            assert a.dtype == torch.float32 and a.device.type == "cuda"
            torch.testing.assert_close(a.cpu(), b, rtol=0.05, atol=0.05)
    torch.testing.assert_close(gpu.video(clip).cpu(), bundle.video(clip), rtol=0.05, atol=0.1)
