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
