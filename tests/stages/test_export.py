"""`ecpa export` and `pipeline.load_captioner` on the tiny demo chain: contents, a fresh process, refusals."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.errors import UserError
from stages.cli import app
from tests.stages._model_fixtures import bundle, chain  # noqa: F401  (module-scoped fixtures)

REPO = Path(__file__).resolve().parents[2]


def test_export_folder_contents(chain, bundle):
    from safetensors import safe_open

    cfg, run_dir, ex_dir, _, _ = chain
    names = sorted(p.name for p in bundle.iterdir())
    assert names == sorted(["MANIFEST.sha256", "config.yaml", "emotions.txt", "extractors.json", "model.json",
                            "model.safetensors", "tokenizer.json", "caption_pieces.json", "vocab.txt"])
    # decoding as `ecpa caption` does it: the length resolved from the training captions, training pieces only
    from pipeline.train.tokenizer import data_length

    dec = json.loads((bundle / "model.json").read_text())["decoding"]
    assert dec["words_only"] is True
    assert dec["max_length"] == (cfg.caption.max_length or data_length(cfg)[0]) > 0
    assert (bundle / "emotions.txt").read_text().split() == cfg.data.emotions
    ex = json.loads((bundle / "extractors.json").read_text())
    recorded = json.loads((ex_dir / "stage.json").read_text())["config"]["weights"]
    assert ex["weights"] == recorded == {"er": "random-init", "au": "random-init", "swin": "random-init"}
    assert ex["extract"]["num_frames"] == cfg.extract.num_frames
    vocab = (bundle / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    with safe_open(str(bundle / "model.safetensors"), "pt") as f:
        assert len(list(f.keys())) > 10
    # refuses to overwrite unless asked
    res = CliRunner().invoke(app, ["export", str(run_dir), "-o", str(bundle)])
    assert res.exit_code == 2 and "not empty" in res.stderr


def test_exported_folder_captions_in_a_fresh_process(chain, bundle):
    cfg, run_dir, _, captions, test = chain
    code = ("import json, sys, pipeline; c = pipeline.load_captioner(sys.argv[1], device='cpu'); "
            "print(json.dumps(c.caption(sys.argv[2]).to_dict()))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(bundle), str(test[0].video)], capture_output=True,
                         text=True, env=env, cwd=bundle.parent, timeout=300)
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["caption"] == captions[test[0].id]["caption"]
    assert rec["emotion"] == captions[test[0].id]["emotion"]


def test_caption_features_of_stored_arrays(chain, bundle):
    import pipeline
    from pipeline.extract.store import open_store

    cfg, run_dir, ex_dir, captions, test = chain
    cap = pipeline.load_captioner(bundle, device="cpu")
    g = open_store(ex_dir / "store.zarr")
    ids = [str(x) for x in np.asarray(g["clip_id"][:])]
    row = ids.index(test[2].id)
    one = {name: np.asarray(g[name][row]) for name in ("vid/tokens", "er/feats", "au/feats", "au/probs")}
    (pred,) = cap.caption_features(one)
    assert pred.caption == captions[test[2].id]["caption"]
    bad = dict(one, **{"vid/tokens": one["vid/tokens"][:-1]})
    with pytest.raises(UserError, match=r"vid/tokens has shape \(1, \d+, \d+\), the model reads"):
        cap.caption_features(bad)


@pytest.mark.parametrize("damage, expect", [
    ("alter", r"model\.safetensors: altered"),
    ("delete", r"vocab\.txt: missing"),
    ("manifest", r"MANIFEST\.sha256 is missing"),
])
def test_damaged_folder_is_refused(bundle, tmp_path, damage, expect):
    import pipeline

    copy = tmp_path / "model"
    shutil.copytree(bundle, copy)
    if damage == "alter":
        data = bytearray((copy / "model.safetensors").read_bytes())
        data[-1] ^= 0x01  # one bit of one weight
        (copy / "model.safetensors").write_bytes(bytes(data))
    elif damage == "delete":
        (copy / "vocab.txt").unlink()
    else:
        (copy / "MANIFEST.sha256").unlink()
    with pytest.raises(UserError, match=expect):
        pipeline.load_captioner(copy)


def test_other_extractor_checkpoints_are_refused(tmp_path):
    from pipeline.caption.captioner import ExtractorSetup, check_weights
    from pipeline.config import ExtractConfig
    from pipeline.records import file_sha256

    for name in ("er.pth", "au.pth", "swin.pth"):
        (tmp_path / name).write_bytes(name.encode())
    ex = ExtractConfig(weights_dir=str(tmp_path), er_weights="er.pth", au_weights="au.pth", swin_weights="swin.pth")
    good = {k: file_sha256(tmp_path / f"{k}.pth") for k in ("er", "au", "swin")}
    check_weights(ExtractorSetup(ex, 11, good))  # the recorded files: accepted
    with pytest.raises(UserError, match=r"ANFL checkpoint .*au\.pth has sha256"):
        check_weights(ExtractorSetup(ex, 11, dict(good, au="0" * 64)))
    (tmp_path / "swin.pth").unlink()
    with pytest.raises(UserError, match="swin.pth"):
        check_weights(ExtractorSetup(ex, 11, good))
