"""stages/data.py: `ecpa manifest` prints a summary, or one red error line and exit status 2."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from stages.cli import app
from tests.pipeline.datasets.conftest import touch_videos, write


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
    assert "5 clips" in res.output and "test 1" in res.output and "train 3" in res.output and "val 1" in res.output
    assert (tmp_path / "c" / "demo" / "manifest.jsonl").is_file()


def test_manifest_command_bad_annotation_is_one_line_exit_2(tmp_path):
    _dataset(tmp_path / "d", extra='{"id": "c9", "video": "videos/c9.mp4", "captions": ["x"], "split": "nope"}\n')
    sets = ["--set", f"data.root={tmp_path / 'd'}", "--set", f"data.cache_root={tmp_path / 'c'}"]
    res = CliRunner().invoke(app, ["manifest", "--preset", "demo", *sets])
    assert res.exit_code == 2
    assert "annotations.jsonl:6: unknown split 'nope'" in res.output.replace("\n", "")
    assert "Traceback" not in res.output
    assert not (tmp_path / "c").exists()
