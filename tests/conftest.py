"""Shared fixtures: paths to ../shared data (read in place, never copied), small thread counts."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ECPA_SHARED_DATA", REPO.parent / "shared" / "data"))
MAFW_SAMPLES = SHARED_DATA / "mafw_samples"
BERT_DIR = SHARED_DATA / "bert-base-uncased"
FORMATS_DIR = SHARED_DATA / "formats"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass


@pytest.fixture
def mafw_samples() -> Path:
    if not (MAFW_SAMPLES / "single_label.txt").exists():
        pytest.skip(f"real MAFW samples not found at {MAFW_SAMPLES} (set ECPA_SHARED_DATA)")
    return MAFW_SAMPLES


@pytest.fixture
def bert_vocab() -> Path:
    if not (BERT_DIR / "vocab.txt").exists():
        pytest.skip(f"bert-base-uncased vocabulary not found at {BERT_DIR} (set ECPA_SHARED_DATA)")
    return BERT_DIR / "vocab.txt"


@pytest.fixture
def formats_dir() -> Path:
    if not FORMATS_DIR.exists():
        pytest.skip(f"real annotation excerpts not found at {FORMATS_DIR}")
    return FORMATS_DIR


# ---- a tiny demo chain shared by the stage tests (built once per session, on demand) ----------

TINY_DEMO_SETS = [
    "data.demo_clips=24",
    "extract.random_init=true",  # the shared chain skips the extractor fit (tests/pipeline/test_demo_fit.py fits)
    "extract.num_frames=8",
    "extract.batch_size=8",
    "extract.workers=0",
    "model.hidden=64",
    "model.layers=1",
    "model.heads=2",
    "model.intermediate=128",
    "model.video_proj=64",
    "model.vocab_size=200",
    "train.epochs=2",
    "train.batch_size=8",
    "caption.max_length=32",
]


@pytest.fixture(scope="session")
def tiny_demo_sets(tmp_path_factory) -> list[str]:
    """`--set` overrides for a tiny demo chain in a temporary folder (24 clips, 1-layer model)."""
    root = tmp_path_factory.mktemp("tiny_demo")
    return [f"data.root={root / 'data'}", f"data.cache_root={root / 'cache'}", *TINY_DEMO_SETS]


@pytest.fixture(scope="session")
def tiny_demo_cfg(tiny_demo_sets):
    """The tiny demo config (treat as read-only; build your own with load_config to change fields)."""
    from pipeline.config import load_config

    return load_config("demo", tiny_demo_sets)


@pytest.fixture(scope="session")
def tiny_demo_extracted(tiny_demo_cfg):
    """The tiny demo with stage one done (demo clips generated, manifest and store written)."""
    from pipeline.extract import stage as extract

    extract.run(tiny_demo_cfg)
    return tiny_demo_cfg


@pytest.fixture(scope="session")
def tiny_demo_trained(tiny_demo_extracted):
    """The tiny demo with stage two done too."""
    from pipeline.train import stage as train

    train.run(tiny_demo_extracted)
    return tiny_demo_extracted
