"""A small store of random arrays in the stage-one layout plus matching manifest clips, for stage-two tests."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.extract.store import StoreShapes, create_store

WORDS = ["a", "man", "woman", "smiles", "frowns", "speaks", "to", "the", "camera", "with", "open", "mouth",
         "wide", "eyes", "raised", "brows", "and", "looks", "down", "sad", "happy", "angry"]

TINY_SHAPES = StoreShapes(tokens=6, channels=8, frames=4, er_dim=16, emotions=3, au_frames=2, aus=5, au_dim=12)


@dataclass
class FakeClip:
    id: str
    captions: list[str]
    emotion_index: int
    split: str
    video: str = ""
    emotion: str | None = None


def random_store(path: Path, n: int = 12, shapes: StoreShapes = TINY_SHAPES, seed: int = 0, n_val: int = 2,
                 attrs: dict | None = None, learnable: bool = True) -> list[FakeClip]:
    """Write a store of `n` clips at `path` (all done) and return manifest-like clips (last `n_val` are val).
    With `learnable`, the emotion shows in the features and the caption names the emotion."""
    rng = np.random.default_rng(seed)
    ids = [f"clip{i:03d}" for i in range(n)]
    g = create_store(path, ids, shapes, attrs or {"emotions": [f"e{k}" for k in range(shapes.emotions)]})
    clips = []
    for i, cid in enumerate(ids):
        emo = i % shapes.emotions
        vid = rng.standard_normal((shapes.tokens, shapes.channels)).astype(np.float16)
        er = rng.standard_normal((shapes.frames, shapes.er_dim)).astype(np.float16)
        if learnable:
            vid[:, emo] += 2.0
            er[:, emo] += 2.0
        g["vid/tokens"][i] = vid
        g["er/feats"][i] = er
        g["er/logits"][i] = rng.standard_normal((shapes.frames, shapes.emotions)).astype(np.float32)
        g["au/feats"][i] = rng.standard_normal((shapes.au_frames, shapes.aus, shapes.au_dim)).astype(np.float16)
        g["au/probs"][i] = rng.random((shapes.au_frames, shapes.aus)).astype(np.float32)
        g["face/boxes"][i] = np.zeros((shapes.frames, 4), np.float32)
        g["face/source"][i] = np.zeros(shapes.frames, np.uint8)
        g["done"][i] = True
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 8))))
        cap = " ".join([["angry", "happy", "sad"][emo % 3], *words])
        clips.append(FakeClip(cid, [cap, " ".join(words[::-1])], emo, "val" if i >= n - n_val else "train"))
    return clips
