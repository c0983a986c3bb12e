"""Find the main face per sampled frame and cut square face crops for ResNet50-ER and ANFL.

Needs no download and no learned model, so stage one runs on a build machine without network:

- 'skin' (default): skin-colour segmentation in YCrCb (the classic Chai & Ngan 1999 ranges
  Cr in [133, 173], Cb in [77, 127]), a morphological opening, the largest connected component
  whose size and aspect look like a head, trimmed to a head-shaped box when the component runs
  down the neck. Boxes are smoothed over time by a running median (window 5) and a frame without
  a detection takes the previous frame's box (the next one's at the start of a clip).
- 'center': the whole frame (a centred square of the short side): datasets of pre-cropped faces.
- 'boxes': dataset-provided boxes, read from a sidecar `<video>.faces.json` next to the video:
  `{"boxes": [[x0, y0, x1, y1] or null, ...]}` with one entry per *source* frame in source pixels.

All detection runs on the resized frames (short side = extract.size); crops are cut from the
full-resolution source frames (see pipeline.video), padded with black where the square leaves the
frame. A clip with no face in any sampled frame raises ClipError (recorded, the run goes on).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.video import ClipError, DecodedClip

MODES = ("skin", "center", "boxes")
FACE_MARGIN = 1.3
"""Side of the square crop relative to the longer side of the detected face box."""
SMOOTH_WINDOW = 5


@dataclass
class FaceTrack:
    boxes: np.ndarray
    """(T, 4) float32 x0, y0, x1, y1 of the square crop used per frame, in `resized` pixels."""
    detected: np.ndarray
    """(T,) bool: the detector found a face in this frame (else the box is borrowed from a neighbour)."""


# ---- the skin detector -------------------------------------------------------------------------

def skin_mask(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) bool skin mask (YCrCb thresholds)."""
    rgb = frame.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cr = (r - y) * 0.713 + 128.0
    cb = (b - y) * 0.564 + 128.0
    return (cr >= 133) & (cr <= 173) & (cb >= 77) & (cb <= 127) & (y > 40)


def detect_face(frame: np.ndarray) -> np.ndarray | None:
    """The main face in one frame as a tight (x0, y0, x1, y1) box in its pixels, or None."""
    from scipy import ndimage

    h, w = frame.shape[:2]
    mask = skin_mask(frame)
    k = max(1, min(h, w) // 64)
    mask = ndimage.binary_opening(mask, structure=np.ones((2 * k + 1, 2 * k + 1), bool))
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    slices = ndimage.find_objects(labels)
    min_area = 0.004 * h * w
    best, best_score = None, 0.0
    for lab in np.argsort(-sizes)[:6]:
        area = sizes[lab]
        if area < min_area:
            break
        box = _head_box(labels[slices[lab]] == lab + 1)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0, y1 - y0
        if bw > 0.95 * min(h, w) or bw < 4:
            continue
        sub = labels[slices[lab]][y0:y1, x0:x1] == lab + 1
        fill = sub.mean()
        if fill < 0.35:
            continue
        # Prefer big, compact components in the upper part of the frame (faces over hands, arms).
        cy = (slices[lab][0].start + y0 + bh / 2) / h
        score = sub.sum() * fill * (1.2 - 0.4 * cy)
        if score > best_score:
            best_score = score
            oy, ox = slices[lab][0].start, slices[lab][1].start
            best = np.array([ox + x0, oy + y0, ox + x1, oy + y1], dtype=np.float32)
    return best


def _head_box(comp: np.ndarray) -> tuple[int, int, int, int] | None:
    """The head inside one skin component (bool mask of its bounding box): a band from the top of the
    component whose width is the typical row width there and whose height is 1.3x that width, so a
    face joined to neck, shoulders or arms is cut back to the face."""
    rows = comp.sum(axis=1)
    if rows.max() < 4:
        return None
    top = int(np.flatnonzero(rows >= 2)[0])
    width = float(comp.shape[1])
    for _ in range(3):  # fixed point: band height from width, width from the band's rows
        band = rows[top: top + max(4, int(round(1.3 * width)))]
        width = float(np.percentile(band, 80))
        if width < 4:
            return None
    y1 = min(comp.shape[0], top + int(round(1.3 * width)))
    cols = np.flatnonzero(comp[top:y1].any(axis=0))
    xs = np.nonzero(comp[top:y1])[1]
    cx = float(np.median(xs))
    x0 = int(round(max(cols[0], cx - width / 2)))
    x1 = int(round(min(cols[-1] + 1, cx + width / 2)))
    if x1 - x0 < 4 or y1 - top < 4:
        return None
    return x0, top, x1, y1


def _square(box: np.ndarray, frame_hw: tuple[int, int], margin: float = FACE_MARGIN) -> np.ndarray:
    """A square of side margin x the box's longer side around its centre, shifted (not shrunk) to
    stay inside the frame where it fits."""
    h, w = frame_hw
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * margin
    x0, y0 = cx - side / 2, cy - side / 2
    if side <= w:
        x0 = min(max(x0, 0.0), w - side)
    if side <= h:
        y0 = min(max(y0, 0.0), h - side)
    return np.array([x0, y0, x0 + side, y0 + side], dtype=np.float32)


def _smooth_and_fill(raw: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """Running median over detected boxes; undetected frames borrow the previous (else next) box."""
    t = len(raw)
    detected = np.array([b is not None for b in raw])
    boxes = np.full((t, 4), np.nan, dtype=np.float32)
    for i, b in enumerate(raw):
        if b is not None:
            boxes[i] = b
    smoothed = boxes.copy()
    half = SMOOTH_WINDOW // 2
    for i in np.flatnonzero(detected):
        win = boxes[max(0, i - half): i + half + 1]
        smoothed[i] = np.nanmedian(win[~np.isnan(win[:, 0])], axis=0)
    last = None
    for i in range(t):
        if detected[i]:
            last = smoothed[i]
        elif last is not None:
            smoothed[i] = last
    first = np.flatnonzero(detected)[0]
    smoothed[:first] = smoothed[first]
    return smoothed, detected


def find_faces(clip: DecodedClip, mode: str = "skin", video_path: str | Path | None = None) -> FaceTrack:
    """One square face box per sampled frame (in `clip.resized` pixels). Raises ClipError when no
    frame has a face."""
    frames = clip.resized
    t, h, w = frames.shape[:3]
    if mode == "center":
        s = min(h, w)
        box = np.array([(w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2], dtype=np.float32)
        return FaceTrack(np.tile(box, (t, 1)), np.ones(t, bool))
    if mode == "skin":
        raw = [detect_face(f) for f in frames]
        raw = [None if b is None else _square(b, (h, w)) for b in raw]
    elif mode == "boxes":
        raw = _sidecar_boxes(clip, video_path)
    else:
        raise ValueError(f"unknown face_detector {mode!r} (one of {', '.join(MODES)})")
    if not any(b is not None for b in raw):
        raise ClipError(f"no face found in any of the {t} sampled frames")
    boxes, detected = _smooth_and_fill(raw)
    return FaceTrack(boxes, detected)


def _sidecar_boxes(clip: DecodedClip, video_path: str | Path | None) -> list[np.ndarray | None]:
    if video_path is None:
        raise ValueError("face_detector 'boxes' needs the video path to find <video>.faces.json")
    side = Path(video_path).with_suffix(".faces.json")
    if not side.is_file():
        raise ClipError(f"face_detector is 'boxes' but the box file {side} does not exist")
    try:
        entries = json.loads(side.read_text())["boxes"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ClipError(f"{side}: not a box file ({{\"boxes\": [[x0, y0, x1, y1] or null, ...]}}): {e}") from None
    if len(entries) < clip.num_source_frames:
        raise ClipError(f"{side}: {len(entries)} boxes for {clip.num_source_frames} frames")
    out = []
    for i in clip.indices:
        b = entries[int(i)]
        out.append(None if b is None else _square(np.asarray(b, dtype=np.float32) / clip.scale, clip.resized.shape[1:3]))
    return out


# ---- crops -------------------------------------------------------------------------------------

def crop_faces(source: np.ndarray, boxes: np.ndarray, size: int, scale: float = 1.0) -> np.ndarray:
    """Cut square crops (T, size, size, 3) uint8 from `source` frames; `boxes` (T, 4) are in pixels of
    `source / scale` (i.e. multiplied by `scale` to reach source pixels). Outside the frame is black."""
    import torch
    import torch.nn.functional as F

    t, h, w = source.shape[:3]
    out = np.zeros((t, size, size, 3), dtype=np.uint8)
    for i in range(t):
        x0, y0, x1, y1 = (boxes[i] * scale).tolist()
        side = max(1, int(round(x1 - x0)))
        x0, y0 = int(round(x0)), int(round(y0))
        canvas = np.zeros((side, side, 3), dtype=np.uint8)
        sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
        if sx1 > sx0 and sy1 > sy0:
            canvas[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = source[i, sy0:sy1, sx0:sx1]
        x = torch.from_numpy(canvas).permute(2, 0, 1)[None].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=side > size, align_corners=False)
        out[i] = y[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return out


def to_crop_coords(boxes: np.ndarray, crop_offset: tuple[int, int]) -> np.ndarray:
    """Boxes in `resized` pixels -> pixels of the centre crop (what face/boxes stores)."""
    x0, y0 = crop_offset
    return (boxes - np.array([x0, y0, x0, y0], dtype=np.float32)).astype(np.float32)
