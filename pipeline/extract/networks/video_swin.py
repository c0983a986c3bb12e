"""Video Swin Transformer (Liu et al., CVPR 2022) as SwinBERT's video encoder, on torchvision's Swin3D.

References:
- torchvision.models.video.swin3d_{t,s,b} (`SwinTransformer3d`): `patch_embed`, `features` (stage
  blocks and PatchMerging layers alternate: features.0 = stage 0, features.1 = merge, features.2 =
  stage 1, ...), `norm`, `head`.
- The original Video Swin code (mmaction `SwinTransformer3D`, inside `Recognizer3D`): checkpoints
  like `swin_base_patch244_window877_kinetics600_22k.pth` hold {'state_dict': {'backbone.*',
  'cls_head.*'}, 'meta': ...} with `layers.<i>.blocks.<j>` and `layers.<i>.downsample` (the merge
  sits at the end of stage i). SwinBERT wraps that backbone as `swin.backbone.*` next to its own
  transformer (`trans_encoder.*`, ...), possibly under DDP's `module.`.

Tokens (what stage one stores): the final LayerNorm'd feature map, flattened in (t, h, w) order
like SwinBERT: (B, T/2 * (H/32) * (W/32), C), e.g. 784 x 1024 for 32 x 224^2 on Swin-B.
"""
from __future__ import annotations

import logging
import math
import re
from functools import partial
from pathlib import Path

import torch
from torch import nn

from pipeline.checkpoints import CheckpointError, KeyRule, apply_key_map, check_and_load, load_state_dict_file

log = logging.getLogger(__name__)

from pipeline.extract.networks._normalise import KINETICS_MEAN, KINETICS_STD  # noqa: E402,F401  (one home)
"""Video Swin / SwinBERT normalise frames with the ImageNet statistics (mmaction 123.675/58.395, ...)."""


def _strip_head(model: nn.Module) -> nn.Module:
    # Stage one never classifies: without a head the checkpoint's cls_head has nothing to fit.
    model.head = nn.Identity()
    return model


def swin3d_t() -> nn.Module:
    from torchvision.models.video import swin3d_t as tv
    return _strip_head(tv(weights=None))


def swin3d_s() -> nn.Module:
    from torchvision.models.video import swin3d_s as tv
    return _strip_head(tv(weights=None))


def swin3d_b() -> nn.Module:
    """The paper's encoder: embed 128, depths 2-2-18-2, heads 4-8-16-32, window 8x7x7 -> C = 1024."""
    from torchvision.models.video import swin3d_b as tv
    return _strip_head(tv(weights=None))


def swin3d_demo() -> nn.Module:
    """Small variant for the demo (8 x 64^2 clips) and tests: embed 32, depths 2-2-2-2, heads
    1-2-4-8, window 2x4x4 (so shifted windows still happen on a 4x16x16 token grid) -> C = 256."""
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    return _strip_head(SwinTransformer3d(
        patch_size=[2, 4, 4], embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
        window_size=[2, 4, 4], stochastic_depth_prob=0.0, num_classes=1,
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
    ))


SWIN_BUILDERS = {"swin3d_t": swin3d_t, "swin3d_s": swin3d_s, "swin3d_b": swin3d_b, "swin3d_demo": swin3d_demo}


def swin_channels(model: nn.Module) -> int:
    return model.num_features


def token_grid(num_frames: int, height: int, width: int, patch: tuple[int, int, int] = (2, 4, 4),
               merges: int = 3) -> tuple[int, int, int]:
    """(T', H', W') of the final feature map: patch embedding pads up to the patch size, and every
    PatchMerging pads H and W up to even."""
    t, h, w = (math.ceil(n / p) for n, p in zip((num_frames, height, width), patch))
    for _ in range(merges):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return t, h, w


def forward_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (B, 3, T, H, W) normalised -> tokens (B, T'*H'*W', C): the final normed map in (t, h, w) order."""
    x = model.patch_embed(x)          # B, T', H, W, C
    x = model.pos_drop(x)
    x = model.features(x)             # B, T', H', W', C
    x = model.norm(x)
    return x.flatten(1, 3)            # B, L, C


# ---- original Video Swin / SwinBERT checkpoints -> torchvision names ----

def _block(m: re.Match) -> str:
    i, j, rest = int(m["i"]), m["j"], m["rest"]
    rest = {"mlp.fc1": "mlp.0", "mlp.fc2": "mlp.3"}.get(rest, rest)
    return f"features.{2 * i}.{j}.{rest}.{m['p']}"


FROM_VIDEO_SWIN: list[KeyRule] = [
    (r"patch_embed\.(?P<m>proj|norm)\.(?P<p>weight|bias)", r"patch_embed.\g<m>.\g<p>"),
    (r"layers\.(?P<i>\d+)\.blocks\.(?P<j>\d+)\.(?P<rest>norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
     r"\.(?P<p>weight|bias)", _block),
    (r"layers\.(?P<i>\d+)\.blocks\.(?P<j>\d+)\.attn\.relative_position_bias_table",
     lambda m: f"features.{2 * int(m['i'])}.{m['j']}.attn.relative_position_bias_table"),
    (r"layers\.(?P<i>\d+)\.downsample\.reduction\.weight",
     lambda m: f"features.{2 * int(m['i']) + 1}.reduction.weight"),
    (r"layers\.(?P<i>\d+)\.downsample\.norm\.(?P<p>weight|bias)",
     lambda m: f"features.{2 * int(m['i']) + 1}.norm.{m['p']}"),
    (r"norm\.(?P<p>weight|bias)", r"norm.\g<p>"),
]
"""Original `backbone.`-relative names -> torchvision `SwinTransformer3d` names."""

SKIP_FROM_VIDEO_SWIN = [r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_index"]
"""Buffers torchvision recomputes (same values) instead of loading."""

KEEP_IN_MODEL = [r"features\.\d+\.\d+\.attn\.relative_position_index"]


def convert_video_swin_state_dict(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Map an original Video Swin (`backbone.*`, `cls_head.*`) or SwinBERT (`swin.backbone.*` beside
    its own modules) state dict, `module.` already stripped, to torchvision names.

    Kept apart on purpose, and logged: `cls_head.*` (Kinetics classifier), SwinBERT modules outside
    `swin.`, `relative_position_index` buffers. Any other key the table does not know raises."""
    if any(k.startswith("swin.backbone.") for k in sd):
        root = "swin."
    elif any(k.startswith("backbone.") for k in sd):
        root = ""
    elif "patch_embed.proj.weight" in sd:  # a bare backbone state dict
        sd = {f"backbone.{k}": v for k, v in sd.items()}
        root = ""
    else:
        raise CheckpointError(
            f"{source}: not a Video Swin checkpoint (no 'backbone.*' or 'swin.backbone.*' keys; "
            f"first keys: {', '.join(list(sd)[:5])})"
        )
    outside = [k for k in sd if not k.startswith(root)]
    if outside:
        log.info("%s: %d keys outside the Video Swin backbone ignored (SwinBERT's own modules), e.g. %s",
                 source, len(outside), outside[0])
    inner = {k[len(root):]: v for k, v in sd.items() if k.startswith(root)}
    heads = [k for k in inner if k.startswith("cls_head.")]
    if heads:
        log.info("%s: classifier %s not loaded (stage one uses the feature map only)", source, ", ".join(heads))
    stray = [k for k in inner if not (k.startswith("backbone.") or k.startswith("cls_head."))]
    if stray:
        raise CheckpointError(f"{source}: unknown key(s) next to the backbone: {', '.join(sorted(stray)[:12])}")
    backbone = {k[len("backbone."):]: v for k, v in inner.items() if k.startswith("backbone.")}
    out, skipped = apply_key_map(backbone, FROM_VIDEO_SWIN, skip=SKIP_FROM_VIDEO_SWIN, source=source)
    if skipped:
        log.info("%s: %d relative_position_index buffers skipped (recomputed by torchvision)", source, len(skipped))
    return out


def load_video_swin(model: nn.Module, path: str | Path) -> None:
    """Load an original Video Swin / SwinBERT checkpoint file into a torchvision Swin3D built here."""
    sd = convert_video_swin_state_dict(load_state_dict_file(path), source=str(path))
    check_and_load(model, sd, source=str(path), keep_model=KEEP_IN_MODEL)
