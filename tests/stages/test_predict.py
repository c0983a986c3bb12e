"""`ecpa predict` on the tiny demo chain: same captions as `ecpa caption`, the stored features, nothing written,
bad videos named while the others go on, folders, key prefixes, exported models."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from stages.cli import app
from tests.stages._model_fixtures import bundle, chain  # noqa: F401  (module-scoped fixtures)


def _predict(*args):
    res = CliRunner().invoke(app, ["predict", *map(str, args)])
    return res, [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def _tree(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_predict_gives_the_caption_of_ecpa_caption(chain):
    cfg, run_dir, _, captions, test = chain
    clips = test[:3]
    res, records = _predict(*[c.video for c in clips], "--run", run_dir, "--json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert [r["video"] for r in records] == [str(c.video) for c in clips]  # input order
    for clip, r in zip(clips, records):
        assert r["caption"] == captions[clip.id]["caption"]
        assert r["emotion"] == captions[clip.id]["emotion"]
        assert 0 < r["emotion_prob"] <= 1
        assert len(r["top_aus"]) == cfg.model.top_k
        confs = [a["confidence"] for a in r["top_aus"]]
        assert confs == sorted(confs, reverse=True)


def test_predict_features_are_the_stored_ones(chain, monkeypatch):
    """Same settings, same checkpoints (seeded random init here), same code path: bit-identical features."""
    from pipeline.caption.captioner import Captioner, captioner_from_run
    from pipeline.extract.store import open_store
    from pipeline.train.data import FEATURE_ARRAYS
    from pipeline.extract.stage import SEED

    cfg, run_dir, ex_dir, _, test = chain
    seen = []
    original = Captioner.caption_features

    def spy(self, features, videos=None):
        seen.append({k: np.asarray(v) for k, v in features.items()})
        return original(self, features, videos)

    monkeypatch.setattr(Captioner, "caption_features", spy)
    cap = captioner_from_run(run_dir, device="cpu", seed=SEED)
    preds = list(cap.caption_videos([test[0].video, test[1].video], batch_size=2))
    assert len(preds) == 2 and len(seen) == 1
    g = open_store(ex_dir / "store.zarr")
    ids = [str(x) for x in np.asarray(g["clip_id"][:])]
    for i, clip in enumerate(test[:2]):
        row = ids.index(clip.id)
        for key, name in FEATURE_ARRAYS.items():  # vid -> vid/tokens, ...
            np.testing.assert_array_equal(seen[0][key][i], np.asarray(g[name][row]), err_msg=name)


def test_predict_writes_nothing_into_the_cache(chain):
    cfg, run_dir, _, _, test = chain
    before = _tree(cfg.cache_dir)
    res, _ = _predict(test[0].video, "--run", run_dir, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert _tree(cfg.cache_dir) == before


def test_unusable_video_is_named_and_the_others_go_on(chain, tmp_path):
    cfg, run_dir, _, captions, test = chain
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n")
    missing = tmp_path / "gone.mp4"
    res, records = _predict(test[0].video, bad, missing, test[1].video, "--run", run_dir, "--json",
                            "--batch-size", "2")
    assert res.exit_code == 1
    assert [r["video"] for r in records] == [str(test[0].video), str(bad), str(missing), str(test[1].video)]
    assert "error" in records[1] and "not a video" in records[1]["error"]
    assert "error" in records[2]
    assert records[0]["caption"] == captions[test[0].id]["caption"]
    assert records[3]["caption"] == captions[test[1].id]["caption"]
    assert str(bad) in res.stderr and "2 of 4 video(s) captioned" in res.stderr


def test_folder_and_key_prefix_and_text_output(chain, tmp_path):
    cfg, run_dir, _, captions, test = chain
    folder = tmp_path / "clips"
    folder.mkdir()
    for c in test[:2]:
        os.symlink(c.video, folder / Path(c.video).name)
    (folder / "notes.txt").write_text("not a video suffix: skipped\n")
    res = CliRunner().invoke(app, ["predict", str(folder), "--run", run_dir.name[:10], "--cache", str(cfg.cache_dir)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    for c in test[:2]:
        assert f"{folder / Path(c.video).name}: {captions[c.id]['caption']}" in lines
    assert sum(line.startswith("  emotion: ") for line in lines) == 2
    assert sum(line.startswith("  top AUs: AU") for line in lines) == 2


def test_predict_usage_errors_say_what(chain, tmp_path):
    cfg, run_dir, _, _, test = chain
    res = CliRunner().invoke(app, ["predict", str(test[0].video)])
    assert res.exit_code == 2 and "exactly one of --run" in res.stderr
    res = CliRunner().invoke(app, ["predict", str(tmp_path), "--run", str(run_dir)])
    assert res.exit_code == 2 and "no video files in this folder" in res.stderr
    assert "Traceback" not in res.output


def test_predict_with_an_exported_model(chain, bundle):
    cfg, run_dir, _, captions, test = chain
    res, records = _predict(test[1].video, "--model", bundle, "--json")
    assert res.exit_code == 0, res.output
    assert records[0]["caption"] == captions[test[1].id]["caption"]


def test_predict_refuses_a_damaged_model_folder(chain, bundle, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(bundle, copy)
    (copy / "emotions.txt").write_text("anger\n")
    res = CliRunner().invoke(app, ["predict", str(chain[4][0].video), "--model", str(copy)])
    assert res.exit_code == 2
    assert "emotions.txt: altered" in res.stderr and "Traceback" not in res.output


def test_predict_real_mafw_clips(chain, mafw_samples):
    """Real MAFW videos (other sizes and encodings than the demo's) through the same path; the input folder
    is only read."""
    cfg, run_dir, _, _, _ = chain
    before = _tree(mafw_samples)
    res, records = _predict(mafw_samples, "--run", run_dir, "--json", "--batch-size", "2")
    assert res.exit_code == 0, res.output
    videos = sorted(p for p in mafw_samples.iterdir() if p.suffix == ".mp4")
    assert [r["video"] for r in records] == [str(v) for v in videos]
    for r in records:
        assert "error" not in r and r["emotion"] in cfg.data.emotions
    assert _tree(mafw_samples) == before
