"""Decoding and SwinBERT-style sampling (pipeline.extract.video) on real mp4 files."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.extract.video import ClipError, decode_clip, sample_indices


def test_sample_indices_even_and_inclusive():
    idx = sample_indices(100, 5)
    assert idx.tolist() == [0, 25, 50, 74, 99]  # linspace(0, 99, 5) = 0, 24.75, 49.5, 74.25, 99, rounded
    assert np.all(np.diff(sample_indices(1000, 32)) > 0)


def test_sample_indices_short_clip_repeats():
    idx = sample_indices(3, 8)
    assert len(idx) == 8 and set(idx.tolist()) == {0, 1, 2}
    assert np.all(np.diff(idx) >= 0)
    assert sample_indices(1, 4).tolist() == [0, 0, 0, 0]


def test_decode_demo_clip_shapes(tiny_demo_extracted):
    from pipeline.data.manifest import read_manifest

    clip = read_manifest(tiny_demo_extracted.manifest_path)[0]
    d = decode_clip(clip.video, 8, 64, 48)
    assert d.frames.shape == (8, 48, 48, 3) and d.frames.dtype == np.uint8
    assert min(d.resized.shape[1:3]) == 64
    assert d.decoder == "decord"
    x0, y0 = d.crop_offset
    assert np.array_equal(d.frames, d.resized[:, y0:y0 + 48, x0:x0 + 48])


@pytest.mark.parametrize("name,n,hw", [("00721", 149, (360, 720)), ("02358", 75, (576, 1024))])
def test_mafw_decord_matches_pyav(mafw_samples, name, n, hw):
    a = decode_clip(mafw_samples / f"{name}.mp4", 16, 224, 224, decoder="decord")
    b = decode_clip(mafw_samples / f"{name}.mp4", 16, 224, 224, decoder="pyav")
    assert a.num_source_frames == b.num_source_frames == n
    assert a.source.shape[1:3] == hw and a.frames.shape == (16, 224, 224, 3)
    assert a.resized.shape[1:3] == (224, round(hw[1] * 224 / hw[0]))
    assert a.indices.tolist() == b.indices.tolist()
    diff = np.abs(a.frames.astype(int) - b.frames.astype(int))
    assert diff.mean() < 3.0, diff.mean()  # same frames; only colour conversion rounding differs


def test_bad_files_raise_readable_reasons(tmp_path, mafw_samples):
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("hello, not a video\n")
    data = (mafw_samples / "02358.mp4").read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 3])
    expect = {"zero.mp4": "empty (0 bytes)", "text.mp4": "not a video", "trunc.mp4": "truncated",
              "missing.mp4": "not found", ".": "directory"}
    for name, words in expect.items():
        with pytest.raises(ClipError) as e:
            decode_clip(tmp_path / name, 4, 64, 64)
        assert words in e.value.reason, (name, e.value.reason)


def test_audio_only_file_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in s.encode(frame):
            out.mux(packet)
        for packet in s.encode(None):
            out.mux(packet)
    with pytest.raises(ClipError, match="no video stream"):
        decode_clip(path, 4, 64, 64)
