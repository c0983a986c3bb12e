"""The stage-one runner: resume, bad clips, errors.jsonl, the lock (pipeline.extract.runner + pipeline.extract.stage)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr

from pipeline.errors import UserError, WeightsMissingError
from pipeline.chain.locks import lock_path
from pipeline.extract.runner import StoreLock, read_errors
from pipeline.extract import stage as extract
from pipeline.chain.plan import prepare_and_plan as plan
from tests.pipeline.extract._extract_helpers import demo_videos, mini_config

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
    from pipeline.extract.networks.extractors import build_extractors

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
        extract.run(cfg, extractors=killed)
    p, g = _store(cfg)
    assert g["done"][:].tolist() == [True, True, False]
    assert not (p.out_dir / "stage.json").exists()
    assert not lock_path(p.out_dir).exists()  # released on the way out

    again = Counting(real_extractors)
    rec = extract.run(cfg, extractors=again)
    assert again.clips == 1  # only the unfinished clip
    assert rec["counts"] == {**rec["counts"], "done": 3, "failed": 0, "skipped": 2, "extracted": 1}
    assert (p.out_dir / "stage.json").exists()

    whole_cfg = mini_config_for(tiny_demo_extracted, tmp_path / "b", n=3)
    assert plan(whole_cfg, upto="extract")["extract"].key == p.key  # same clips, same settings: same key
    extract.run(whole_cfg, extractors=real_extractors)
    _, g1 = _store(cfg)
    _, g2 = _store(whole_cfg)
    assert g1["clip_id"][:].tolist() == g2["clip_id"][:].tolist()
    for name in ARRAYS:
        a, b = g1[name][:].astype(np.float32), g2[name][:].astype(np.float32)
        assert not np.isnan(a).any() and np.abs(a).sum() > 0, name
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3, err_msg=name)

    # Fresh now: a third run reuses the record and computes nothing.
    third = Counting(real_extractors)
    assert extract.run(cfg, extractors=third)["key"] == p.key and third.clips == 0


def test_bad_clips_recorded_and_retry_clears_them(tiny_demo_extracted, real_extractors, tmp_path, monkeypatch):
    import pipeline.extract.runner as extraction
    from pipeline.extract.video import ClipError

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
        extract.run(cfg, extractors=Counting(real_extractors, fail_after=0))
    assert {e["clip_id"] for e in read_errors(p.out_dir / "errors.jsonl")} == {*bad, "ok1"}  # kept on a kill
    assert not (p.out_dir / "stage.json").exists()
    monkeypatch.setattr(extraction, "decode_clip", real_decode)

    # The rerun retries every unfinished clip; ok1 succeeds and leaves errors.jsonl, the bad ones stay.
    with pytest.raises(UserError, match="4 of 6 clips failed"):
        extract.run(cfg, extractors=real_extractors, strict=True)
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
        extract.run(cfg)
    p = plan(cfg, upto="extract")["extract"]
    assert not (p.out_dir / "store.zarr").exists()


def test_lock_refuses_live_writer_and_takes_over_stale(tmp_path):
    """StoreLock is the extract output's stage lock (pipeline.chain.locks), taken without waiting."""
    import json
    import socket

    from pipeline.chain.locks import process_start

    out = tmp_path / "features" / "k"
    lock = lock_path(out)
    lock.parent.mkdir(parents=True)
    parent = os.getppid()  # our parent: alive, with this start time
    lock.write_text(json.dumps({"pid": parent, "host": socket.gethostname(), "start": process_start(parent),
                                "since": 0.0}))
    with pytest.raises(UserError, match=f"another extraction \\(pid {parent}\\b.*\\) is writing store-x"):
        StoreLock(out, "store-x").acquire()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "start": "1", "since": 0.0}))
    with StoreLock(out, "store-x"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def _chunk_bytes(store) -> dict[str, bytes]:
    """Every per-clip chunk file of a store by its path (the one-chunk clip_id / fingerprint / done arrays left
    out: they are rewritten when rows change)."""
    from pathlib import Path

    store = Path(store)
    out = {}
    for f in sorted(store.rglob("*")):
        rel = f.relative_to(store).as_posix()
        if f.is_file() and "/c/" in f"/{rel}" and not rel.split("/")[0] in ("clip_id", "fingerprint", "done"):
            out[rel] = f.read_bytes()
    return out


def _row_of(rel: str) -> int:
    """The clip row of a chunk path like 'vid/tokens/c/2/0/0'."""
    parts = rel.split("/")
    return int(parts[parts.index("c") + 1])


def test_replace_add_remove_extract_only_those_clips(tiny_demo_extracted, real_extractors, tmp_path):
    """Clip-level incremental extraction: one key, one store; a replaced video is recomputed alone (every other
    clip's chunk bytes untouched), an added one is computed alone, a removed one changes the train key."""
    import shutil

    from pipeline.data.fingerprint import video_fingerprint
    from pipeline.extract.store import FACE_SOURCES, clip_states

    videos = demo_videos(tiny_demo_extracted)
    root = tmp_path / "d"
    cfg = mini_config(root, videos[:3])
    first = Counting(real_extractors)
    rec = extract.run(cfg, extractors=first)
    p0 = plan(cfg, upto="train")
    assert first.clips == 3 and rec["counts"]["added"] == 3
    store = p0["extract"].out_dir / "store.zarr"
    before = _chunk_bytes(store)
    g = zarr.open_group(str(store), mode="r")
    assert g["fingerprint"][:].tolist() == [video_fingerprint(root / f"videos/ok{i}.mp4", root) for i in range(3)]
    assert g["fingerprint"][0].item().startswith(f"videos/ok0.mp4|{(root / 'videos/ok0.mp4').stat().st_size}|")
    assert set(np.unique(g["face/source"][:])) <= set(range(len(FACE_SOURCES)))
    tokens1 = g["vid/tokens"][1].copy()

    # unchanged: nothing to do, and the keys stay
    assert plan(cfg, upto="train")["train"].key == p0["train"].key
    assert plan(cfg, upto="extract")["extract"].status() == "fresh"

    # replace ok1 with another video: same key, same folder, status 'changed', exactly one clip recomputed
    shutil.copy(videos[3], root / "videos/ok1.mp4")
    p1 = plan(cfg, upto="train")
    assert p1["extract"].key == p0["extract"].key and p1["extract"].status() == "changed"
    assert p1["train"].key != p0["train"].key  # ok1 is a train clip: its new fingerprint retrains
    from pipeline.chain.run import chain_status as _chain_status

    def chain_status(cfg, **kw):
        from pipeline.chain.plan import read_inputs

        return _chain_status(cfg, read_inputs(cfg), **kw)

    (row,) = chain_status(cfg, upto="extract")
    assert row["status"] == "stale" and "clips: 2 fresh, 1 stale, 0 missing" in row["reason"]
    assert "running extracts only those clips, in the same store" in row["reason"]
    redo = Counting(real_extractors)
    rec = extract.run(cfg, extractors=redo)
    assert redo.clips == 1
    assert {k: rec["counts"][k] for k in ("added", "redone", "dropped", "extracted", "skipped")} == \
        {"added": 0, "redone": 1, "dropped": 0, "extracted": 1, "skipped": 2}
    assert rec["extra"]["changes"] == {"added": [], "redone": ["ok1"], "dropped": []}
    after = _chunk_bytes(store)
    assert set(after) == set(before)
    changed = {rel for rel in before if before[rel] != after[rel]}
    assert changed and {_row_of(rel) for rel in changed} == {1}  # the other clips' bytes are untouched
    g = zarr.open_group(str(store), mode="r")
    assert not np.array_equal(g["vid/tokens"][1], tokens1)
    assert plan(cfg, upto="extract")["extract"].status() == "fresh"

    # add a fourth clip: one computed, appended as row 3
    cfg4 = mini_config(root, videos[:4])
    assert plan(cfg4, upto="extract")["extract"].key == p0["extract"].key
    add = Counting(real_extractors)
    rec = extract.run(cfg4, extractors=add)
    assert add.clips == 1 and rec["counts"]["added"] == 1 and rec["counts"]["done"] == 4
    g = zarr.open_group(str(store), mode="r")
    assert g["clip_id"][:].tolist() == ["ok0", "ok1", "ok2", "ok3"] and g["done"][:].all()
    grown = _chunk_bytes(store)
    assert all(grown[rel] == after[rel] for rel in after)
    train4 = plan(cfg4, upto="train")["train"].key

    # remove it again: the train key changes, the extraction computes nothing and keeps the row
    cfg3 = mini_config(root, videos[:3])
    (root / "videos/ok3.mp4").unlink()
    p3 = plan(cfg3, upto="train")
    assert p3["train"].key != train4 and p3["extract"].status() == "changed"
    none = Counting(real_extractors)
    rec = extract.run(cfg3, extractors=none)
    assert none.clips == 0 and rec["counts"]["dropped"] == 1 and rec["extra"]["changes"]["dropped"] == ["ok3"]
    assert rec["counts"]["clips"] == 3 and rec["counts"]["done"] == 3
    g = zarr.open_group(str(store), mode="r")
    assert clip_states(g, p3["extract"].fingerprints) == {"fresh": 3, "stale": 0, "missing": 0, "dropped": 1}


def test_clip_without_a_face_is_kept_with_the_fallback_box_and_small_clips_warn(tiny_demo_extracted,
                                                                               real_extractors, tmp_path):
    """A clip with no face anywhere is extracted (never dropped) with the centre-square fallback in every frame,
    counted in the record and in `ecpa status`; a 4-frame 64x64 clip is extracted with warnings naming its file."""
    from pipeline.data.demo import write_mp4
    from pipeline.extract.runner import MIN_FRAMES, MIN_SIDE
    from pipeline.extract.store import FACE_SOURCES
    from pipeline.chain.run import chain_status as _chain_status

    def chain_status(cfg, **kw):
        from pipeline.chain.plan import read_inputs

        return _chain_status(cfg, read_inputs(cfg), **kw)

    root = tmp_path / "d"
    (root / "videos").mkdir(parents=True)
    write_mp4(root / "videos/noface.mp4", np.full((4, 64, 64, 3), (20, 90, 30), np.uint8), fps=8)
    cfg = mini_config(root, demo_videos(tiny_demo_extracted)[:1], bad={"noface": "as written"})
    rec = extract.run(cfg, extractors=real_extractors)
    c = rec["counts"]
    assert c["done"] == 2 and c["failed"] == 0
    assert c["fallback_clips"] == 1 and c["fallback_frames"] == cfg.extract.num_frames
    g = zarr.open_group(rec["extra"]["store"], mode="r")
    row = g["clip_id"][:].tolist().index("noface")
    assert g["face/source"][row].tolist() == [FACE_SOURCES.index("fallback")] * cfg.extract.num_frames
    assert FACE_SOURCES.index("fallback") not in g["face/source"][1 - row].tolist()
    assert g["done"][row] and not np.isnan(g["face/boxes"][row]).any()
    warned = [w for w in rec["extra"]["warnings"] if w["clip_id"] == "noface"]
    assert all(w["video"] == str(root / "videos/noface.mp4") for w in warned)
    assert any(f"only 4 frame(s) in the file (fewer than {MIN_FRAMES})" in w["warning"] for w in warned)
    assert any(f"frames of 64x64 pixels (short side under {MIN_SIDE})" in w["warning"] for w in warned)
    assert not [w for w in rec["extra"]["warnings"] if w["clip_id"] != "noface"]  # the 384-px, 64-frame demo clip is fine
    (ex,) = chain_status(cfg, upto="extract")
    assert ex["status"] == "fresh"
    assert {k: ex["clips"][k] for k in ("fresh", "stale", "missing", "fallback_clips")} == \
        {"fresh": 2, "stale": 0, "missing": 0, "fallback_clips": 1}
