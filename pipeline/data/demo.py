"""The embedded demo dataset: synthetic faces whose expressions move like action units.

`generate(root)` writes `root/videos/demo_NNNN.mp4` (H.264, yuv420p, via PyAV's libx264) and, last
and atomically, `root/annotations.jsonl` with one clip per line:

    {"id": "demo_0007", "video": "videos/demo_0007.mp4", "captions": [...], "emotion": "happiness",
     "split": "train", "aus": ["AU6", "AU12"], "action": "smiles", ...}

Each clip is a cartoon face drawn with numpy (anti-aliased signed-distance shapes): a skin-coloured
head on a plain, lightly textured background, eyes, brows, nose, mouth, short hair for "a man",
long hair for "a woman". Over the clip the expression moves from neutral to a peak the way facial
action units (FACS) do: brows raise (AU1/AU2) or knit (AU4), eyes widen (AU5) or narrow (AU7),
cheeks raise (AU6), the nose wrinkles (AU9), the upper lip raises (AU10), lip corners pull up
(AU12) or down (AU15), lips stretch (AU20), tighten (AU23) or press (AU24), lips part (AU25) and
the jaw drops (AU26); some clips also turn the head. Each emotion uses its prototypical AU set
(Ekman & Friesen's EMFACS prototypes, simplified) with per-clip variation: an optional extra AU,
intensity, onset time, head turn, gender, skin tone, hair, background and lighting.

Captions are MAFW-style and derived from what the clip shows: "a woman smiles at the camera. the
raised lip corners and the raised cheeks." Every cue phrase names exactly one AU (`CUE_AU`), and
only AUs drawn in the clip are named; neutral clips use AU-free cues ("the relaxed face").

The shapes are deliberately large and high-contrast: the demo preset runs its extractors with
random weights on 64x64 frames, so expressions must differ in big, spatially distinct ways.

Same seed, same clips: every clip draws from its own `SeedSequence([seed, index])`, x264 runs
single-threaded, and the annotation text is a pure function of the seed.

Run `python -m pipeline.data.demo --out /tmp/demo --clips 240` to time generation.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.records import atomic_write_text

GENERATOR_VERSION = "2"
"""Bump when the drawing or captions change: an existing dataset with another version is regenerated."""

EMOTIONS = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
"""The demo preset's emotion classes (MAFW's first seven, same order)."""

TEST_FRACTION = 0.2

# Prototypical AU sets; a list of alternatives per emotion (one is picked per clip).
EMOTION_AUS: dict[str, list[list[int]]] = {
    "happiness": [[6, 12], [6, 12, 25]],
    "sadness": [[1, 4, 15]],
    "anger": [[4, 7, 24], [4, 5, 23]],
    "surprise": [[1, 2, 5, 26]],
    "fear": [[1, 2, 4, 5, 20, 26]],
    "disgust": [[9, 10, 15]],
    "neutral": [[]],
}
# Optional extra AU per emotion (never one that contradicts the set: 5/7, 12/15, 24/25/26).
EXTRA_AUS: dict[str, list[int]] = {
    "happiness": [5],
    "sadness": [7],
    "anger": [9],
    "surprise": [],
    "fear": [],
    "disgust": [4, 7],
    "neutral": [],
}
EXTRA_AU_PROB = 0.3
HEAD_TURN_PROB = 0.3

# Cue phrase -> the single AU it names (None: an AU-free cue for a still, neutral face).
CUE_AU: dict[str, str | None] = {
    "raised inner brows": "AU1",
    "raised brows": "AU2",
    "raised eyebrows": "AU2",
    "knitted brows": "AU4",
    "frown": "AU4",
    "wide eyes": "AU5",
    "wide open eyes": "AU5",
    "raised cheeks": "AU6",
    "narrowed eyes": "AU7",
    "squinting eyes": "AU7",
    "wrinkled nose": "AU9",
    "raised upper lip": "AU10",
    "raised lip corners": "AU12",
    "upturned mouth corners": "AU12",
    "lowered lip corners": "AU15",
    "drooping mouth corners": "AU15",
    "stretched lips": "AU20",
    "tightened lips": "AU23",
    "pressed lips": "AU24",
    "parted lips": "AU25",
    "open mouth": "AU26",
    "dropped jaw": "AU26",
    "relaxed face": None,
    "calm eyes": None,
    "closed mouth": None,
    "steady gaze": None,
}
AU_CUES: dict[str, list[str]] = {}
for _phrase, _au in CUE_AU.items():
    if _au is not None:
        AU_CUES.setdefault(_au, []).append(_phrase)
NEUTRAL_CUES = [p for p, a in CUE_AU.items() if a is None]

# Cue phrases per caption, by emotion (capped by the AUs drawn): captions of clearly different lengths
# (one to three cues, 6 to about 20 words), tied to what the clip shows, so a model that cannot stop loses.
CUE_COUNT: dict[str, int] = {"neutral": 1, "happiness": 1, "sadness": 2, "disgust": 2, "anger": 2, "surprise": 3,
                             "fear": 3}

# Action phrases per emotion; {pos} is the possessive pronoun (his/her).
ACTIONS: dict[str, list[str]] = {
    "happiness": ["smiles", "smiles at the camera", "looks happy"],
    "sadness": ["looks sad", "frowns sadly", "looks unhappy"],
    "anger": ["frowns", "glares at the camera", "looks angry"],
    "surprise": ["looks surprised", "opens {pos} mouth in surprise", "looks astonished"],
    "fear": ["looks frightened", "looks scared", "gasps in fear"],
    "disgust": ["looks disgusted", "wrinkles {pos} nose", "grimaces"],
    "neutral": ["looks at the camera", "stays calm", "sits still"],
}
ACTIONS_LAUGH = ["laughs", "smiles with {pos} mouth open"]  # happiness with parted lips


# ---------------------------------------------------------------------------------------------
# Per-clip specification (pure data: sampled in the parent, drawn in a worker)


@dataclass
class ClipSpec:
    """Everything needed to draw one clip; a pure function of (seed, index)."""

    index: int
    clip_id: str
    emotion: str
    gender: str  # "man" | "woman"
    aus: dict[str, float]  # AU name -> peak intensity in (0, 1]
    onset: int  # first frame of the movement
    peak: int  # frame where the expression reaches its peak (held after)
    turn: float  # head yaw at the end of the turn, -1 (left) .. 1 (right); 0 = no turn
    turn_onset: int
    turn_peak: int
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    background: tuple[float, float, float]
    face_dx: float
    face_dy: float
    face_scale: float
    gain: float
    light: float  # left-right lighting gradient
    captions: list[str] = field(default_factory=list)
    action: str = ""
    split: str = "train"


SKIN_TONES = [  # RGB, light to dark; all inside the usual YCrCb skin box (Cr 135-170, Cb 85-125)
    (236, 192, 160),
    (224, 172, 138),
    (206, 150, 112),
    (180, 124, 90),
    (150, 98, 68),
    (118, 76, 52),
]
HAIR_COLOURS = [(22, 20, 24), (40, 32, 30), (60, 45, 38), (85, 76, 70), (110, 102, 96)]  # low chroma: not skin
BACKGROUNDS = [(70, 90, 120), (90, 110, 95), (120, 120, 130), (60, 70, 80), (110, 100, 130), (150, 160, 170)]


def _ramp_frames(rng: np.random.Generator, frames: int) -> tuple[int, int]:
    onset = int(round(rng.uniform(0.05, 0.3) * (frames - 1)))
    length = max(2, int(round(rng.uniform(0.25, 0.4) * (frames - 1))))
    peak = min(frames - 1, onset + length)
    return onset, peak


def _sample_spec(seed: int, index: int, emotion: str, frames: int) -> ClipSpec:
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    alternatives = EMOTION_AUS[emotion]
    au_set = list(alternatives[int(rng.integers(len(alternatives)))])
    extras = EXTRA_AUS[emotion]
    if extras and rng.random() < EXTRA_AU_PROB:
        au_set.append(int(extras[int(rng.integers(len(extras)))]))
    base = rng.uniform(0.8, 1.0)
    aus = {f"AU{a}": float(np.clip(base + rng.uniform(-0.1, 0.1), 0.65, 1.0)) for a in sorted(set(au_set))}
    onset, peak = _ramp_frames(rng, frames)
    turn = 0.0
    turn_onset, turn_peak = 0, 0
    if rng.random() < HEAD_TURN_PROB:
        turn = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.7, 1.0))
        turn_onset, turn_peak = _ramp_frames(rng, frames)
    hair = tuple(float(c) for c in HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))])
    # a background that stands apart from the hair, so the hair line (and gender) stays visible
    backgrounds = [b for b in BACKGROUNDS if np.abs(np.subtract(b, hair)).mean() >= 40]
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    skin = tuple(float(np.clip(c * rng.uniform(0.96, 1.04), 0, 255)) for c in skin)
    return ClipSpec(
        index=index,
        clip_id=f"demo_{index:04d}",
        emotion=emotion,
        gender="woman" if rng.random() < 0.5 else "man",
        aus=aus,
        onset=onset,
        peak=peak,
        turn=turn,
        turn_onset=turn_onset,
        turn_peak=turn_peak,
        skin=skin,
        hair=hair,
        background=tuple(float(c) for c in backgrounds[int(rng.integers(len(backgrounds)))]),
        face_dx=float(rng.uniform(-0.025, 0.025)),
        face_dy=float(rng.uniform(-0.02, 0.02)),
        face_scale=float(rng.uniform(0.95, 1.04)),
        gain=float(rng.uniform(0.88, 1.08)),
        light=float(rng.uniform(-0.08, 0.08)),
    )


def _captions(spec: ClipSpec, seed: int) -> tuple[str, list[str]]:
    """The clip's action phrase and 2-3 different captions, each true to what is drawn, naming
    `CUE_COUNT[emotion]` of the drawn AUs (one more for a laugh)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, spec.index, 1]))
    pos = "his" if spec.gender == "man" else "her"
    subject = f"a {spec.gender}"
    pool = ACTIONS["happiness"] + ACTIONS_LAUGH if spec.emotion == "happiness" and "AU25" in spec.aus else ACTIONS[spec.emotion]
    n_caps = 2 + int(rng.integers(2))
    captions: list[str] = []
    actions: list[str] = []
    for k in range(n_caps * 4):
        if len(captions) == n_caps:
            break
        act = pool[int(rng.integers(len(pool)))].format(pos=pos)
        if spec.turn != 0.0:
            act = f"turns {pos} head and {act}"
        laughing = spec.emotion == "happiness" and "AU25" in spec.aus
        if spec.aus:
            names = list(spec.aus)
            n_cues = min(len(names), CUE_COUNT[spec.emotion] + int(laughing))
            chosen = [names[i] for i in rng.permutation(len(names))[:n_cues]]
            cues = [AU_CUES[a][int(rng.integers(len(AU_CUES[a])))] for a in chosen]
        else:
            cues = [NEUTRAL_CUES[i] for i in rng.permutation(len(NEUTRAL_CUES))[:CUE_COUNT["neutral"]]]
        cue_text = " and ".join(([", ".join(f"the {c}" for c in cues[:-1])] if len(cues) > 1 else [])
                                + [f"the {cues[-1]}"])
        cap = f"{subject} {act}. {cue_text}."
        if cap not in captions:
            captions.append(cap)
            actions.append(act)
    return actions[0], captions


def build_specs(n_clips: int, seed: int, frames: int) -> list[ClipSpec]:
    """Balanced emotions in a seeded order, a stratified ~80/20 train/test split, and captions."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2**31 - 1]))
    emotions = [EMOTIONS[i % len(EMOTIONS)] for i in range(n_clips)]
    emotions = [emotions[i] for i in rng.permutation(n_clips)]
    specs = [_sample_spec(seed, i, e, frames) for i, e in enumerate(emotions)]
    for emo in EMOTIONS:
        members = [s for s in specs if s.emotion == emo]
        n_test = int(round(TEST_FRACTION * len(members)))
        for j in rng.permutation(len(members))[:n_test]:
            members[int(j)].split = "test"
    for s in specs:
        s.action, s.captions = _captions(s, seed)
    return specs


# ---------------------------------------------------------------------------------------------
# Drawing: anti-aliased signed-distance shapes on a float image (coordinates in pixels)


def _cover(d: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) -> coverage in [0, 1] with a one-pixel soft edge."""
    return np.clip(0.5 - d, 0.0, 1.0)


def _ellipse(X, Y, cx, cy, a, b):
    return (np.sqrt(((X - cx) / a) ** 2 + ((Y - cy) / b) ** 2) - 1.0) * min(a, b)


def _segment(X, Y, x0, y0, x1, y1, r):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((X - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
    return np.hypot(X - (x0 + t * dx), Y - (y0 + t * dy)) - r


def _paint(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Blend `colour` over `img` in place with coverage `alpha`, touching only the covered box."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(alpha.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    win = img[r0:r1, c0:c1]
    win += alpha[r0:r1, c0:c1, None] * (np.asarray(colour, dtype=np.float32) - win)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def _envelope(t: int, onset: int, peak: int) -> float:
    """Smooth 0 -> 1 ramp between onset and peak, held after."""
    if t <= onset:
        return 0.0
    if t >= peak:
        return 1.0
    x = (t - onset) / max(1, peak - onset)
    return float(x * x * (3 - 2 * x))


def au_levels(spec: ClipSpec, t: int) -> dict[str, float]:
    """Intensity of every drawn AU at frame t (0 for AUs not in the clip)."""
    e = _envelope(t, spec.onset, spec.peak)
    return {a: v * e for a, v in spec.aus.items()}


@dataclass
class _Canvas:
    """One frame being drawn: the image, its pixel grids and the face geometry every feature is placed by."""

    img: np.ndarray
    X: np.ndarray
    Y: np.ndarray
    size: int
    sc: float
    """Face scale in pixels."""
    cx: float
    cy: float
    fx: float
    """Centre of the features (moves further than the outline with the turn: a cheap yaw)."""
    squash: float
    skin: np.ndarray
    hair: np.ndarray

    def ex(self, dx: float) -> float:
        """Feature x at horizontal offset dx (face units) from the face centre."""
        return self.fx + dx * self.sc * self.squash

    def window(self, x0: float, y0: float, x1: float, y1: float):
        """Slices and pixel grids of the box (clipped to the frame): small shapes touch only it."""
        r0, r1 = max(0, int(y0) - 1), min(self.size, int(y1) + 2)
        c0, c1 = max(0, int(x0) - 1), min(self.size, int(x1) + 2)
        if r0 >= r1 or c0 >= c1:
            return None, None, None
        return self.img[r0:r1, c0:c1], self.X[r0:r1, c0:c1], self.Y[r0:r1, c0:c1]

    def ellipse(self, ecx, ecy, a, b, colour, strength=1.0):
        win, Xs, Ys = self.window(ecx - a, ecy - b, ecx + a, ecy + b)
        if win is not None:
            _paint(win, _cover(_ellipse(Xs, Ys, ecx, ecy, a, b)) * strength, colour)

    def stroke(self, x0, y0, x1, y1, r, colour, strength=1.0):
        win, Xs, Ys = self.window(min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)
        if win is not None:
            _paint(win, _cover(_segment(Xs, Ys, x0, y0, x1, y1, r)) * strength, colour)


def render_frame(spec: ClipSpec, t: int, size: int, rng: np.random.Generator, texture: np.ndarray) -> np.ndarray:
    """One RGB uint8 frame (size x size) of the clip at frame t: background, head, then each feature as its
    AUs move it, then lighting and sensor noise."""
    S = float(size)
    lv = au_levels(spec, t)
    g = lambda name: lv.get(name, 0.0)  # noqa: E731
    yaw = spec.turn * _envelope(t, spec.turn_onset, spec.turn_peak)
    X, Y = _grid(size)  # pixel-centre coordinates
    sc = spec.face_scale * S
    cx = S * (0.5 + spec.face_dx) + 0.07 * yaw * S  # the head moves with the turn
    c = _Canvas(img=(texture * np.asarray(spec.background, np.float32)).copy(), X=X, Y=Y, size=size, sc=sc, cx=cx,
                cy=S * (0.53 + spec.face_dy), fx=cx + 0.07 * yaw * sc, squash=1.0 - 0.22 * abs(yaw),
                skin=np.asarray(spec.skin, np.float32), hair=np.asarray(spec.hair, np.float32))
    jaw = 0.045 * g("AU26") * sc
    _draw_head(c, spec, yaw, jaw)
    eye_y = _draw_eyes(c, g, yaw)
    _draw_brows(c, g, eye_y)
    _draw_nose(c, g, eye_y)
    _draw_mouth(c, g, jaw)
    img = c.img
    img *= spec.gain * (1.0 + 0.015 * np.sin(0.9 * t + spec.index))
    img += 2.5 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _draw_head(c: _Canvas, spec: ClipSpec, yaw: float, jaw: float) -> None:
    """Long hair behind (woman), neck, a shaded head whose lower half lengthens when the jaw drops, hair on top."""
    X, Y, sc, cx, cy, S = c.X, c.Y, c.sc, c.cx, c.cy, float(c.size)
    head_a, head_b = 0.35 * sc * (1.0 - 0.06 * abs(yaw)), 0.43 * sc
    if spec.gender == "woman":
        d = _ellipse(X, Y, cx, cy + 0.12 * sc, head_a * 1.28, head_b * 1.25)
        d = np.maximum(d, cy - 0.2 * sc - Y)  # only the part around and below the head top
        _paint(c.img, _cover(d), c.hair)
    _paint(c.img, _cover(np.maximum(np.abs(X - cx) - 0.13 * sc, cy + 0.25 * sc - Y)), c.skin * 0.8)
    b = np.where(Y > cy, head_b + jaw, head_b)
    r = np.sqrt(((X - cx) / head_a) ** 2 + ((Y - cy) / b) ** 2)
    shade = (1.0 - 0.18 * np.clip(r, 0, 1) ** 4)[..., None] * (1.0 + spec.light * (X - cx)[..., None] / S * 2)
    a_head = _cover((r - 1.0) * head_a)[..., None]
    c.img = c.img * (1 - a_head) + a_head * c.skin * shade
    # hair on top: short cap (man) or a fuller fringe (woman)
    top = 0.34 if spec.gender == "man" else 0.33
    d = np.maximum(_ellipse(X, Y, cx, cy, head_a * 1.06, head_b * 1.06), Y - (cy - top * sc + 0.03 * sc * ((X - cx) / head_a) ** 2))
    _paint(c.img, _cover(d), c.hair)


def _draw_eyes(c: _Canvas, g, yaw: float) -> float:
    """Cheeks (AU6: darker, redder bulges rising under the eyes), then the eyes: sclera, iris clipped to the
    sclera, dark outline; AU5 widens, AU7 and AU6 narrow. Returns the eye line's y."""
    sc, cy = c.sc, c.cy
    a6 = g("AU6")
    for side in (-1, 1):
        c.ellipse(c.ex(side * 0.16), cy + (0.1 - 0.06 * a6) * sc, 0.085 * sc, 0.06 * sc, c.skin * np.array([0.85, 0.55, 0.5], np.float32), 0.15 + 0.7 * a6)
    eye_y = cy - 0.06 * sc
    eye_w = 0.08 * sc
    eye_h = 0.038 * sc * (1.0 + 1.3 * g("AU5")) * (1.0 - 0.6 * g("AU7")) * (1.0 - 0.35 * a6)
    for side in (-1, 1):
        ecx = c.ex(side * 0.14)
        ecy = eye_y - 0.3 * (eye_h - 0.038 * sc)
        ew = eye_w * (1.0 - 0.25 * max(0.0, -side * yaw))  # far eye looks narrower
        pad = 0.015 * sc
        win, Xs, Ys = c.window(ecx - ew - pad, ecy - eye_h - pad, ecx + ew + pad, ecy + eye_h + pad)
        d_eye = _ellipse(Xs, Ys, ecx, ecy, ew, eye_h)
        a_eye = _cover(d_eye)
        _paint(win, a_eye, (245, 245, 240))
        iris = _cover(_ellipse(Xs, Ys, ecx + 0.02 * yaw * sc, eye_y, 0.032 * sc, 0.032 * sc)) * a_eye
        _paint(win, iris, (35, 28, 25))
        _paint(win, _cover(np.abs(d_eye) - 0.012 * sc), (25, 18, 15))
    return eye_y


def _draw_brows(c: _Canvas, g, eye_y: float) -> None:
    """Thick strokes; AU1 lifts the inner end, AU2 the outer end, AU4 pulls both down and in (with furrows)."""
    sc = c.sc
    a1, a2, a4 = g("AU1"), g("AU2"), g("AU4")
    brow_y = eye_y - 0.1 * sc - 0.015 * g("AU5") * sc + 0.02 * g("AU9") * sc
    brow_colour = np.minimum(c.hair * 0.6, 45.0)
    for side in (-1, 1):
        xi = c.ex(side * (0.065 - 0.035 * a4))
        xo = c.ex(side * 0.21)
        yi = brow_y - (0.09 * a1 - 0.06 * a4) * sc
        yo = brow_y - (0.09 * a2 - 0.02 * a4 + 0.02 * a1 * (1 - a2)) * sc
        c.stroke(xi, yi, xo, yo, 0.034 * sc, brow_colour)
    if a4 > 0:  # vertical furrows between knitted brows
        for side in (-1, 1):
            xf = c.ex(side * 0.022)
            c.stroke(xf, brow_y - 0.01 * sc, xf, brow_y + 0.06 * sc, 0.008 * sc, c.skin * 0.45, a4)


def _draw_nose(c: _Canvas, g, eye_y: float) -> None:
    """A bridge line and nostrils; AU9 adds wrinkles across the bridge and lifts the nostrils."""
    sc, skin = c.sc, c.skin
    a9 = g("AU9")
    nose_y = c.cy + 0.1 * sc - 0.02 * a9 * sc
    c.stroke(c.ex(0.0), eye_y + 0.02 * sc, c.ex(0.015), nose_y, 0.01 * sc, skin * 0.7)
    for side in (-1, 1):
        c.ellipse(c.ex(side * (0.03 + 0.01 * a9)), nose_y, 0.02 * sc * (1 + 0.4 * a9), 0.013 * sc, skin * 0.35)
    if a9 > 0:
        for k in range(3):
            yk = eye_y + (0.03 + 0.03 * k) * sc
            c.stroke(c.ex(-0.045), yk, c.ex(0.045), yk, 0.008 * sc, skin * 0.4, a9)


def _draw_mouth(c: _Canvas, g, jaw: float) -> None:
    """Lips between two curves; corners lift (AU12) or drop (AU15); opens (AU25, AU26); teeth when smiling or
    snarling open; the line between the lips, heavier when pressed (AU24)."""
    sc, skin = c.sc, c.skin
    a10, a12, a15 = g("AU10"), g("AU12"), g("AU15")
    a20, a23, a24, a25, a26 = g("AU20"), g("AU23"), g("AU24"), g("AU25"), g("AU26")
    my = c.cy + 0.22 * sc + 0.5 * jaw
    half_w = (0.13 + 0.035 * a12 + 0.08 * a20 - 0.03 * a26 * (1 - a20) - 0.025 * max(a23, a24)) * sc * c.squash
    corner = (-0.065 * a12 + 0.07 * a15) * sc  # + = corners down
    gap = (0.035 * a25 + 0.15 * a26 - 0.06 * a20 * a26) * sc
    thick = 0.032 * sc * (1.0 - 0.7 * max(a23, a24))
    upper_lift = 0.035 * a10 * sc
    mx = c.ex(0.0)
    win, Xs, Ys = c.window(mx - half_w, my - 0.2 * sc, mx + half_w, my + 0.2 * sc)
    u = np.clip((Xs - mx) / half_w, -1.0, 1.0)
    bulge = np.sqrt(1.0 - u * u)
    y_mid = my + corner * u * u - 0.35 * corner  # corners move, centre moves a little the other way
    upper_in = y_mid - 0.5 * gap * bulge - upper_lift * bulge * bulge
    lower_in = y_mid + 0.5 * gap * bulge
    upper_out = upper_in - thick * bulge
    lower_out = lower_in + 1.2 * thick * bulge
    inside_x = np.abs(Xs - mx) - half_w
    d_lips = np.maximum(np.maximum(upper_out - Ys, Ys - lower_out), inside_x)
    _paint(win, _cover(d_lips), skin * np.array([0.72, 0.4, 0.4], np.float32))
    d_open = np.maximum(np.maximum(upper_in - Ys, Ys - lower_in), inside_x + 0.01 * sc)
    _paint(win, _cover(d_open), (45, 12, 14))
    if a12 + a10 > 0.3:
        d_teeth = np.maximum(d_open, Ys - (upper_in + 0.035 * sc))
        _paint(win, _cover(d_teeth), (235, 232, 220))
    d_line = np.maximum(np.abs(Ys - 0.5 * (upper_in + lower_in)) - (0.006 + 0.01 * a24) * sc, inside_x)
    _paint(win, _cover(d_line), (50, 20, 20))


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A light, smooth background texture (multiplicative, around 1) with a vertical gradient."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    tex = 1.0 + 0.12 * (0.5 - ys)
    for _ in range(3):
        fx, fy, ph = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 2 * np.pi)
        tex += 0.03 * np.sin(2 * np.pi * (fx * xs + fy * ys) + ph)
    return tex[..., None].astype(np.float32)


def render_clip(spec: ClipSpec, seed: int, frames: int, size: int) -> np.ndarray:
    """All frames of a clip, (frames, size, size, 3) uint8."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, spec.index, 2]))
    tex = _texture(rng, size)
    return np.stack([render_frame(spec, t, size, rng, tex) for t in range(frames)])


def write_mp4(path: Path, video: np.ndarray, fps: int, out_size: int | None = None) -> None:
    """Encode (T, H, W, 3) uint8 RGB as H.264 yuv420p mp4, via a temp file renamed into place; with
    `out_size`, each frame is scaled (bilinear, swscale) to out_size x out_size first."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            width, height = (out_size, out_size) if out_size else (video.shape[2], video.shape[1])
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.thread_count = 1  # deterministic, and the pool already uses the cores
            stream.options = {"crf": "14", "preset": "veryfast", "threads": "1"}
            for arr in video:
                frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                if out_size:
                    frame = frame.reformat(width=width, height=height, interpolation="BILINEAR")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _make_clip(args: tuple) -> str:
    spec, seed, frames, size, fps, video_size, video_path = args
    write_mp4(Path(video_path), render_clip(spec, seed, frames, size), fps, out_size=video_size)
    return spec.clip_id


# ---------------------------------------------------------------------------------------------
# The dataset


def _annotation(spec: ClipSpec) -> dict:
    return {
        "id": spec.clip_id,
        "video": f"videos/{spec.clip_id}.mp4",
        "captions": spec.captions,
        "emotion": spec.emotion,
        "split": spec.split,
        "aus": list(spec.aus),
        "action": spec.action,
        "gender": spec.gender,
        "au_intensity": {a: round(v, 3) for a, v in spec.aus.items()},
        "head_turn": None if spec.turn == 0 else ("left" if spec.turn < 0 else "right"),
        "onset_frame": spec.onset,
        "peak_frame": spec.peak,
    }


def generate(
    root: Path,
    n_clips: int = 240,
    seed: int = 0,
    *,
    frames: int = 64,
    size: int = 96,
    fps: int = 24,
    video_size: int | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Write the demo dataset under `root` and return the path of `root/annotations.jsonl`.

    Reuses an existing dataset written with the same parameters (recorded in `root/demo.json`) whose
    videos are all present; otherwise (re)generates. `workers`: processes (default: up to 2, serial
    for small sets).
    """
    root = Path(root)
    if n_clips < 1:
        raise UserError(f"demo data: n_clips must be >= 1, got {n_clips}")
    if frames < 2:
        raise UserError(f"demo data: frames must be >= 2, got {frames}")
    if size < 32 or size % 2:
        raise UserError(f"demo data: size must be even and >= 32 (H.264 yuv420p), got {size}")
    ann_path = root / "annotations.jsonl"
    if video_size is not None and (video_size < size or video_size % 2):
        raise UserError(f"demo data: video_size must be even and >= size ({size}), got {video_size}")
    params = {"generator_version": GENERATOR_VERSION, "n_clips": n_clips, "seed": seed, "frames": frames, "size": size,
              "fps": fps, "video_size": video_size}
    meta_path = root / "demo.json"
    if ann_path.exists() and meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            old = None  # a damaged record: regenerate
        if old == params and all((root / "videos" / f"demo_{i:04d}.mp4").exists() for i in range(n_clips)):
            return ann_path

    ann_path.unlink(missing_ok=True)  # a crash below must not leave old annotations over new videos
    specs = build_specs(n_clips, seed, frames)
    jobs = [(s, seed, frames, size, fps, video_size, str(root / "videos" / f"{s.clip_id}.mp4")) for s in specs]
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n_clips >= 48 else 1
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True, console=_stderr_console())
        bar.start()
        task = bar.add_task("demo clips", total=n_clips)
    try:
        if workers > 1:
            # fork: the workers only run numpy and PyAV (imported here first), and unlike spawn it
            # works from scripts that lack an `if __name__ == "__main__"` guard
            import av  # noqa: F401

            ctx = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for _ in pool.map(_make_clip, jobs, chunksize=4):
                    if bar is not None:
                        bar.advance(task)
        else:
            for job in jobs:
                _make_clip(job)
                if bar is not None:
                    bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    atomic_write_text(meta_path, json.dumps(params, indent=1, sort_keys=True) + "\n")
    text = "".join(json.dumps(_annotation(s), sort_keys=False) + "\n" for s in specs)
    atomic_write_text(ann_path, text)
    return ann_path


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def main(argv: list[str] | None = None) -> dict:
    """Generate a demo dataset and print how long it took."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clips", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--fps", type=int, default=12)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    (args.out / "annotations.jsonl").unlink(missing_ok=True)  # always time a fresh generation
    t0 = time.perf_counter()
    ann = generate(args.out, args.clips, args.seed, frames=args.frames, size=args.size, fps=args.fps, workers=args.workers, progress=True)
    dt = time.perf_counter() - t0
    out = {"clips": args.clips, "seconds": round(dt, 2), "clips_per_s": round(args.clips / dt, 1), "annotations": str(ann)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
