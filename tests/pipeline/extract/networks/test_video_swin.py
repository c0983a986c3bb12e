"""Video Swin: original / SwinBERT checkpoints convert to torchvision's Swin3D exactly (litgpt-style parity)."""
import re

import pytest
import torch

from pipeline.checkpoints import CheckpointError
from pipeline.extract.networks.video_swin import (
    convert_video_swin_state_dict, forward_tokens, load_video_swin, swin3d_b, swin3d_demo, token_grid,
)


def to_original_layout(tv_sd: dict) -> dict:
    """The inverse map, written independently of the production table: torchvision names ->
    the original mmaction SwinTransformer3D names (stage k = features.2k, its merge = features.2k+1)."""
    out = {}
    for k, v in tv_sd.items():
        m = re.fullmatch(r"features\.(\d+)\.(\d+)\.(.+)", k)
        if m:
            stage, j, rest = int(m[1]), m[2], m[3]
            assert stage % 2 == 0
            rest = rest.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
            out[f"layers.{stage // 2}.blocks.{j}.{rest}"] = v
            continue
        m = re.fullmatch(r"features\.(\d+)\.(reduction|norm)\.(.+)", k)
        if m:
            assert int(m[1]) % 2 == 1
            out[f"layers.{int(m[1]) // 2}.downsample.{m[2]}.{m[3]}"] = v
            continue
        assert k.startswith(("patch_embed.", "norm.")), k
        out[k] = v
    return out


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    m = swin3d_demo().eval()
    with torch.no_grad():  # LayerNorms away from identity, so a dropped norm shows
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m


def _original_file(tmp_path, source, prefix="backbone.", extra=None, drop=None):
    sd = {prefix + k: v for k, v in to_original_layout(source.state_dict()).items() if k != drop}
    sd[prefix.replace("backbone.", "cls_head.") + "fc_cls.weight"] = torch.zeros(600, 256)
    sd[prefix.replace("backbone.", "cls_head.") + "fc_cls.bias"] = torch.zeros(600)
    sd.update(extra or {})
    p = tmp_path / "swin_demo_patch244.pth"
    torch.save({"meta": {"epoch": 30, "env_info": "x"}, "state_dict": sd}, p)
    return p


def _tokens(model, x):
    with torch.inference_mode():
        return forward_tokens(model, x)


@pytest.mark.parametrize("prefix", ["backbone.", "module.swin.backbone."])
def test_original_and_swinbert_layouts_convert_exactly(tmp_path, source, prefix):
    extra = {"module.trans_encoder.bert.embeddings.word_embeddings.weight": torch.zeros(3, 2),
             "module.learn_vid_att.weight": torch.zeros(4, 4)} if prefix.startswith("module.swin") else None
    p = _original_file(tmp_path, source, prefix, extra)
    torch.manual_seed(99)
    model = swin3d_demo().eval()
    load_video_swin(model, p)
    x = torch.randn(2, 3, 8, 64, 64)
    ref, out = _tokens(source, x), _tokens(model, x)
    assert out.shape == (2, 16, 256)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_unknown_key_fails_naming_it(tmp_path, source):
    p = _original_file(tmp_path, source, extra={"backbone.layers.1.blocks.0.attn.qkv_extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unknown key.*layers\.1\.blocks\.0\.attn\.qkv_extra\.weight"):
        load_video_swin(swin3d_demo(), p)


def test_missing_key_fails_naming_the_target(tmp_path, source):
    p = _original_file(tmp_path, source, drop="layers.2.downsample.norm.bias")
    with pytest.raises(CheckpointError, match=r"missing key\(s\) features\.5\.norm\.bias"):
        load_video_swin(swin3d_demo(), p)


def test_swin_b_key_set_is_fully_covered():
    with torch.device("meta"):  # names and shapes only
        sd = swin3d_b().state_dict()
    original = {"backbone." + k: v for k, v in to_original_layout(sd).items()}
    original["cls_head.fc_cls.weight"] = torch.zeros(600, 1024, device="meta")
    converted = convert_video_swin_state_dict(original)
    index_keys = {k for k in sd if k.endswith("relative_position_index")}
    assert set(converted) == set(sd) - index_keys
    assert "features.6.1.mlp.3.weight" in converted and tuple(converted["norm.weight"].shape) == (1024,)
    assert "layers.3.downsample.reduction.weight" not in to_original_layout(sd)  # no merge after the last stage


def test_forward_tokens_is_torchvisions_own_feature_path():
    from functools import partial
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    torch.manual_seed(1)
    m = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=[2, 4, 4], num_classes=5, norm_layer=partial(torch.nn.LayerNorm, eps=1e-5)).eval()
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.inference_mode():
        expected = m(x)  # head(avgpool(norm(features)))
        got = m.head(forward_tokens(m, x).mean(dim=1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t,h,w", [(8, 64, 64), (6, 48, 40), (5, 64, 96)])
def test_token_grid_matches_the_model(source, t, h, w):
    tt, hh, ww = token_grid(t, h, w)
    assert _tokens(source, torch.randn(1, 3, t, h, w)).shape[1] == tt * hh * ww


def test_token_grid_of_the_paper_setting():
    assert token_grid(32, 224, 224) == (16, 7, 7)  # 784 tokens
