"""Where the demo's fitted extractors go and what their key holds (pure: no I/O). pipeline.config.load_config
points a demo config's weight fields here, so this module imports nothing that imports the config; the fit
itself is pipeline.extract.demo_fit."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.chain.layout import EXTRACTORS_DIR
from pipeline.records import short, stage_key

VERSION = "1"
"""Bump when what the fit computes changes (targets, losses, schedule, file layouts)."""

STAGE = "demo-fit"
ACTIVE_LEVEL = 0.5
"""An AU counts as active in a frame when its drawn intensity is at least this (peaks are 0.65-1.0)."""
ER_FILE = "{er_model}_er_demo.pth"
AU_FILE = "anfl_demo_first_stage.pth"
SWIN_FILE = "swin3d_demo_emotion.pth"

@dataclass
class FitSettings:
    """How the three networks are fitted (all enter the fit key)."""

    epochs: int = 6
    """Passes over the training crops for ANFL (and ER when it trains from scratch): extract.demo_fit_epochs."""
    swin_epochs: int = 4
    """Passes over the training clips for Video Swin (extract.demo_fit_epochs)."""
    batch_size: int = 32
    """Face crops (ER, ANFL) per step; Video Swin takes batch_size // 4 clips."""
    lr: float = 2e-3
    """AdamW learning rate (cosine decay to 0)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the initialisations and the batch order."""
    er_from_anfl: bool = True
    """ANFL's trunk also learns the emotion (a linear head on its pooled features), and ER starts from that
    trunk and head, then is fine-tuned: far cheaper than ER from scratch, and better (emotions are AU patterns)."""
    er_finetune_epochs: int = 1
    """Passes of the whole ER network after starting from ANFL's trunk (at lr / 4)."""
    au_frames_only: bool = True
    """ANFL trains on the extract.au_frames frames stage one feeds it (else on every sampled frame)."""


def fit_settings(cfg) -> FitSettings:
    return FitSettings(epochs=cfg.extract.demo_fit_epochs, swin_epochs=cfg.extract.demo_fit_epochs)


def fit_slice(cfg) -> dict:
    """Everything the fitted weights depend on: the generator and its parameters, how stage one sees a clip,
    the network names, the emotion classes and the fit settings."""
    from pipeline.data.demo import GENERATOR_VERSION

    ex, d = cfg.extract, cfg.data
    return {
        "generator": {"version": GENERATOR_VERSION, "clips": d.demo_clips, "seed": d.demo_seed,
                      "video_size": d.demo_video_size, "val_fraction": d.val_fraction},
        "emotions": list(d.emotions),
        "extract": {k: getattr(ex, k) for k in ("num_frames", "size", "crop", "face_size", "face_detector",
                                                 "er_model", "au_model", "swin")},
        "fit": asdict(fit_settings(cfg)),
        "active_level": ACTIVE_LEVEL,
    }


def fit_key(cfg) -> str:
    return stage_key(STAGE, VERSION, fit_slice(cfg))


def fit_dir(cfg) -> Path:
    return cfg.cache_dir / EXTRACTORS_DIR / short(fit_key(cfg))


def file_names(cfg) -> dict[str, str]:
    return {"er": ER_FILE.format(er_model=cfg.extract.er_model), "au": AU_FILE, "swin": SWIN_FILE}


def point_weights(cfg) -> None:
    """Point extract.weights_dir and the three file names at this config's fitted files (load_config calls
    this when extract.demo_fit is on and extract.random_init off)."""
    names = file_names(cfg)
    cfg.extract.weights_dir = str(fit_dir(cfg))
    cfg.extract.er_weights, cfg.extract.au_weights, cfg.extract.swin_weights = names["er"], names["au"], names["swin"]


def wanted(cfg) -> bool:
    return bool(cfg.extract.demo_fit) and not cfg.extract.random_init
