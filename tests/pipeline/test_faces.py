"""The offline face finder (pipeline.faces)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.faces import crop_faces, detect_face, find_faces
from pipeline.video import ClipError, DecodedClip, decode_clip


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


def test_synthetic_face_box_covers_face_and_borrows_missing_frames():
    frames = np.stack([_face_frame(60, 55), _face_frame(62, 55), np.full((120, 200, 3), 30, np.uint8), _face_frame(64, 56)])
    track = find_faces(_clip(frames))
    assert track.detected.tolist() == [True, True, False, True]
    for box in track.boxes:
        x0, y0, x1, y1 = box
        assert x0 <= 62 - 22 and x1 >= 62 + 22 and y0 <= 55 - 28 and y1 >= 55 + 28  # covers the ellipse
        assert (x1 - x0) < 100  # and is not the whole frame
    assert np.allclose(track.boxes[2], track.boxes[1])  # the faceless frame uses the previous box


def test_no_face_anywhere_is_a_clip_error():
    frames = np.full((3, 64, 64, 3), (20, 80, 30), np.uint8)
    with pytest.raises(ClipError, match="no face found in any of the 3 sampled frames"):
        find_faces(_clip(frames))


def test_center_mode_and_crops_pad_outside():
    frames = np.stack([_face_frame(60, 55)] * 2)
    track = find_faces(_clip(frames), mode="center")
    assert track.boxes[0].tolist() == [40, 0, 160, 120]
    crops = crop_faces(frames, np.array([[-10, -10, 30, 30]] * 2, np.float32), 20)
    assert crops.shape == (2, 20, 20, 3)
    assert crops[0, :4, :4].max() == 0 and crops[0, -3:, -3:].min() > 0  # black padding outside the frame


def test_demo_faces_found(tiny_demo_extracted):
    from pipeline.manifest import read_manifest

    for clip in read_manifest(tiny_demo_extracted.manifest_path)[:4]:
        d = decode_clip(clip.video, 4, 64, 64)
        track = find_faces(d)
        assert track.detected.all()
        for x0, y0, x1, y1 in track.boxes:  # the drawn face fills the middle of the frame
            assert x0 < 24 and x1 > 40 and y0 < 24 and y1 > 40


def test_mafw_faces_found_in_most_frames(mafw_samples):
    for name in ("00721", "02358", "02581"):
        d = decode_clip(mafw_samples / f"{name}.mp4", 8, 224, 224)
        track = find_faces(d)
        h, w = d.resized.shape[1:3]
        assert track.detected.sum() >= 5, name
        side = track.boxes[:, 2] - track.boxes[:, 0]
        assert np.all(side > 0.08 * h) and np.all(side <= 1.3 * h), (name, side)
        cx, cy = track.boxes[:, [0, 2]].mean(1), track.boxes[:, [1, 3]].mean(1)
        assert np.all((cx > 0) & (cx < w) & (cy > 0) & (cy < h)), name
