"""The generic (and demo) adapter: JSON lines and CSV tables."""
from __future__ import annotations

import json

import pytest

from pipeline.data.datasets.generic import read_generic
from pipeline.errors import AnnotationError
from tests.pipeline.data.datasets.conftest import write


def jsonl(rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def test_jsonl_reads_clips_with_paths_relative_to_videos(tmp_path, make_cfg):
    cfg = make_cfg("generic", videos="vids")
    write(tmp_path / "root" / "annotations.jsonl", jsonl([
        {"id": "a", "video": "a.mp4", "captions": ["a man smiles.", "he is happy."], "emotion": "happiness", "split": "train"},
        {"id": "b", "video": "/elsewhere/b.mp4", "caption": "a woman frowns.", "split": "test", "aus": ["AU4"]},
        "",
    ]))
    notes = []
    clips = {c.id: c for c in read_generic(cfg, notes)}
    assert notes == ["annotations.jsonl: metadata keys ignored: aus"]
    assert clips["a"].video == str(tmp_path / "root" / "vids" / "a.mp4")
    assert clips["a"].captions == ["a man smiles.", "he is happy."]
    assert (clips["a"].emotion, clips["a"].emotion_index) == ("happiness", 3)
    assert clips["b"].video == "/elsewhere/b.mp4"
    assert (clips["b"].emotion, clips["b"].emotion_index, clips["b"].split) == (None, -1, "test")


@pytest.mark.parametrize("line, problem", [
    ('{"id": "b", "video": "b.mp4", "captions": ["x"], "split": "train"', "not valid JSON"),
    ('["b"]', "one JSON object per line"),
    ('{"id": "b", "video": "b.mp4", "captions": ["x"], "split": "train", "emtion": "anger"}', "unknown key 'emtion' (did you mean 'emotion'?)"),
    ('{"id": "b", "video": "b.mp4", "captions": ["x"], "split": "train", "emotion": "joy"}', "unknown emotion 'joy'"),
    ('{"id": "a", "video": "b.mp4", "captions": ["x"], "split": "train"}', "duplicate clip id 'a'"),
    ('{"id": "b", "video": "b.mp4", "captions": [""], "split": "train"}', "empty or non-text caption"),
    ('{"id": "b", "video": "b.mp4", "captions": [], "split": "train"}', "non-empty list"),
    ('{"id": "b", "video": "b.mp4", "split": "train"}', "missing 'captions'"),
    ('{"id": "b", "captions": ["x"], "split": "train"}', "missing or empty 'video'"),
    ('{"id": "b", "video": "b.mp4", "captions": ["x"]}', "missing key 'split'"),
    ('{"id": "b", "video": "b.mp4", "captions": ["x"], "split": "holdout"}', "unknown split 'holdout'"),
])
def test_jsonl_malformed_line_names_file_and_line(tmp_path, make_cfg, line, problem):
    cfg = make_cfg("generic")
    good = {"id": "a", "video": "a.mp4", "captions": ["x"], "split": "train"}
    write(tmp_path / "root" / "annotations.jsonl", jsonl([good, "", line]))
    with pytest.raises(AnnotationError) as e:
        read_generic(cfg, [])
    assert e.value.line == 3 and e.value.path.endswith("annotations.jsonl")
    assert str(e.value).startswith(f"{tmp_path / 'root' / 'annotations.jsonl'}:3: ")
    assert problem in str(e.value)


def test_csv_merges_rows_per_id(tmp_path, make_cfg):
    cfg = make_cfg("generic", annotations="ann.csv")
    write(tmp_path / "root" / "ann.csv",
          "id,video,caption,emotion,split\n"
          'a,a.mp4,"a man smiles, then laughs.",happiness,train\n'
          "b,b.mp4,a woman frowns.,,test\n"
          "a,a.mp4,he is glad.,happiness,train\n")
    clips = {c.id: c for c in read_generic(cfg, [])}
    assert clips["a"].captions == ["a man smiles, then laughs.", "he is glad."]
    assert clips["b"].emotion is None and clips["b"].emotion_index == -1


@pytest.mark.parametrize("body, line, problem", [
    ("id,video,caption\n", 1, "lacks column(s) split"),
    ("id,video,caption,split\na,a.mp4,x,train,extra\n", 2, "expected 4 columns, found 5"),
    ("id,video,caption,split\na,a.mp4,x,train\na,b.mp4,y,train\n", 3, "has video"),
    ("id,video,caption,split,emotion\na,a.mp4,x,train,rage\n", 2, "unknown emotion 'rage'"),
])
def test_csv_malformed(tmp_path, make_cfg, body, line, problem):
    cfg = make_cfg("generic", annotations="ann.csv")
    write(tmp_path / "root" / "ann.csv", body)
    with pytest.raises(AnnotationError) as e:
        read_generic(cfg, [])
    assert str(e.value).startswith(f"{tmp_path / 'root' / 'ann.csv'}:{line}: ")
    assert problem in str(e.value)
