"""The EmVidCap adapter: TAB-separated caption tables per split, on written files and the real excerpt."""
from __future__ import annotations

import pytest

from pipeline.datasets.emvidcap import read_emvidcap
from pipeline.errors import AnnotationError
from pipeline.manifest import build_manifest
from tests.pipeline.datasets.conftest import touch_videos, write

TRAIN = "VideoID\tEmCaptions\nvid1\tA man laughs, \"happily\"\nvid1\tHe is glad\nvid2\tA woman cries\n"


@pytest.fixture
def cfg(tmp_path, make_cfg):
    write(tmp_path / "root/train.csv", TRAIN)
    write(tmp_path / "root/test.csv", "VideoID\tEmCaptions\nvid3\tA boy is scared\n")
    touch_videos(tmp_path / "root/videos", ["vid1.mp4", "vid2.avi", "vid3.webm"])
    return make_cfg("emvidcap", annotations="train.csv", test_annotations="test.csv", videos="videos")


def test_reads_tables_per_split_and_finds_video_extension(cfg, tmp_path):
    clips = {c.id: c for c in read_emvidcap(cfg, [])}
    assert clips["vid1"].captions == ['A man laughs, "happily"', "He is glad"]
    assert clips["vid1"].split == "train" and clips["vid3"].split == "test"
    assert clips["vid2"].video == str(tmp_path / "root/videos/vid2.avi")
    assert clips["vid3"].video == str(tmp_path / "root/videos/vid3.webm")
    assert all(c.emotion is None and c.emotion_index == -1 for c in clips.values())


@pytest.mark.parametrize("train, where, problem", [
    ("VideoID,EmCaptions\nvid1,x\n", "train.csv:1", "expected the header"),
    ("VideoID\tEmCaptions\nvid1\tx\textra\n", "train.csv:2", "expected 2 TAB-separated columns"),
    ("VideoID\tEmCaptions\nvid1\tx\nvid1\t  \n", "train.csv:3", "empty or non-text caption for clip 'vid1'"),
    ("VideoID\tEmCaptions\nvid1\tx\nvid3\ty\n", "test.csv:2", "'vid3' is in the test table and in the train table"),
])
def test_malformed_tables(cfg, tmp_path, train, where, problem):
    write(tmp_path / "root/train.csv", train)
    with pytest.raises(AnnotationError) as e:
        read_emvidcap(cfg, [])
    assert str(e.value).startswith(f"{tmp_path / 'root' / where}: ")
    assert problem in str(e.value)


def test_missing_test_table(cfg, tmp_path):
    cfg.data.test_annotations = "nope.csv"
    with pytest.raises(AnnotationError, match=r"nope\.csv: EmVidCap caption table not found"):
        read_emvidcap(cfg, [])


def test_real_excerpt(formats_dir, cfg, tmp_path):
    """The published test table excerpt: 19 captions of vid10005, 5 of vid10009."""
    cfg.data.test_annotations = str(formats_dir / "EmVidCap-L_EmVideo_test_captions.head.csv")
    touch_videos(tmp_path / "root/videos", ["vid10005.mp4", "vid10009.mp4"])
    clips = {c.id: c for c in build_manifest(cfg)}
    assert clips["vid10005"].split == "test" and len(clips["vid10005"].captions) == 19
    assert len(clips["vid10009"].captions) == 5
    assert clips["vid10005"].captions[0] == "A man heard the sound of weeding and became angry"
    assert "One person is using electric saw  ,  noise makes another person intolerable" in clips["vid10005"].captions
    assert "vid3" not in clips
