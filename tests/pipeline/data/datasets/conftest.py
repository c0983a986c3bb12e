"""Helpers for the adapter tests: a config pointing at a dataset root in tmp_path, and tiny files."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import MAFW_EMOTIONS, Config, load_config


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def touch_videos(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"not really a video")


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(format, **data_fields) -> Config with data.root = tmp_path/'root', cache under tmp_path."""

    def make(fmt: str, **fields) -> Config:
        cfg = load_config("demo", [f"data.root={tmp_path / 'root'}", f"data.cache_root={tmp_path / 'cache'}"])
        cfg.data.format = fmt
        cfg.data.name = fmt
        cfg.data.emotions = list(MAFW_EMOTIONS)
        for k, v in fields.items():
            assert hasattr(cfg.data, k), k
            setattr(cfg.data, k, v)
        return cfg

    return make
