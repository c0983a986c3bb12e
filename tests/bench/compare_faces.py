"""Face detectors side by side on the real MAFW clips: `python -m tests.bench.compare_faces [sheet.png]`.

For each detector (pipeline.extract.faces modes 'haar' and 'mtcnn') and clip of ../shared/data/mafw_samples:
- frames with a face found in that frame (face/source 'detected') among 32 sampled frames at 224 px;
- hits on the by-eye annotated face regions of tests/pipeline/test_faces.py (8 sampled frames; a hit: the
  box centre inside the region and IoU >= 0.3);
- jitter: median and 90th percentile of the box centre's move between consecutive sampled frames, in box
  sides (of the stored, smoothed boxes: what the extractors see);
- milliseconds per frame for the face finding (2-core CPU, one thread).
With a path argument it also writes a crop sheet (one row per clip and detector, 8 face crops each) to look at.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

DETECTORS = ("haar", "mtcnn")


def _jitter(boxes: np.ndarray) -> tuple[float, float]:
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = boxes[:, 2] - boxes[:, 0]
    move = np.hypot(*(c[1:] - c[:-1]).T) / ((side[1:] + side[:-1]) / 2)
    return float(np.median(move)), float(np.percentile(move, 90))


def compare(samples: Path, sheet: Path | None = None) -> list[dict]:
    import torch

    from pipeline.extract.faces import crop_faces, find_faces
    from pipeline.extract.store import FACE_SOURCES
    from pipeline.extract.video import decode_clip
    from tests.pipeline.test_faces import MAFW_FACES, _mafw_misses

    torch.set_num_threads(1)
    rows, tiles = [], []
    for name, regions in MAFW_FACES.items():
        path = samples / f"{name}.mp4"
        d32 = decode_clip(path, 32, 224, 224)
        d8 = decode_clip(path, 8, 224, 224)
        for det in DETECTORS:
            find_faces(d8, mode=det)  # warm-up: cascades / ONNX sessions loaded once per process
            t0 = time.perf_counter()
            track = find_faces(d32, mode=det)
            ms = (time.perf_counter() - t0) / 32 * 1000
            misses = _mafw_misses(find_faces(d8, mode=det), regions)
            med, p90 = _jitter(track.boxes)
            rows.append({"clip": name, "detector": det,
                         "detected": int((track.source == FACE_SOURCES.index("detected")).sum()),
                         "fallback": int((track.source == FACE_SOURCES.index("fallback")).sum()),
                         "hits": len(regions) - len(misses), "annotated": len(regions),
                         "jitter_med": med, "jitter_p90": p90, "ms_per_frame": ms})
            if sheet is not None:
                t8 = find_faces(d8, mode=det)
                tiles.append(crop_faces(d8.source, t8.boxes, 96, scale=d8.scale))
    if sheet is not None:
        from PIL import Image

        grid = np.concatenate([np.concatenate(list(t), axis=1) for t in tiles], axis=0)
        Image.fromarray(grid).save(sheet)
    return rows


def main(argv: list[str]) -> None:
    from tests.conftest import MAFW_SAMPLES as samples

    sheet = Path(argv[0]) if argv else None
    rows = compare(samples, sheet)
    print("| clip | detector | frames with a face found (of 32) | fallback frames | annotated faces hit | "
          "jitter median / p90 (box sides) | ms / frame |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} | {r['detector']} | {r['detected']} | {r['fallback']} | {r['hits']}/{r['annotated']} | "
              f"{r['jitter_med']:.3f} / {r['jitter_p90']:.3f} | {r['ms_per_frame']:.0f} |")
    for det in DETECTORS:
        mine = [r for r in rows if r["detector"] == det]
        print(f"| all | {det} | {sum(r['detected'] for r in mine)}/{32 * len(mine)} | "
              f"{sum(r['fallback'] for r in mine)} | {sum(r['hits'] for r in mine)}/{sum(r['annotated'] for r in mine)} | "
              f"{np.mean([r['jitter_med'] for r in mine]):.3f} / {np.mean([r['jitter_p90'] for r in mine]):.3f} | "
              f"{np.mean([r['ms_per_frame'] for r in mine]):.0f} |")
    if sheet is not None:
        print(f"crop sheet: {sheet} (rows: {', '.join(f'{c} {d}' for c in ('00721', '02358', '02581') for d in DETECTORS)})")


if __name__ == "__main__":
    main(sys.argv[1:])
