"""The demo dataset generator: real mp4s, determinism, truthful captions, moving and learnable faces."""
from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.data.demo import CUE_AU, CUE_COUNT, EMOTIONS, generate
from pipeline.errors import UserError

N_CLIPS, FRAMES, SIZE = 70, 8, 96

# The AUs each emotion must show (the brief's prototypes; alternatives where it gives two).
CORE_AUS = {
    "happiness": [{"AU6", "AU12"}],
    "sadness": [{"AU1", "AU4", "AU15"}],
    "anger": [{"AU4", "AU7", "AU24"}, {"AU4", "AU5", "AU23"}],
    "surprise": [{"AU1", "AU2", "AU5", "AU26"}],
    "fear": [{"AU1", "AU2", "AU4", "AU5", "AU20", "AU26"}],
    "disgust": [{"AU9", "AU10", "AU15"}],
    "neutral": [set()],
}


def decode(path: Path, fmt: str = "rgb24") -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format=fmt) for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    ann = generate(root, N_CLIPS, seed=3, frames=FRAMES, size=SIZE, fps=12, workers=2)
    rows = [json.loads(line) for line in ann.read_text().splitlines()]
    return root, ann, rows


def test_writes_real_h264_mp4s_of_the_requested_shape(demo):
    root, ann, rows = demo
    assert ann == root / "annotations.jsonl" and len(rows) == N_CLIPS
    assert [r["id"] for r in rows] == [f"demo_{i:04d}" for i in range(N_CLIPS)]
    for r in rows[:3]:
        path = root / r["video"]
        assert r["video"] == f"videos/{r['id']}.mp4"
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            assert (s.codec_context.name, s.codec_context.pix_fmt) == ("h264", "yuv420p")
        video = decode(path)
        assert video.shape == (FRAMES, SIZE, SIZE, 3)


def test_emotions_aus_and_splits(demo):
    _, _, rows = demo
    assert {r["emotion"] for r in rows} == set(EMOTIONS)
    for r in rows:
        assert any(core <= set(r["aus"]) for core in CORE_AUS[r["emotion"]]), r
        assert not ({"AU5", "AU7"} <= set(r["aus"]) or {"AU12", "AU15"} <= set(r["aus"])), r  # contradictions
    test = [r for r in rows if r["split"] == "test"]
    assert {r["split"] for r in rows} == {"train", "test"}
    assert 0.15 <= len(test) / len(rows) <= 0.25
    assert {r["emotion"] for r in test} == set(EMOTIONS)  # stratified: every class is evaluated


def test_captions_name_only_drawn_cues_and_the_drawn_gender(demo):
    root, _, rows = demo
    for r in rows:
        caps = r["captions"]
        assert 2 <= len(caps) <= 3 and len(set(caps)) == len(caps)
        for cap in caps:
            m = re.fullmatch(r"a (man|woman) (.+)\. (the .+)\.", cap)
            assert m, cap
            assert m.group(1) == r["gender"]
            pronoun = {"man": "her", "woman": "his"}[r["gender"]]  # the wrong one must not appear
            assert f" {pronoun} " not in f" {m.group(2)} ", cap
            cues = [c.removeprefix("the ") for c in re.split(r", | and ", m.group(3))]
            # one to three cues by emotion (CUE_COUNT, one more for a laugh), never more than the AUs drawn
            n_drawn = len(r["aus"]) if r["aus"] else 1
            laugh = r["emotion"] == "happiness" and "AU25" in r["aus"]
            assert len(cues) == min(n_drawn, CUE_COUNT[r["emotion"]] + laugh), (cap, r["aus"])
            for cue in cues:
                assert cue in CUE_AU, (cue, cap)
                au = CUE_AU[cue]
                assert (au in r["aus"]) if au is not None else not r["aus"], (cue, r["aus"])
            assert ("turns" in m.group(2)) == (r["head_turn"] is not None), cap
    # the gender word matches the drawn face: long hair (woman) covers the background beside the neck,
    # so that spot looks like the hair on top of the head rather than like the background at the edge
    for r in rows:
        f0 = decode(root / r["video"])[0].astype(np.float32)

        def patch(y, x):
            return f0[int(y * SIZE) : int(y * SIZE) + 4, int(x * SIZE) : int(x * SIZE) + 4].mean((0, 1))

        beside_neck, top_hair, edge = patch(0.82, 0.15), patch(0.15, 0.48), patch(0.82, 0.0)
        looks_like_hair = np.abs(beside_neck - top_hair).mean() < np.abs(beside_neck - edge).mean()
        assert looks_like_hair == (r["gender"] == "woman"), (r["id"], r["gender"], beside_neck, top_hair, edge)


def test_the_expression_really_moves(demo):
    root, _, rows = demo
    mouth = (slice(int(0.68 * SIZE), int(0.95 * SIZE)), slice(int(0.3 * SIZE), int(0.7 * SIZE)))
    eyes = (slice(int(0.2 * SIZE), int(0.55 * SIZE)), slice(int(0.2 * SIZE), int(0.8 * SIZE)))

    def change(r, region):
        v = decode(root / r["video"], "gray").astype(np.float32)
        return float(np.abs(v[r["peak_frame"]][region] - v[0][region]).mean())

    still = [r for r in rows if r["head_turn"] is None]
    surprise = [change(r, mouth) for r in still if r["emotion"] == "surprise"]
    neutral = [change(r, mouth) for r in still if r["emotion"] == "neutral"]
    anger_eyes = [change(r, eyes) for r in still if r["emotion"] == "anger"]
    neutral_eyes = [change(r, eyes) for r in still if r["emotion"] == "neutral"]
    assert surprise and neutral and anger_eyes, 'the fixture lacks still clips of a class'
    print('mouth change surprise', surprise, 'neutral', neutral, 'eyes anger', anger_eyes)
    assert max(neutral) < 6.0, neutral  # only noise, lighting flicker and compression
    assert min(surprise) > 3 * max(neutral), (surprise, neutral)  # the jaw drops: a big dark mouth appears
    assert min(anger_eyes) > 3 * max(neutral_eyes), (anger_eyes, neutral_eyes)
    for r in rows:  # the peak is where the annotation says it is: after the onset, inside the clip
        assert 0 <= r["onset_frame"] < r["peak_frame"] < FRAMES


def test_emotions_are_learnable_from_raw_peak_frames(demo):
    """Ridge one-vs-rest on 64x64 grayscale peak frames; held-out accuracy far above chance (1/7)."""
    root, _, rows = demo
    feats, labels = [], []
    for r in rows:
        peak = decode(root / r["video"], "gray")[r["peak_frame"]].astype(np.float32)
        small = peak.reshape(SIZE // 3, 3, SIZE // 3, 3).mean((1, 3))  # 96 -> 32, area average
        small = np.kron(small, np.ones((2, 2), np.float32))  # 64x64 like the demo's crops
        small = (small - small.mean()) / (small.std() + 1e-6)
        feats.append(small.ravel())
        labels.append(EMOTIONS.index(r["emotion"]))
    x, y = np.stack(feats), np.array(labels)
    train = np.array([r["split"] == "train" for r in rows])
    a, targets = x[train], np.eye(len(EMOTIONS))[y[train]]
    w = a.T @ np.linalg.solve(a @ a.T + 10.0 * np.eye(len(a)), targets)  # dual ridge
    acc = float(((x[~train] @ w).argmax(1) == y[~train]).mean())
    print(f"held-out accuracy {acc:.2f} on {int((~train).sum())} clips")
    assert acc >= 0.5, acc  # chance is 0.14


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    kw = dict(frames=6, size=48, fps=8, workers=1)
    a = generate(tmp_path / "a", 5, seed=11, **kw)
    b = generate(tmp_path / "b", 5, seed=11, **kw)
    c = generate(tmp_path / "c", 5, seed=12, **kw)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    for i in range(5):
        va = decode(tmp_path / "a" / "videos" / f"demo_{i:04d}.mp4")
        vb = decode(tmp_path / "b" / "videos" / f"demo_{i:04d}.mp4")
        vc = decode(tmp_path / "c" / "videos" / f"demo_{i:04d}.mp4")
        assert np.array_equal(va, vb)
        assert not np.array_equal(va, vc)


def test_reuses_an_existing_dataset_and_regenerates_on_other_parameters(tmp_path):
    kw = dict(frames=4, size=32, fps=8, workers=1)
    ann = generate(tmp_path, 3, seed=0, **kw)
    video = tmp_path / "videos" / "demo_0000.mp4"
    stamp = (ann.stat().st_mtime_ns, video.stat().st_mtime_ns)
    assert generate(tmp_path, 3, seed=0, **kw) == ann
    assert (ann.stat().st_mtime_ns, video.stat().st_mtime_ns) == stamp  # nothing rewritten
    assert json.loads((tmp_path / "demo.json").read_text())["seed"] == 0

    generate(tmp_path, 4, seed=0, **kw)  # another n_clips
    assert len(ann.read_text().splitlines()) == 4
    before = ann.read_bytes()
    generate(tmp_path, 4, seed=1, **kw)  # another seed
    assert ann.read_bytes() != before
    video.unlink()  # a missing video makes the dataset incomplete
    generate(tmp_path, 4, seed=1, **kw)
    assert video.exists()


@pytest.mark.parametrize("kwargs", [{"n_clips": 0}, {"size": 33}, {"frames": 1}])
def test_bad_parameters_are_user_errors(tmp_path, kwargs):
    with pytest.raises(UserError):
        generate(tmp_path, **{"n_clips": 2, **kwargs})
    assert not (tmp_path / "annotations.jsonl").exists()
