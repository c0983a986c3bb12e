"""ECPA feature-cache pipeline: the importable library.

Stage one (frozen ResNet50-ER, ANFL, Video Swin -> Zarr) and stage two (prompts, alignment and the
multimodal transformer trained on cached tensors) share this package. Importing it has no side
effects: no CLI, no downloads, no files written.
"""
__version__ = "0.1.0"

from pipeline.caption.bundle import load_captioner  # noqa: E402  (light: torch & co. load on first call)

__all__ = ["load_captioner"]
