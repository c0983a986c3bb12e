"""The MSR-VTT adapter: *_videodatainfo.json files."""
from __future__ import annotations

import json

import pytest

from pipeline.data.datasets.msrvtt import read_msrvtt
from pipeline.errors import AnnotationError
from tests.pipeline.data.datasets.conftest import touch_videos, write


def info(videos, sentences) -> str:
    # laid out one entry per line, like a pretty-printed file, so line numbers are meaningful
    body = ",\n".join(json.dumps(v) for v in videos)
    sents = ",\n".join(json.dumps(s) for s in sentences)
    return '{"info": {"year": 2016},\n"videos": [\n' + body + '\n],\n"sentences": [\n' + sents + "\n]}\n"


TRAIN_VAL = info(
    [{"category": 9, "url": "u", "video_id": "video0", "start time": 137.72, "end time": 149.44, "split": "train", "id": 0},
     {"category": 16, "url": "u", "video_id": "video1", "start time": 184.33, "end time": 206.89, "split": "validate", "id": 1}],
    [{"caption": "a car is shown", "video_id": "video0", "sen_id": 0},
     {"caption": "a man drives a car", "video_id": "video0", "sen_id": 1},
     {"caption": "a woman sings", "video_id": "video1", "sen_id": 2}],
)
TEST = info([{"video_id": "video9", "split": "test", "id": 9}], [{"caption": "kids play", "video_id": "video9", "sen_id": 9}])


@pytest.fixture
def cfg(tmp_path, make_cfg):
    write(tmp_path / "root/train_val_videodatainfo.json", TRAIN_VAL)
    write(tmp_path / "root/test_videodatainfo.json", TEST)
    touch_videos(tmp_path / "root/videos", ["video0.mp4", "video1.mp4", "video9.mp4"])
    return make_cfg("msrvtt", test_annotations="test_videodatainfo.json")


def test_reads_splits_and_sentences(cfg, tmp_path):
    clips = {c.id: c for c in read_msrvtt(cfg, [])}
    assert {k: c.split for k, c in clips.items()} == {"video0": "train", "video1": "val", "video9": "test"}
    assert clips["video0"].captions == ["a car is shown", "a man drives a car"]
    assert clips["video9"].video == str(tmp_path / "root/videos/video9.mp4")
    assert clips["video1"].emotion_index == -1


def test_json_syntax_error_reports_its_line(cfg, tmp_path):
    broken = TRAIN_VAL.replace('"sen_id": 1}', '"sen_id": 1', 1)
    write(tmp_path / "root/train_val_videodatainfo.json", broken)
    with pytest.raises(json.JSONDecodeError) as ref:  # where json itself puts the error
        json.loads(broken)
    with pytest.raises(AnnotationError) as e:
        read_msrvtt(cfg, [])
    assert ref.value.lineno == 9
    assert str(e.value).startswith(f"{tmp_path / 'root/train_val_videodatainfo.json'}:9: not valid JSON")


@pytest.mark.parametrize("edit, line, problem", [
    (('"caption": "a woman sings"', '"caption": ""'), 9, "empty or non-text caption for clip 'video1'"),
    (('"video_id": "video1", "sen_id": 2', '"video_id": "video7", "sen_id": 2'), 9, "names video 'video7'"),
    (('"split": "validate"', '"split": "holdout"'), 4, "unknown split 'holdout'"),
])
def test_semantic_errors_report_the_entry_line(cfg, tmp_path, edit, line, problem):
    write(tmp_path / "root/train_val_videodatainfo.json", TRAIN_VAL.replace(*edit))
    with pytest.raises(AnnotationError) as e:
        read_msrvtt(cfg, [])
    assert str(e.value).startswith(f"{tmp_path / 'root/train_val_videodatainfo.json'}:{line}: ")
    assert problem in str(e.value)


def test_video_without_sentence_and_wrong_shape(cfg, tmp_path):
    write(tmp_path / "root/test_videodatainfo.json",
          info([{"video_id": "video9", "split": "test"}, {"video_id": "video8", "split": "test"}],
               [{"caption": "kids play", "video_id": "video9", "sen_id": 9}]))
    with pytest.raises(AnnotationError, match=r"test_videodatainfo\.json:4: 1 videos have no sentence \(e\.g\. 'video8'\)"):
        read_msrvtt(cfg, [])
    write(tmp_path / "root/test_videodatainfo.json", '{"videos": {}}')
    with pytest.raises(AnnotationError, match=r"test_videodatainfo\.json:1: expected an object with 'videos'"):
        read_msrvtt(cfg, [])


def test_video_in_both_files_follows_data_overlap(cfg, tmp_path):
    both = info([{"video_id": "video9", "split": "test", "id": 9}, {"video_id": "video0", "split": "test", "id": 10}],
                [{"caption": "kids play", "video_id": "video9", "sen_id": 9},
                 {"caption": "a red car", "video_id": "video0", "sen_id": 10}])
    write(tmp_path / "root/test_videodatainfo.json", both)
    notes: list[str] = []
    clips = {c.id: c for c in read_msrvtt(cfg, notes)}
    assert clips["video0"].split == "test" and clips["video0"].captions == ["a red car"]
    train, test = tmp_path / "root/train_val_videodatainfo.json", tmp_path / "root/test_videodatainfo.json"
    assert notes == [f"video video0 is in both train ({train}:3) and test ({test}:4): kept in test, dropped from "
                     "train (data.overlap=test; set data.overlap=error to stop instead)"]
    cfg.data.overlap = "error"
    with pytest.raises(AnnotationError, match=r"train_val_videodatainfo\.json:3: video 'video0' is in the train table"):
        read_msrvtt(cfg, [])
