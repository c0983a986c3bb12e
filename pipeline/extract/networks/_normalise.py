"""Pixel normalisation constants of the frozen networks, one home.

ResNet50-ER and ANFL were trained on ImageNet-normalised face crops; torchvision's Kinetics-400 Video Swin
weights use the same ImageNet mean and std (torchvision `Swin3D_*_Weights.KINETICS400_V1` transforms), named
apart so a future video model with other statistics changes one line.
"""
from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = IMAGENET_MEAN
KINETICS_STD = IMAGENET_STD
