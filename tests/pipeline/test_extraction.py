"""The stage-one runner: resume, bad clips, errors.jsonl, the lock (pipeline.extraction + stages.extract)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from pipeline.errors import UserError, WeightsMissingError
from pipeline.extraction import StoreLock, read_errors
from stages import extract
from stages.plan import plan
from tests.pipeline._extract_helpers import demo_videos, mini_config

ARRAYS = ("vid/tokens", "er/feats", "er/logits", "au/feats", "au/probs", "face/boxes")


class Counting:
    """Wraps the real extractors: counts the clips Video Swin sees; raises once `fail_after` is passed."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.clips = inner, fail_after, 0

    def video(self, clip):
        if self.fail_after is not None and self.clips + clip.shape[0] > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.clips += clip.shape[0]
        return self.inner.video(clip)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def real_extractors(tiny_demo_extracted):
    from pipeline.models.extractors import build_extractors

    cfg = mini_config_for(tiny_demo_extracted, None)
    return build_extractors(cfg.extract, len(cfg.data.emotions), "cpu", seed=extract.SEED)


def mini_config_for(demo_cfg, root, **kw):
    import tempfile
    from pathlib import Path

    root = Path(root or tempfile.mkdtemp())
    return mini_config(root, demo_videos(demo_cfg)[: kw.pop("n", 4)], **kw)


def _store(cfg):
    p = plan(cfg, upto="extract")["extract"]
    return p, zarr.open_group(str(p.out_dir / "store.zarr"), mode="r")


def test_resume_after_kill_recomputes_nothing_and_equals_uninterrupted(tiny_demo_extracted, real_extractors, tmp_path):
    cfg = mini_config_for(tiny_demo_extracted, tmp_path / "a", n=3)
    killed = Counting(real_extractors, fail_after=2)  # batch_size 2: the first batch lands, the second is killed
    with pytest.raises(KeyboardInterrupt):
        extract.run(cfg, progress=False, extractors=killed)
    p, g = _store(cfg)
    assert g["done"][:].tolist() == [True, True, False]
    assert not (p.out_dir / "stage.json").exists()
    assert not (p.out_dir / ".extract.lock").exists()  # released on the way out

    again = Counting(real_extractors)
    rec = extract.run(cfg, progress=False, extractors=again)
    assert again.clips == 1  # only the unfinished clip
    assert rec["counts"] == {**rec["counts"], "done": 3, "failed": 0, "skipped": 2, "extracted": 1}
    assert (p.out_dir / "stage.json").exists()

    whole_cfg = mini_config_for(tiny_demo_extracted, tmp_path / "b", n=3)
    assert plan(whole_cfg, upto="extract")["extract"].key == p.key  # same clips, same settings: same key
    extract.run(whole_cfg, progress=False, extractors=real_extractors)
    _, g1 = _store(cfg)
    _, g2 = _store(whole_cfg)
    assert g1["clip_id"][:].tolist() == g2["clip_id"][:].tolist()
    for name in ARRAYS:
        a, b = g1[name][:].astype(np.float32), g2[name][:].astype(np.float32)
        assert not np.isnan(a).any() and np.abs(a).sum() > 0, name
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3, err_msg=name)

    # Fresh now: a third run reuses the record and computes nothing.
    third = Counting(real_extractors)
    assert extract.run(cfg, progress=False, extractors=third)["key"] == p.key and third.clips == 0


def test_bad_clips_recorded_and_retry_clears_them(tiny_demo_extracted, real_extractors, tmp_path, monkeypatch):
    import pipeline.extraction as extraction
    from pipeline.video import ClipError

    bad = {"zero": "zero", "text": "text", "trunc": "truncated", "gone": "missing"}
    cfg = mini_config_for(tiny_demo_extracted, tmp_path, n=2, bad=bad)
    p = plan(cfg, upto="extract")["extract"]

    # First attempt: ok1 fails transiently (say, a network share hiccup) and the run is killed at the end.
    real_decode = extraction.decode_clip

    def flaky(path, *a, **kw):
        if str(path).endswith("ok1.mp4"):
            raise ClipError("transient read error")
        return real_decode(path, *a, **kw)

    monkeypatch.setattr(extraction, "decode_clip", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract.run(cfg, progress=False, extractors=Counting(real_extractors, fail_after=0))
    assert {e["clip_id"] for e in read_errors(p.out_dir / "errors.jsonl")} == {*bad, "ok1"}  # kept on a kill
    assert not (p.out_dir / "stage.json").exists()
    monkeypatch.setattr(extraction, "decode_clip", real_decode)

    # The rerun retries every unfinished clip; ok1 succeeds and leaves errors.jsonl, the bad ones stay.
    with pytest.raises(UserError, match="4 of 6 clips failed"):
        extract.run(cfg, progress=False, extractors=real_extractors, strict=True)
    _, g = _store(cfg)
    rec = json.loads((p.out_dir / "stage.json").read_text())  # written even under strict: every clip is accounted for
    assert rec["counts"]["done"] == 2 and rec["counts"]["failed"] == 4
    errors = {e["clip_id"]: e for e in read_errors(p.out_dir / "errors.jsonl")}
    assert set(errors) == set(bad)
    assert "empty (0 bytes)" in errors["zero"]["reason"]
    assert "not a video" in errors["text"]["reason"]
    assert "truncated" in errors["trunc"]["reason"]
    assert "not found" in errors["gone"]["reason"]
    assert errors["gone"]["video"].endswith("gone.mp4")
    done = dict(zip(g["clip_id"][:].tolist(), g["done"][:].tolist()))
    assert done == {"ok0": True, "ok1": True, **{k: False for k in bad}}


def test_missing_weights_stop_before_any_work(tiny_demo_extracted, tmp_path):
    cfg = mini_config_for(tiny_demo_extracted, tmp_path, extra=["extract.random_init=false",
                                                                f"extract.weights_dir={tmp_path / 'weights'}"])
    with pytest.raises(WeightsMissingError, match="resnet50_er_mafw.pth"):
        extract.run(cfg, progress=False)
    p = plan(cfg, upto="extract")["extract"]
    assert not (p.out_dir / "store.zarr").exists()


def test_lock_refuses_live_writer_and_takes_over_stale(tmp_path):
    import socket

    lock = tmp_path / ".extract.lock"
    lock.write_text(f"{socket.gethostname()} {os.getppid()}\n")  # our parent: alive
    with pytest.raises(UserError, match=f"another extraction \\(pid {os.getppid()}\\) is writing store-x"):
        StoreLock(tmp_path, "store-x").acquire()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{socket.gethostname()} {dead.pid}\n")
    with StoreLock(tmp_path, "store-x"):
        assert lock.read_text().split()[1] == str(os.getpid())
    assert not lock.exists()
