"""The bundle of frozen stage-one networks the extraction runner calls: ResNet50-ER, ANFL, Video Swin.

`build_extractors(cfg.extract, len(cfg.data.emotions), device)` resolves the checkpoint files
(`extract.weights_dir` + file names, or absolute paths), loads them through each network's own
converter, and returns an `Extractors` whose three methods take [0, 1] pixels and do their own
normalisation/resizing, in eval mode, under `torch.inference_mode`, with autocast on CUDA
(bf16 / fp16 per `extract.precision`; fp32 on CPU). Outputs are always float32 tensors on the device.

Random weights only with `extract.random_init` (demo, tests): seeded per network, so two processes
(or dask workers) with the same seed compute identical features; recorded as 'random-init'.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pipeline.config import ExtractConfig
from pipeline.errors import UserError, WeightsMissingError
from pipeline.checkpoints import trusting
from pipeline.extract.networks.anfl import ANFL_BUILDERS, AU_NAMES, anfl_preprocess, load_anfl
from pipeline.extract.networks.resnet_er import IMAGENET_MEAN, IMAGENET_STD, build_resnet_er, er_forward, load_resnet_er
from pipeline.extract.networks.video_swin import (
    KINETICS_MEAN, KINETICS_STD, SWIN_BUILDERS, forward_tokens, load_video_swin, token_grid,
)
from pipeline.device import autocast_dtype  # one home: pipeline.device
from pipeline.extract.store import StoreShapes

log = logging.getLogger(__name__)

RANDOM_INIT = "random-init"


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    shape = (1, 3) + (1,) * (x.dim() - 2)
    return (x - x.new_tensor(mean).view(shape)) / x.new_tensor(std).view(shape)


@dataclass
class Extractors:
    """Frozen stage-one networks; every method takes pixels in [0, 1] and returns float32 tensors."""

    er_model: nn.Module
    au_model: nn.Module
    swin_model: nn.Module
    device: torch.device
    face_size: int
    """Side of the face crops the runner passes (extract.face_size); ANFL crops/resizes to it."""
    amp_dtype: torch.dtype | None = None
    """Autocast dtype on CUDA (None: fp32)."""
    au_names: list[str] = field(default_factory=lambda: list(AU_NAMES))
    """The 41 AU names in output order (AU1 ... AU39, AUL1, AUR1, ... AUR14)."""
    provenance: dict[str, str] = field(default_factory=dict)
    """{'er', 'au', 'swin'} -> checkpoint sha256 or 'random-init'."""
    unpickled: list[str] = field(default_factory=list)
    """Checkpoint files read with the full unpickler because extract.trust_pickle named them (recorded)."""

    @property
    def er_dim(self) -> int:
        return self.er_model.num_features

    @property
    def num_emotions(self) -> int:
        return self.er_model.get_classifier().out_features

    @property
    def au_dim(self) -> int:
        return self.au_model.node_dim

    @property
    def swin_channels(self) -> int:
        return self.swin_model.num_features

    def _ctx(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @torch.inference_mode()
    def er(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """faces (N, 3, S, S) in [0, 1] -> (features (N, 2048), logits (N, E)), float32."""
        x = _normalise(faces.to(self.device, torch.float32), IMAGENET_MEAN, IMAGENET_STD)
        with self._ctx():
            feats, logits = er_forward(self.er_model, x)
        return feats.float(), logits.float()

    @torch.inference_mode()
    def au(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """faces (N, 3, S, S) in [0, 1] -> (node features (N, 41, D), confidences in [0, 1] (N, 41))."""
        x = anfl_preprocess(faces.to(self.device, torch.float32), self.face_size)
        with self._ctx():
            feats, probs = self.au_model(x)
        return feats.float(), probs.float()

    @torch.inference_mode()
    def video(self, clip: torch.Tensor) -> torch.Tensor:
        """clip (B, 3, T, H, W) in [0, 1] (centre-cropped frames) -> tokens (B, T/2*(H/32)*(W/32), C)."""
        x = _normalise(clip.to(self.device, torch.float32), KINETICS_MEAN, KINETICS_STD)
        with self._ctx():
            tokens = forward_tokens(self.swin_model, x)
        return tokens.float()

    def shapes(self, num_frames: int, au_frames: int, crop: int) -> StoreShapes:
        """Per-clip store shapes for `num_frames` sampled frames of `crop`^2 pixels."""
        t, h, w = token_grid(num_frames, crop, crop, tuple(self.swin_model.patch_embed.proj.kernel_size))
        return StoreShapes(tokens=t * h * w, channels=self.swin_channels, frames=num_frames, er_dim=self.er_dim,
                           emotions=self.num_emotions, au_frames=au_frames, aus=len(self.au_names),
                           au_dim=self.au_dim)


def weight_path(ex: ExtractConfig, name: str) -> Path:
    """extract.<name> resolved against extract.weights_dir unless absolute."""
    p = Path(getattr(ex, name))
    return p if p.is_absolute() else Path(ex.weights_dir) / p


_WHAT = {"er_weights": "ResNet50-ER", "au_weights": "ANFL (OpenGraphAU stage 1)", "swin_weights": "Video Swin"}


def resolve_weights(ex: ExtractConfig) -> dict[str, Path]:
    """{'er', 'au', 'swin'} -> existing checkpoint path; all missing files reported together."""
    paths = {k.split("_")[0]: weight_path(ex, k) for k in _WHAT}
    missing = [(k, paths[k.split("_")[0]]) for k in _WHAT if not paths[k.split("_")[0]].is_file()]
    if missing:
        lines = [f"{_WHAT[k]} checkpoint {p} not found: put {Path(getattr(ex, k)).name} in {ex.weights_dir}/ "
                 f"or pass --set extract.{k}=path" for k, p in missing]
        raise WeightsMissingError(
            "; ".join(lines) + " (or --set extract.random_init=true for a trial run with random weights)"
        )
    return paths


def trusted_paths(ex: ExtractConfig) -> list[Path]:
    """The files extract.trust_pickle names, each as given and resolved against extract.weights_dir."""
    out = []
    for entry in ex.trust_pickle:
        p = Path(entry)
        out += [p] if p.is_absolute() else [p, Path(ex.weights_dir) / p]
    return out


def _seeded(builder, seed: int) -> nn.Module:
    # Own RNG stream per network; the caller's global RNG state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder()


def build_extractors(
    ex: ExtractConfig,
    num_emotions: int,
    device: str | torch.device,
    seed: int = 0,
    memo_dir: Path | None = None,
) -> Extractors:
    """Build the three networks named in `ex`, load their checkpoints (or seed-init them under
    `ex.random_init`), move them to `device` in eval mode. `memo_dir` memoises weight sha256s."""
    from pipeline.records import file_sha256

    device = torch.device(device)
    if ex.swin not in SWIN_BUILDERS:
        raise UserError(f"extract.swin={ex.swin!r}: expected one of {', '.join(SWIN_BUILDERS)}")
    if ex.au_model not in ANFL_BUILDERS:
        raise UserError(f"extract.au_model={ex.au_model!r}: expected one of {', '.join(ANFL_BUILDERS)}")
    amp = autocast_dtype(ex.precision, device, what="extract.precision", on_cpu=False)
    paths = None if ex.random_init else resolve_weights(ex)  # before the (slow) builds: fail fast

    er = _seeded(lambda: build_resnet_er(num_emotions, ex.er_model), seed)
    au = _seeded(ANFL_BUILDERS[ex.au_model], seed + 1)
    swin = _seeded(SWIN_BUILDERS[ex.swin], seed + 2)

    unpickled: list[str] = []
    if ex.random_init:
        log.warning("extract.random_init: ResNet50-ER, ANFL and Video Swin use RANDOM weights (seed %d); "
                    "features are for trials only", seed)
        provenance = {"er": RANDOM_INIT, "au": RANDOM_INIT, "swin": RANDOM_INIT}
    else:
        # weights_only=True for every file; only those the user names may need the full unpickler
        with trusting(trusted_paths(ex)) as unpickled:
            load_resnet_er(er, paths["er"])
            load_anfl(au, paths["au"])
            load_video_swin(swin, paths["swin"])
        provenance = {k: file_sha256(p, memo_dir=memo_dir) for k, p in paths.items()}

    for m in (er, au, swin):
        m.to(device).eval().requires_grad_(False)
    return Extractors(er_model=er, au_model=au, swin_model=swin, device=device, face_size=ex.face_size,
                      amp_dtype=amp, au_names=list(AU_NAMES), provenance=provenance, unpickled=list(unpickled))
