"""stages/data.py: `ecpa manifest` prints a summary, or one red error line and exit status 2."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from stages.cli import app
from tests.pipeline.data.datasets.conftest import touch_videos, write


def _dataset(root, extra: str = "") -> None:
    rows = "".join(json.dumps({"id": f"c{i}", "video": f"videos/c{i}.mp4", "captions": ["a man smiles."],
                               "emotion": "happiness", "split": "test" if i == 0 else "train"}) + "\n" for i in range(5))
    write(root / "annotations.jsonl", rows + extra)
    touch_videos(root / "videos", [f"c{i}.mp4" for i in range(5)])


def test_manifest_command_summarises(tmp_path):
    _dataset(tmp_path / "d")
    sets = ["--set", f"data.root={tmp_path / 'd'}", "--set", f"data.cache_root={tmp_path / 'c'}"]
    res = CliRunner().invoke(app, ["manifest", "--preset", "demo", *sets])
    assert res.exit_code == 0, res.output
    assert "5 clips, 5 captions" in res.output
    rows = {line.split()[0]: line.split()[1:] for line in res.output.splitlines() if line.startswith("  ")}
    assert rows == {"train": ["3", "clips", "3", "captions"], "val": ["1", "clips", "1", "captions"],
                    "test": ["1", "clips", "1", "captions"]}
    assert (tmp_path / "c" / "demo" / "manifest.jsonl").is_file()


def test_manifest_command_bad_annotation_is_one_line_exit_2(tmp_path):
    _dataset(tmp_path / "d", extra='{"id": "c9", "video": "videos/c9.mp4", "captions": ["x"], "split": "nope"}\n')
    sets = ["--set", f"data.root={tmp_path / 'd'}", "--set", f"data.cache_root={tmp_path / 'c'}"]
    res = CliRunner().invoke(app, ["manifest", "--preset", "demo", *sets])
    assert res.exit_code == 2
    assert "annotations.jsonl:6: unknown split 'nope'" in res.output.replace("\n", "")
    assert "Traceback" not in res.output
    assert not (tmp_path / "c").exists()


def test_manifest_command_emvidcap_release_as_shipped(tmp_path, formats_dir):
    """The EmVidCap-L release files, unedited, under data.root/EmVidCap-L/: counts per split and the overlap
    warning naming the video; with data.overlap=error one red line naming file and line."""
    root = tmp_path / "emvidcap"
    train = (formats_dir / "EmVidCap-L_EmVideo_trainval_captions.head.csv").read_bytes()
    test = (formats_dir / "EmVidCap-L_EmVideo_test_captions.head.csv").read_bytes()
    # the real overlap (vid80703 in both tables) appended the way the release has it
    write(root / "EmVidCap-L/EmVideo_trainval_captions.csv", train + b"vid80703\ta man smiles at the camera\n")
    write(root / "EmVidCap-L/EmVideo_test_captions.csv", test + b"vid80703\tA man smiles at the camera\n")
    touch_videos(root / "videos", ["vid10001.mp4", "vid10002.mp4", "vid10005.mp4", "vid10009.mp4", "vid80703.mp4"])
    sets = ["--set", f"data.root={root}", "--set", f"data.cache_root={tmp_path / 'c'}", "--set", "data.val_fraction=0"]
    res = CliRunner().invoke(app, ["manifest", "--preset", "emvidcap", *sets])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "video vid80703 is in both train" in out and "kept in test, dropped from train" in out
    assert "EmVideo_trainval_captions.csv:21" in out and "EmVideo_test_captions.csv:26" in out
    rows = {line.split()[0]: line.split()[1:] for line in res.output.splitlines() if line.startswith("  ")}
    n_train = sum(1 for line in train.decode().splitlines()[1:] if line.strip())
    n_test = sum(1 for line in test.decode().splitlines()[1:] if line.strip())
    assert rows["train"] == [str(len({l.split("\t")[0] for l in train.decode().splitlines()[1:]})), "clips",
                             str(n_train), "captions"]
    assert rows["test"][2] == str(n_test + 1)
    res = CliRunner().invoke(app, ["manifest", "--preset", "emvidcap", *sets, "--set", "data.overlap=error"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "EmVideo_trainval_captions.csv:21: video 'vid80703' is in the train table" in res.output.replace("\n", "")
