"""Frozen stage-one networks (ResNet50-ER, ANFL, Video Swin) with their checkpoint loaders.

The extraction runner needs only `build_extractors` / `Extractors` from `pipeline.extract.networks.extractors`.
"""
