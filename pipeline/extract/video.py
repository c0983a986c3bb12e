"""Video decoding and SwinBERT-style frame sampling for stage one.

One decode per clip feeds all three extractors (DESIGN.md, "Extractors"):

    indices  = sample_indices(n, T)          # T indices evenly spaced over the clip (short clips repeat)
    source   = the T sampled frames at the file's own resolution (rotation applied), short side
               capped at `source_cap(size, face_size)` (decoded at that size, never held larger)
    resized  = source resized so the short side is `size`     (the face detector looks at these)
    frames   = centre crop `crop` x `crop` of `resized`        (Video Swin's input)

Face crops are taken by `pipeline.extract.faces` from `source` (before the centre crop, at the file's
resolution up to the cap), so a face near the left/right edge of a 16:9 frame survives and is not
upsampled from a 224-px frame. Their boxes are stored in the coordinates of `frames` (the centre
crop); they may reach beyond [0, crop] for exactly that reason.

The cap bounds memory: 32 frames of a 4000x3000 phone video are 1.1 GB as uint8 (4.6 GB as float);
capped at a 720-px short side they are 66 MB. Ordinary clips (up to 720p, e.g. all of MAFW) are
below the cap and decode exactly as before; only larger ones are scaled by the decoder itself.

Decoders: decord first (fast random access); where decord fails on a file, PyAV decodes it
sequentially (`DecodedClip.decoder` says which one was used). The file is probed with PyAV first,
which gives readable reasons (no video stream, not a video, a still image) and the rotation
(display matrix). decord 0.6 applies the display rotation itself (and its width/height are those
of the rotated picture); PyAV does not, so rotation by a multiple of 90 degrees is applied to
PyAV's frames only.

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
    """(T, H, W, 3) uint8: sampled frames at the file's resolution (short side capped, see
    `source_cap`), rotation applied (face crops)."""
    crop_offset: tuple[int, int]
    """(x0, y0) of the centre crop inside `resized`."""
    indices: np.ndarray
    """(T,) the sampled frame indices."""
    num_source_frames: int
    """Frames the decoder found in the file."""
    decoder: str
    """'decord' or 'pyav'."""
    rotation: int = 0
    """Rotation (degrees, counter-clockwise as FFmpeg reports it: 270 = a quarter turn clockwise) of the
    file's display matrix, applied to the frames (by decord itself, or by `_rotate` for PyAV)."""
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

MIN_SOURCE_CAP = 720
"""The source short side is never capped below this (ordinary clips up to 720p keep their resolution)."""


def source_cap(size: int, face_size: int | None = None) -> int:
    """Largest short side `source` is decoded at: twice the larger of the resized short side and the
    face crop size (a face filling half the frame is still cropped without upsampling), and never
    below MIN_SOURCE_CAP."""
    return max(MIN_SOURCE_CAP, 2 * max(size, face_size or 0))


def capped_hw(h: int, w: int, cap: int) -> tuple[int, int] | None:
    """(h, w) with the short side scaled down to `cap` (aspect kept), None when min(h, w) <= cap."""
    short = min(h, w)
    if short <= cap:
        return None
    if h <= w:
        return cap, max(1, int(round(w * cap / h)))
    return max(1, int(round(h * cap / w))), cap


IMAGE_DEMUXERS = ("image2", "image2pipe")
"""FFmpeg demuxers of still images (besides the '*_pipe' ones: png_pipe, jpeg_pipe, webp_pipe ...)."""


@dataclass
class _Probe:
    header_frames: int
    """Frame count from the header, 0 when unknown."""
    rotation: int
    """Display rotation in degrees (counter-clockwise, [0, 360))."""
    height: int
    """Coded (not rotated) frame height."""
    width: int
    """Coded (not rotated) frame width."""


def _probe(path: Path) -> _Probe:
    """Check the file with PyAV; return its header frame count, rotation and coded frame size.
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
        fmt = container.format.name
        if fmt.endswith("_pipe") or fmt in IMAGE_DEMUXERS:
            raise ClipError(f"not a video file: FFmpeg reads it as a still image ({container.format.long_name}): {path}")
        if not container.streams:
            raise ClipError(f"truncated or damaged video: no stream could be read (the file ends inside its index?): {path}")
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
        return _Probe(n, rotation, int(frame.height), int(frame.width))


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display rotation (multiples of 90 degrees; others are rounded to the nearest)."""
    # FFmpeg's display-matrix rotation is counter-clockwise; np.rot90 with k>0 rotates counter-clockwise.
    k = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


# ---- decoders -------------------------------------------------------------------------------------

def _decode_decord(path: Path, num_frames: int, out_hw: tuple[int, int] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """decord's frames come out rotated by the display matrix already; `out_hw` (the size to decode
    at, None = the file's) is that of the rotated picture."""
    import decord

    h, w = out_hw if out_hw is not None else (-1, -1)
    try:
        vr = decord.VideoReader(str(path), num_threads=1, width=w, height=h)
        n = len(vr)
        if n < 1:
            raise ClipError(f"decord found no frames in {path}")
        idx = sample_indices(n, num_frames)
        uniq, inverse = np.unique(idx, return_inverse=True)
        batch = vr.get_batch(uniq.tolist()).asnumpy()
    except decord.DECORDError as e:
        raise RuntimeError(f"decord: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return batch[inverse], idx, n


def _decode_pyav(path: Path, num_frames: int, out_hw: tuple[int, int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """Sequential decode of the whole first video stream (robust where seeking is not). Frames are NOT
    rotated; `out_hw` (None = the file's size) is the coded (unrotated) size to keep them at: each frame
    is scaled as it is decoded, so a large video never holds more than one full-size frame."""
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if out_hw is not None:
                    frame = frame.reformat(width=out_hw[1], height=out_hw[0])
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
    """(T, H, W, 3) uint8 -> short side `size` (bilinear, antialiased), uint8. Frame by frame, so only
    one frame at a time is ever converted to float."""
    import torch
    import torch.nn.functional as F

    t, h, w, _ = frames.shape
    if min(h, w) == size:
        return frames
    if h <= w:
        nh, nw = size, max(1, int(round(w * size / h)))
    else:
        nh, nw = max(1, int(round(h * size / w))), size
    out = np.empty((t, nh, nw, 3), dtype=np.uint8)
    for i in range(t):
        x = torch.from_numpy(frames[i]).permute(2, 0, 1)[None].float()
        y = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        out[i] = y.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    return out


def centre_crop_offset(h: int, w: int, crop: int) -> tuple[int, int]:
    """(x0, y0) of a centred crop x crop window."""
    return (w - crop) // 2, (h - crop) // 2


def decode_clip(path: str | os.PathLike, num_frames: int, size: int, crop: int, decoder: str = "auto",
                face_size: int | None = None) -> DecodedClip:
    """Decode `num_frames` uniformly sampled frames of a clip (see the module docstring).

    decoder: 'auto' (decord, PyAV where decord fails), 'decord' or 'pyav' (one of them only).
    face_size: the face crop size taken from `source` (extract.face_size); with `size` it sets the
    cap on the source resolution (`source_cap`).
    Raises ClipError with a readable reason for missing, empty, truncated or non-video files."""
    if crop > size:
        raise ValueError(f"crop ({crop}) must not exceed the resized short side ({size})")
    if decoder not in ("auto", "decord", "pyav"):
        raise ValueError(f"unknown decoder {decoder!r} (auto, decord or pyav)")
    path = Path(path)
    probe = _probe(path)
    header_frames, rotation = probe.header_frames, probe.rotation
    coded_hw = capped_hw(probe.height, probe.width, source_cap(size, face_size))
    quarter_turn = int(round(rotation / 90.0)) % 2 == 1
    shown_hw = coded_hw[::-1] if coded_hw is not None and quarter_turn else coded_hw
    notes: list[str] = []
    if coded_hw is not None:
        notes.append(f"decoded at {coded_hw[1]}x{coded_hw[0]} instead of {probe.width}x{probe.height} "
                     f"(source short side capped at {source_cap(size, face_size)})")
    used = decoder
    if decoder in ("auto", "decord"):
        try:
            source, idx, n = _decode_decord(path, num_frames, shown_hw)
            used = "decord"
        except (RuntimeError, ClipError) as e:
            if decoder == "decord":
                raise ClipError(f"decord cannot decode the video ({e}): {path}") from None
            notes.append(f"decord failed ({e}); decoded with PyAV")
            used = "pyav"
    if used == "pyav":
        _decode_pyav.last_note = ""
        source, idx, n = _decode_pyav(path, num_frames, coded_hw)
        if _decode_pyav.last_note:
            notes.append(_decode_pyav.last_note)
        source = _rotate(source, rotation)  # decord rotates by itself; PyAV does not
    if header_frames and n < 0.9 * header_frames - 1:
        raise ClipError(f"truncated video: the header announces {header_frames} frames, only {n} decode: {path}")
    resized = resize_short_side(source, size)
    h, w = resized.shape[1:3]
    x0, y0 = centre_crop_offset(h, w, crop)
    frames = np.ascontiguousarray(resized[:, y0:y0 + crop, x0:x0 + crop])
    return DecodedClip(frames=frames, resized=resized, source=source, crop_offset=(x0, y0), indices=idx,
                       num_source_frames=n, decoder=used, rotation=rotation, notes=notes)
