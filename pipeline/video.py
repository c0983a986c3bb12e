"""Video decoding and SwinBERT-style frame sampling for stage one.

One decode per clip feeds all three extractors (DESIGN.md, "Extractors"):

    indices  = sample_indices(n, T)          # T indices evenly spaced over the clip (short clips repeat)
    source   = the T sampled frames at the file's own resolution (rotation applied)
    resized  = source resized so the short side is `size`     (the face detector looks at these)
    frames   = centre crop `crop` x `crop` of `resized`        (Video Swin's input)

Face crops are taken by `pipeline.faces` from `source` (full resolution, before the centre crop),
so a face near the left/right edge of a 16:9 frame survives and is not upsampled from a 224-px
frame. Their boxes are stored in the coordinates of `frames` (the centre crop); they may reach
beyond [0, crop] for exactly that reason.

Decoders: decord first (fast random access); where decord fails on a file, PyAV decodes it
sequentially (`DecodedClip.decoder` says which one was used). The file is probed with PyAV first,
which gives readable reasons (no video stream, not a video) and the rotation (display matrix),
which decord ignores; rotation by a multiple of 90 degrees is applied to the frames.

References: SwinBERT (Lin et al. 2022) samples `np.linspace(0, n-1, T)` frame indices, resizes the
short side and centre-crops; that is what `sample_indices` / `decode_clip` do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class ClipError(Exception):
    """A clip that cannot be used (missing, empty, truncated, not a video, no face ...).

    `reason` is the human-readable sentence that goes into errors.jsonl."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass
class DecodedClip:
    frames: np.ndarray
    """(T, crop, crop, 3) uint8: the centre crop of `resized` (Video Swin input)."""
    resized: np.ndarray
    """(T, H', W', 3) uint8: sampled frames with the short side resized to `size` (face detection)."""
    source: np.ndarray
    """(T, H, W, 3) uint8: sampled frames at the file's resolution, rotation applied (face crops)."""
    crop_offset: tuple[int, int]
    """(x0, y0) of the centre crop inside `resized`."""
    indices: np.ndarray
    """(T,) the sampled frame indices."""
    num_source_frames: int
    """Frames the decoder found in the file."""
    decoder: str
    """'decord' or 'pyav'."""
    rotation: int = 0
    """Clockwise rotation (degrees) applied from the file's display matrix."""
    notes: list[str] = field(default_factory=list)
    """Why a fallback was used (e.g. decord's error), for the run's log."""

    @property
    def scale(self) -> float:
        """source pixels per resized pixel."""
        return self.source.shape[1] / self.resized.shape[1]


def sample_indices(num_source: int, num_frames: int) -> np.ndarray:
    """`num_frames` frame indices evenly spaced over [0, num_source - 1], first and last included
    (SwinBERT-style); a clip shorter than `num_frames` repeats frames. num_source >= 1."""
    if num_source < 1:
        raise ValueError("a clip needs at least one frame")
    if num_frames == 1:
        return np.array([(num_source - 1) // 2], dtype=np.int64)
    return np.round(np.linspace(0, num_source - 1, num_frames)).astype(np.int64)


def even_subset(n: int, k: int) -> np.ndarray:
    """k positions evenly spaced among n (the F_au frames ANFL sees among the F sampled ones)."""
    return sample_indices(n, k)


# ---- probing --------------------------------------------------------------------------------------

def _probe(path: Path) -> tuple[int, int]:
    """Check the file with PyAV; return (frame count from the header or 0, rotation in degrees).
    Raises ClipError with a readable reason."""
    import av

    if not path.exists():
        raise ClipError(f"video file not found: {path}")
    if path.is_dir():
        raise ClipError(f"{path} is a directory, not a video file")
    if path.stat().st_size == 0:
        raise ClipError(f"video file is empty (0 bytes): {path}")
    try:
        container = av.open(str(path))
    except av.error.InvalidDataError as e:
        with open(path, "rb") as f:
            head = f.read(12)
        if head[4:8] in (b"ftyp", b"mdat", b"moov", b"free", b"wide"):
            raise ClipError(f"truncated or damaged video: the MP4/MOV index cannot be read ({e.strerror or e}): {path}") from None
        raise ClipError(f"not a video file (FFmpeg: {e.strerror or e}): {path}") from None
    except (av.error.FFmpegError, OSError) as e:
        raise ClipError(f"cannot open video ({e}): {path}") from None
    with container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "no streams"
            raise ClipError(f"no video stream in the file (found: {kinds}): {path}")
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        rotation = 0
        try:
            frame = next(container.decode(stream), None)
        except (av.error.FFmpegError, OSError) as e:
            raise ClipError(f"the video stream cannot be decoded ({e}): {path}") from None
        if frame is None:
            raise ClipError(f"the video stream holds no frames: {path}")
        rotation = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    return n, rotation


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display rotation (multiples of 90 degrees; others are rounded to the nearest)."""
    # FFmpeg's display-matrix rotation is counter-clockwise; np.rot90 with k>0 rotates counter-clockwise.
    k = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


# ---- decoders -------------------------------------------------------------------------------------

def _decode_decord(path: Path, num_frames: int) -> tuple[np.ndarray, np.ndarray, int]:
    import decord

    try:
        vr = decord.VideoReader(str(path), num_threads=1)
        n = len(vr)
        if n < 1:
            raise ClipError(f"decord found no frames in {path}")
        idx = sample_indices(n, num_frames)
        uniq, inverse = np.unique(idx, return_inverse=True)
        batch = vr.get_batch(uniq.tolist()).asnumpy()
    except decord.DECORDError as e:
        raise RuntimeError(f"decord: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return batch[inverse], idx, n


def _decode_pyav(path: Path, num_frames: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Sequential decode of the whole first video stream (robust where seeking is not)."""
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(frame)
    except (av.error.FFmpegError, OSError) as e:
        if not frames:
            raise ClipError(f"PyAV cannot decode the video ({e}): {path}") from None
        # Truncated tail: keep the frames decoded before the damage (recorded in the notes by the caller).
        truncated = str(e)
    else:
        truncated = ""
    if not frames:
        raise ClipError(f"the video stream holds no decodable frames: {path}")
    n = len(frames)
    idx = sample_indices(n, num_frames)
    out = np.stack([frames[i].to_ndarray(format="rgb24") for i in idx])
    if truncated:
        _decode_pyav.last_note = f"pyav stopped early ({truncated}); sampled from the {n} decodable frames"
    return out, idx, n


_decode_pyav.last_note = ""


def resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> short side `size` (bilinear, antialiased), uint8."""
    import torch
    import torch.nn.functional as F

    t, h, w, _ = frames.shape
    if min(h, w) == size:
        return frames
    if h <= w:
        nh, nw = size, max(1, int(round(w * size / h)))
    else:
        nh, nw = max(1, int(round(h * size / w))), size
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def centre_crop_offset(h: int, w: int, crop: int) -> tuple[int, int]:
    """(x0, y0) of a centred crop x crop window."""
    return (w - crop) // 2, (h - crop) // 2


def decode_clip(path: str | os.PathLike, num_frames: int, size: int, crop: int, decoder: str = "auto") -> DecodedClip:
    """Decode `num_frames` uniformly sampled frames of a clip (see the module docstring).

    decoder: 'auto' (decord, PyAV where decord fails), 'decord' or 'pyav' (one of them only).
    Raises ClipError with a readable reason for missing, empty, truncated or non-video files."""
    if crop > size:
        raise ValueError(f"crop ({crop}) must not exceed the resized short side ({size})")
    path = Path(path)
    header_frames, rotation = _probe(path)
    notes: list[str] = []
    used = decoder
    if decoder in ("auto", "decord"):
        try:
            source, idx, n = _decode_decord(path, num_frames)
            used = "decord"
        except (RuntimeError, ClipError) as e:
            if decoder == "decord":
                raise ClipError(f"decord cannot decode the video ({e}): {path}") from None
            notes.append(f"decord failed ({e}); decoded with PyAV")
            used = "pyav"
    if used == "pyav":
        _decode_pyav.last_note = ""
        source, idx, n = _decode_pyav(path, num_frames)
        if _decode_pyav.last_note:
            notes.append(_decode_pyav.last_note)
    elif used != "decord":
        raise ValueError(f"unknown decoder {decoder!r} (auto, decord or pyav)")
    if header_frames and n < 0.9 * header_frames - 1:
        raise ClipError(f"truncated video: the header announces {header_frames} frames, only {n} decode: {path}")
    source = _rotate(source, rotation)
    resized = resize_short_side(source, size)
    h, w = resized.shape[1:3]
    x0, y0 = centre_crop_offset(h, w, crop)
    frames = np.ascontiguousarray(resized[:, y0:y0 + crop, x0:x0 + crop])
    return DecodedClip(frames=frames, resized=resized, source=source, crop_offset=(x0, y0), indices=idx,
                       num_source_frames=n, decoder=used, rotation=rotation, notes=notes)
