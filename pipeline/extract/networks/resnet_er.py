"""ResNet50-ER: the emotion-recognition network whose pooled features feed ECPA's ER-level prompt.

A timm `resnet50` with E emotion classes (ECPA, Sec. III-B: `P_ER = MLP(ResNet50_ER(frames))`).
Stage one calls only the feature path: `forward_features` -> global pool -> (N, 2048) features,
then the classifier -> (N, E) logits. Loads a local checkpoint in timm or torchvision layout (the
key names agree for resnet50: conv1, bn1, layer1..4, fc), optionally wrapped in a training dict
and/or prefixed `module.` / `_orig_mod.`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.checkpoints import CheckpointError, check_and_load, load_state_dict_file

from pipeline.extract.networks._normalise import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402,F401  (one home)


def build_resnet_er(num_classes: int, name: str = "resnet50") -> nn.Module:
    """timm `name` (resnet50 for the paper) with `num_classes` emotion logits, random weights."""
    import timm

    from pipeline.errors import UserError

    if not timm.is_model(name):
        raise UserError(f"extract.er_model={name!r} is not a timm model name (the paper's is resnet50)")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def er_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, 3, S, S) normalised -> (pooled features (N, F), logits (N, E))."""
    feats = model.forward_head(model.forward_features(x), pre_logits=True)  # N, 2048
    logits = model.get_classifier()(feats)                                  # N, E
    return feats, logits


def load_resnet_er(model: nn.Module, path: str | Path) -> None:
    """Load a local ResNet50-ER checkpoint (timm/torchvision names, optional wrapper / `module.`).

    A classifier trained for another number of classes is refused with the two counts named."""
    sd = load_state_dict_file(path)
    want = model.get_classifier().weight.shape[0]
    fc_w = sd.get("fc.weight")
    if fc_w is not None and fc_w.shape[0] != want:
        raise CheckpointError(
            f"{path}: the checkpoint's classifier (fc) has {fc_w.shape[0]} emotion classes, but the config "
            f"has {want} (data.emotions); use an ER checkpoint trained on this dataset's classes"
        )
    check_and_load(model, sd, source=str(path))
