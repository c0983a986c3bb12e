"""A factory of bad (and awkward-but-valid) video files for the fault tests, written with PyAV/numpy.

`write_bad_video(kind, path, frames)` writes one file (or directory, or link) of a kind below at
`path`; `frames` is a (T, H, W, 3) uint8 array of a real face clip (decoded from a demo video), so
the kinds that must extract still show a face the 'skin' detector finds.

    kind               what lands at the path                                       expected
    zero_bytes         an empty file                                                 error
    truncated          a faststart MP4 cut in the middle of its media data          error
    truncated_index    an MP4 cut in half before its index (moov, written at the end) error
    index_cut          an MP4 cut inside its index box (an interrupted download)     error
    png_as_mp4         a PNG image named .mp4                                        error
    text_as_mp4        a text file named .mp4                                        error
    garbage_mp4        an 'ftyp' header followed by random bytes                     error
    audio_only         an MP4 with one AAC audio stream and no video                 error
    directory          a directory named like a video                                error
    dangling_link      a symlink to a file that does not exist                       error
    unreadable         a valid MP4 with mode 000 (only meaningful when not root)     error
    single_frame       a valid MP4 holding one frame                                 extracts
    vfr                a valid MP4 with irregular frame timestamps                   extracts
    rotated            a valid MP4 whose track header says 'rotate 90 degrees'       extracts
    huge               a valid MP4 at 4000x3000                                      extracts
    no_face            a valid grey video without any face                           extracts (fallback box)

Reference: ISO/IEC 14496-12 (the 'tkhd' box layout the rotation patch edits).
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np

ERROR_KINDS = ("zero_bytes", "truncated", "truncated_index", "index_cut", "png_as_mp4", "text_as_mp4", "garbage_mp4",
               "audio_only", "directory", "dangling_link", "unreadable")
"""Kinds that must land in errors.jsonl."""
HANDLED_KINDS = ("single_frame", "vfr", "rotated", "huge", "no_face")
"""Kinds that must extract (no_face with the fallback box: no clip is dropped for want of a face)."""
ALL_KINDS = ERROR_KINDS + HANDLED_KINDS

HUGE_SIZE = (4000, 3000)
"""(width, height) of the 'huge' kind."""


def read_frames(video: str | os.PathLike) -> np.ndarray:
    """All frames of a (good) video as (T, H, W, 3) uint8, decoded with PyAV."""
    import av

    with av.open(str(video)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


def write_mp4(path: Path, frames: np.ndarray, *, fps: int = 12, pts: list[int] | None = None,
              time_base_den: int | None = None, faststart: bool = False) -> None:
    """H.264 MP4 of `frames`; `pts` (in units of 1/time_base_den s) makes the frame timing irregular."""
    import av
    from fractions import Fraction

    t, h, w, _ = frames.shape
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=opts) as c:
        s = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "threads": "1"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if pts is not None:
            s.codec_context.time_base = Fraction(1, time_base_den)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = Fraction(1, time_base_den)
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)


def _write_audio_only(path: Path, seconds: float = 1.0, rate: int = 16000) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=rate)
        n = int(seconds * rate)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
        step = 1024
        for i in range(0, n, step):
            chunk = tone[i:i + step]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = i
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)


def _png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def rotate_mp4(path: Path, degrees: int = 90) -> None:
    """Set the display matrix of the (first) video track header to a rotation by `degrees`
    (a multiple of 90), in place: the way phones mark portrait video."""
    data = bytearray(Path(path).read_bytes())
    at = data.find(b"tkhd")
    if at < 0:
        raise ValueError(f"{path}: no tkhd box")
    version = data[at + 4]
    # after 'tkhd': version+flags 4, times+track+reserved+duration (v0: 20, v1: 32), reserved 8,
    # layer 2, alternate group 2, volume 2, reserved 2, then the 3x3 matrix (9 x int32, 16.16 / 2.30)
    off = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 8
    one, zero, w = 0x00010000, 0, 0x40000000
    cos, sin = {0: (1, 0), 90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees % 360]
    matrix = [cos * one, sin * one, zero, -sin * one, cos * one, zero, zero, zero, w]
    data[off:off + 36] = struct.pack(">9i", *matrix)
    Path(path).write_bytes(bytes(data))


def _upscale(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of (T, H, W, 3) frames to (T, height, width, 3)."""
    t, h, w, _ = frames.shape
    rows = (np.arange(height) * h // height).astype(np.intp)
    cols = (np.arange(width) * w // width).astype(np.intp)
    return frames[:, rows][:, :, cols]


def write_bad_video(kind: str, path: str | os.PathLike, frames: np.ndarray, seed: int = 0) -> Path:
    """Write one file of `kind` (see the module docstring) at `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "truncated":
        write_mp4(path, frames, faststart=True)
        data = path.read_bytes()
        mdat = data.find(b"mdat")
        # keep the index and the first ~40% of the media data: the stream stops mid-way
        path.write_bytes(data[:mdat + int(0.4 * (len(data) - mdat))])
    elif kind in ("truncated_index", "index_cut"):
        write_mp4(path, frames)
        data = path.read_bytes()
        moov = data.find(b"moov")
        assert moov > data.find(b"mdat"), "expected the index after the media data"
        # truncated_index: the recording stopped before the index was written;
        # index_cut: the index box starts, then the file ends (a copy or download cut short)
        path.write_bytes(data[:len(data) // 2] if kind == "truncated_index" else data[:moov - 4 + 16])
    elif kind == "png_as_mp4":
        path.write_bytes(_png_bytes(frames[0]))
    elif kind == "text_as_mp4":
        path.write_text("id,video,caption\nthis is a caption file saved under a video name\n")
    elif kind == "garbage_mp4":
        head = struct.pack(">I4s4sI", 24, b"ftyp", b"isom", 0x200) + b"isomiso2"
        path.write_bytes(head + rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    elif kind == "audio_only":
        _write_audio_only(path)
    elif kind == "directory":
        path.mkdir()
        (path / "inside.txt").write_text("a folder named like a video\n")
    elif kind == "dangling_link":
        path.symlink_to(path.parent / f"gone_{path.stem}.mp4")
    elif kind == "no_face":
        grey = np.full_like(frames, 90)
        grey += rng.integers(0, 8, grey.shape, dtype=np.uint8)
        write_mp4(path, grey)
    elif kind == "unreadable":
        write_mp4(path, frames)
        path.chmod(0)
    elif kind == "single_frame":
        write_mp4(path, frames[:1])
    elif kind == "vfr":
        # timestamps in ms with gaps of 40..250 ms (a phone recording that drops and bursts)
        gaps = rng.integers(40, 250, len(frames))
        pts = np.concatenate([[0], np.cumsum(gaps[:-1])]).astype(int).tolist()
        write_mp4(path, frames, pts=pts, time_base_den=1000)
    elif kind == "rotated":
        t, h, w, _ = frames.shape
        wide = np.zeros((t, h, w + w // 2, 3), np.uint8)  # landscape: the face, then a plain band
        wide[:, :, :w] = frames
        wide[:, :, w:] = 60
        write_mp4(path, wide)
        rotate_mp4(path, 90)
    elif kind == "huge":
        width, height = HUGE_SIZE
        write_mp4(path, _upscale(frames[:: max(1, len(frames) // 2)][:2], width, height))
    else:
        raise ValueError(f"unknown bad-video kind {kind!r}; kinds: {', '.join(ALL_KINDS)}")
    return path
