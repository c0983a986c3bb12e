"""ResNet50-ER: local checkpoints in timm / torchvision layout load exactly; wrong class counts fail clearly."""
import copy

import pytest
import torch

from pipeline.checkpoints import CheckpointError
from pipeline.extract.networks.resnet_er import build_resnet_er, er_forward, load_resnet_er
from tests.pipeline.extract.networks.conftest import randomise_bn_stats


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    return randomise_bn_stats(build_resnet_er(7), seed=1).eval()


def _blank(model):
    """A copy with every parameter and buffer zeroed: a loader that misses one leaves it visibly wrong
    (and it is much cheaper than initialising another ResNet-50)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for t in list(m.parameters()) + list(m.buffers()):
            t.zero_()
    return m


def _save(tmp_path, sd, name="er.pth"):
    p = tmp_path / name
    torch.save({"epoch": 9, "state_dict": {"module." + k: v for k, v in sd.items()}}, p)
    return p


def test_wrapped_module_prefixed_checkpoint_round_trips(tmp_path, source):
    p = _save(tmp_path, source.state_dict())
    model = _blank(source)
    load_resnet_er(model, p)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        f0, l0 = er_forward(source, x)
        f1, l1 = er_forward(model, x)
    assert f1.shape == (2, 2048) and l1.shape == (2, 7)
    torch.testing.assert_close(f1, f0, rtol=0, atol=0)
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)


def test_torchvision_layout_gives_torchvision_outputs(tmp_path, source):
    import torchvision

    with torch.device("meta"):  # skip the init: every tensor is assigned below
        tv = torchvision.models.resnet50(num_classes=7)
    g = torch.Generator().manual_seed(4)
    tv.load_state_dict({k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                        for k, v in source.state_dict().items()}, strict=True, assign=True)
    tv.eval()
    p = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), p)  # bare state dict, torchvision names
    model = _blank(source)
    load_resnet_er(model, p)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        _, logits = er_forward(model, x)
        expected = tv(x)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_other_class_count_is_refused_with_both_counts(tmp_path):
    # The loader does not depend on depth: resnet18 keeps this test cheap.
    p = _save(tmp_path, build_resnet_er(11, "resnet18").state_dict())
    with pytest.raises(CheckpointError, match=r"11 emotion classes.*has 7"):
        load_resnet_er(build_resnet_er(7, "resnet18"), p)


def test_key_typo_names_the_key(tmp_path):
    sd = dict(build_resnet_er(7, "resnet18").state_dict())
    sd["layer3.0.bn2.wieght"] = sd.pop("layer3.0.bn2.weight")
    p = _save(tmp_path, sd)
    with pytest.raises(CheckpointError) as e:
        load_resnet_er(build_resnet_er(7, "resnet18"), p)
    assert "layer3.0.bn2.wieght" in str(e.value) and "layer3.0.bn2.weight" in str(e.value)
