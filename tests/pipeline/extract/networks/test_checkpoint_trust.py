"""Foreign checkpoints are read as plain weights only (issue 18): a pickle that would run code is refused,
naming the file and why; the types the original checkpoints carry (numpy scalars in mmcv's meta, a saved
argparse.Namespace) load with weights_only=True; the trust switch is per file and recorded."""
from __future__ import annotations

import argparse
import dataclasses
import pathlib

import numpy as np
import pytest
import torch

from pipeline.checkpoints import UntrustedPickleError, load_state_dict_file, read_checkpoint


class _RunsCode:
    """Unpickling this calls Path.touch(marker): what a tampered checkpoint would do with os.system."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "OpenGprahAU-ResNet50_first_stage.pth"
    torch.save({"epoch": 1, "state_dict": {"module.w": torch.ones(2)}, "optimizer": {}, "x": _RunsCode(marker)}, p)
    with pytest.raises(UntrustedPickleError) as e:
        read_checkpoint(p)
    msg = str(e.value)
    assert str(p) in msg and "weights_only=True" in msg and "getattr" in msg  # the file, and the reason
    assert not marker.exists(), "the refused file ran code"


def test_original_checkpoint_extras_load_as_plain_weights(tmp_path):
    """mmaction/mmcv-style meta with numpy scalars and arrays, a script's argparse.Namespace: no trust needed."""
    p = tmp_path / "swin.pth"
    meta = {"epoch": 30, "best_score": np.float64(0.81), "mean": np.array([0.5, 0.4]), "CLASSES": ("a", "b"),
            "args": argparse.Namespace(lr=0.1, arch="swin"), "dtype": np.dtype("float32")}
    torch.save({"meta": meta, "state_dict": {"backbone.w": torch.ones(3)}}, p)
    obj = read_checkpoint(p)
    assert float(obj["meta"]["best_score"]) == pytest.approx(0.81) and obj["meta"]["args"].arch == "swin"
    sd = load_state_dict_file(p)
    assert list(sd) == ["backbone.w"] and torch.equal(sd["backbone.w"], torch.ones(3))


def test_extraction_refuses_then_trusts_the_named_file_and_records_it(tmp_path):
    """Through build_extractors, as `ecpa extract` loads the three files: refused until extract.trust_pickle
    names exactly that file; then loaded and listed in `unpickled` (stages/extract puts it in stage.json)."""
    from pipeline.config import load_config
    from pipeline.extract.networks.extractors import build_extractors
    from tests.pipeline.extract.networks.test_video_swin import to_original_layout

    ex = dataclasses.replace(load_config("demo", ["extract.random_init=true"]).extract, er_model="resnet18")
    src = build_extractors(ex, num_emotions=7, device="cpu", seed=0)
    wd = tmp_path / "weights"
    wd.mkdir()
    marker = tmp_path / "ran"
    torch.save({"state_dict": dict(src.er_model.state_dict())}, wd / "er.pth")
    torch.save({"epoch": 1, "optimizer": {}, "state_dict": {"module." + k: v for k, v in src.au_model.state_dict().items()},
                "hook": _RunsCode(marker)}, wd / "au.pth")
    torch.save({"state_dict": {"backbone." + k: v for k, v in to_original_layout(src.swin_model.state_dict()).items()}},
               wd / "swin.pth")
    ex = dataclasses.replace(ex, random_init=False, weights_dir=str(wd), er_weights="er.pth", au_weights="au.pth",
                             swin_weights="swin.pth")
    with pytest.raises(UntrustedPickleError, match="au.pth"):
        build_extractors(ex, 7, "cpu")
    assert not marker.exists()
    with pytest.raises(UntrustedPickleError):
        build_extractors(dataclasses.replace(ex, trust_pickle=["er.pth"]), 7, "cpu")   # another file named
    loaded = build_extractors(dataclasses.replace(ex, trust_pickle=["au.pth"]), 7, "cpu")
    assert loaded.unpickled == [str(wd / "au.pth")] and marker.exists()   # trusted: read with the full unpickler
