"""The stage-one runner's machinery (issue 16): bounded look-ahead of the decoding pool, the store writer
thread (order of writes, errors raised in the loop's thread with the clip ids), batch size and workers by
device/cores. Tiny demo clips (4 frames of 64^2) and a stand-in for the three extractors whose features are
a function of the clip's pixels, so a clip written to another clip's row is caught."""
from __future__ import annotations

import errno
import gc
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ExtractConfig
from pipeline.errors import UserError
from pipeline.extract import runner
from pipeline.extract.store import StoreShapes, create_store, open_store

SHAPES = StoreShapes(tokens=2, channels=3, frames=4, er_dim=3, emotions=2, au_frames=2, aus=1, au_dim=3)
N_CLIPS = 12


def tiny_ex(**kw) -> ExtractConfig:
    base = dict(num_frames=4, size=64, crop=64, face_size=32, au_frames=2, face_detector="center", batch_size=2,
                workers=2, random_init=True)
    return ExtractConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def clip_tasks(tmp_path_factory) -> list[runner.ClipTask]:
    from pipeline.data.demo import generate

    root = tmp_path_factory.mktemp("runner_clips")
    generate(root, n_clips=N_CLIPS, seed=3, frames=8, size=64)
    return [runner.ClipTask(i, f"demo_{i:04d}", str(root / "videos" / f"demo_{i:04d}.mp4")) for i in range(N_CLIPS)]


class PixelExtractors:
    """Stands in for Video Swin, ResNet50-ER and ANFL: per-clip features are channel means of its pixels.
    `delay` seconds per batch make a deliberately slow model; `on_forward` is called inside each forward."""

    def __init__(self, delay: float = 0.0, on_forward=None, first_delay: float | None = None):
        self.delay, self.on_forward, self.calls = delay, on_forward, 0
        self.first_delay = delay if first_delay is None else first_delay

    def video(self, x):                                      # B, 3, T, H, W
        self.calls += 1
        if self.on_forward:
            self.on_forward()
        time.sleep(self.first_delay if self.calls == 1 else self.delay)
        if self.on_forward:
            self.on_forward()
        m = x.mean(dim=(2, 3, 4))                            # B, 3
        return torch.stack([m, 2 * m], dim=1)                # B, L=2, C=3

    def er(self, faces):                                     # B*F, 3, S, S
        m = faces.mean(dim=(2, 3))
        return m, m[:, :2]

    def au(self, faces):                                     # B*Fa, 3, S, S
        m = faces.mean(dim=(2, 3))
        return m[:, None, :], m[:, :1]


def expected_tokens(task: runner.ClipTask, ex: ExtractConfig) -> np.ndarray:
    p = runner.prepare_clip(task, ex)
    m = p.video.astype(np.float32).mean(axis=(0, 1, 2)) / 255.0
    return np.stack([m, 2 * m]).astype(np.float16)


def new_store(path: Path, tasks) -> object:
    return create_store(path, [t.clip_id for t in tasks], SHAPES, {})


def prepared_alive() -> int:
    """Decoded clips held by this process right now (Prepared objects: in the loop's batch, or results the
    pool has received and the loop has not taken yet)."""
    return sum(type(o) is runner.Prepared for o in gc.get_objects())


def _run_counting(tasks, tmp_path, ex, delay: float) -> tuple[int, object]:
    peak = {"n": 0}

    def sample():
        peak["n"] = max(peak["n"], prepared_alive())

    g = new_store(tmp_path / "store.zarr", tasks)
    # the first batch waits longest: time for the pool to decode every clip it is allowed to (a loaded machine too)
    runner.extract_into_store(g, tasks, PixelExtractors(delay, sample, first_delay=5 * delay), ex, "cpu")
    return peak["n"], g


def test_bounded_lookahead_holds_memory_flat_with_a_slow_model(clip_tasks, tmp_path, monkeypatch):
    ex = tiny_ex()
    bound = runner.lookahead(2, ex.batch_size) + ex.batch_size   # in flight + the batch being computed
    assert bound < N_CLIPS
    peak, g = _run_counting(clip_tasks, tmp_path / "bounded", ex, delay=0.4)
    assert 0 < peak <= bound, f"{peak} decoded clips held at once, bound {bound}"
    assert np.asarray(g["done"][:]).all()
    # the same run with an unbounded look-ahead (what Pool.imap did) piles the clips up: the measure can fail
    monkeypatch.setattr(runner, "lookahead", lambda workers, batch: N_CLIPS)
    unbounded, _ = _run_counting(clip_tasks, tmp_path / "unbounded", ex, delay=0.4)
    assert unbounded > bound, f"unbounded look-ahead held only {unbounded} clips; the slow model hid nothing"


def test_pipelined_run_writes_each_clip_to_its_own_row(clip_tasks, tmp_path):
    """Pool + look-ahead + writer thread (workers=2, batch 3, clips given out of row order with gaps) write
    exactly what the serial path computes, row by row; the counts and the timing split add up."""
    ex = tiny_ex(batch_size=3)
    tasks = [clip_tasks[i] for i in (5, 0, 1, 2, 9, 7, 8, 3, 11)]   # rows 4, 6, 10 left not done
    g = new_store(tmp_path / "store.zarr", clip_tasks)
    calls = []
    res = runner.extract_into_store(g, tasks, PixelExtractors(), ex, "cpu", on_clip=lambda k, n: calls.append((k, n)))
    g = open_store(tmp_path / "store.zarr")
    done = np.asarray(g["done"][:])
    assert sorted(np.flatnonzero(done).tolist()) == sorted(t.index for t in tasks)
    tokens = np.asarray(g["vid/tokens"][:])
    for t in tasks:
        np.testing.assert_allclose(tokens[t.index], expected_tokens(t, ex), atol=1e-3, err_msg=t.clip_id)
    assert np.isnan(np.asarray(g["face/boxes"][4])).all()          # a row not handed in stays unwritten
    assert res.done == len(tasks) and sum(n for k, n in calls if k == "done") == len(tasks)
    assert res.decode_seconds > 0 and res.face_seconds > 0 and res.write_seconds > 0 and res.compute_seconds > 0


class RecordingArray:
    def __init__(self, name: str, log: list, fail_row: int | None = None):
        self.name, self.log, self.fail_row = name, log, fail_row
        self.oindex = self

    def __setitem__(self, key, value):
        rows = list(range(key.start, key.stop)) if isinstance(key, slice) else [int(r) for r in np.atleast_1d(key)]
        if self.fail_row in rows:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.log += [(self.name, r, threading.current_thread().name) for r in rows]


class RecordingGroup(dict):
    def __init__(self, fail_row: int | None = None):
        super().__init__()
        self.log: list = []
        for name in ["done", *SHAPES.arrays()]:
            self[name] = RecordingArray(name, self.log, fail_row if name == "au/feats" else None)


def test_done_flags_are_written_after_every_array_of_their_clip_off_the_main_thread(clip_tasks):
    g = RecordingGroup()
    runner.extract_into_store(g, clip_tasks[:7], PixelExtractors(), tiny_ex(batch_size=3, workers=0), "cpu")
    names = list(SHAPES.arrays())
    for row in range(7):
        events = [(i, n) for i, (n, r, _) in enumerate(g.log) if r == row]
        done_at = [i for i, n in events if n == "done"]
        assert len(done_at) == 1, f"row {row}: done written {len(done_at)} times"
        arrays_at = {n: i for i, n in events if n != "done"}
        assert set(arrays_at) == set(names), f"row {row}: arrays written {sorted(arrays_at)}"
        assert max(arrays_at.values()) < done_at[0], f"row {row}: done written before an array"
    assert {t for *_, t in g.log} == {"ecpa-store-writer"}, "store writes ran on the loop's thread"


def test_a_write_error_in_the_writer_is_raised_in_the_loop_naming_the_clip(clip_tasks):
    g = RecordingGroup(fail_row=4)                    # the second batch of 3 (rows 3, 4, 5) fails on disk full
    res = runner.ExtractResult()
    with pytest.raises(runner.StoreWriteError) as err:
        runner.extract_into_store(g, clip_tasks[:9], PixelExtractors(), tiny_ex(batch_size=3, workers=0), "cpu",
                                  result=res)
    assert "demo_0004" in str(err.value) and "demo_0003" in str(err.value) and "No space left" in str(err.value)
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    from pipeline.extract.stage import disk_full_error      # the stage's disk-full message still finds the cause

    assert disk_full_error(err.value) is err.value.__cause__
    done_rows = sorted(r for n, r, _ in g.log if n == "done")
    assert done_rows == [0, 1, 2], f"done flags {done_rows}: only the batch before the failure may be done"
    assert res.done == 3, "the interrupted run's result must count the clips it did finish"


def test_batch_size_and_workers_resolve_by_device_and_cores(monkeypatch):
    assert runner.batch_size_for(tiny_ex(batch_size=0), "cpu") == runner.AUTO_BATCH["cpu"]
    assert runner.batch_size_for(tiny_ex(batch_size=5), "cpu") == 5

    class Props:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props)
    assert runner.batch_size_for(tiny_ex(batch_size=0), "cuda:0") == runner.AUTO_BATCH["cuda"]
    Props.total_memory = 16 * 2**30
    assert runner.batch_size_for(tiny_ex(batch_size=0), "cuda:0") == runner.AUTO_BATCH["cuda_small"]
    assert runner.AUTO_BATCH["cuda_small"] > runner.AUTO_BATCH["cpu"]
    assert runner.batch_size_for(tiny_ex(batch_size=0), "cuda:0") != runner.batch_size_for(tiny_ex(batch_size=0), "cpu")
    monkeypatch.setattr(runner, "usable_cores", lambda: 16)
    assert runner.decode_workers(-1) == 16 and runner.decode_workers(0) == 0 and runner.decode_workers(3) == 3
    assert ExtractConfig().workers == -1 and ExtractConfig().batch_size == 0   # the defaults are the automatic ones
    with pytest.raises(UserError, match="extract.workers=-2"):
        runner.decode_workers(-2)
    with pytest.raises(UserError, match="extract.batch_size=-1"):
        runner.batch_size_for(tiny_ex(batch_size=-1), "cpu")
