"""The MSVD adapter: corpus CSV (quoted, optional pandas index), split file or vidN mapping."""
from __future__ import annotations

import pytest

from pipeline.data.datasets.msvd import read_msvd, read_split, split_of_vid
from pipeline.errors import AnnotationError
from pipeline.data.manifest import build_manifest
from tests.pipeline.data.datasets.conftest import touch_videos, write

HEADER = "VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description\n"
CORPUS = (HEADER
          + 'abc,1,5,11,clean,10,English,"A dog runs, then jumps."\n'
          + "abc,1,5,12,clean,10,German,Ein Hund rennt.\n"
          + "abc,1,5,13,clean,10,English,A dog is running.\n"
          + "xyz,7,9,14,clean,10,English,A cat sleeps.\n"
          + "xyz,7,9,15,clean,10,English,\n"
          + "unl,0,2,16,clean,10,English,Not in any split.\n")


@pytest.fixture
def cfg(tmp_path, make_cfg):
    write(tmp_path / "root/corpus.csv", CORPUS)
    write(tmp_path / "root/split.txt", "abc_1_5 train\nxyz_7_9 test\n")
    touch_videos(tmp_path / "root/YouTubeClips", ["abc_1_5.avi", "xyz_7_9.mp4"])
    return make_cfg("msvd", annotations="corpus.csv", split_file="split.txt")


def test_reads_english_rows_with_quoted_commas(cfg, tmp_path):
    notes: list[str] = []
    clips = {c.id: c for c in read_msvd(cfg, notes)}
    assert sorted(clips) == ["abc_1_5", "xyz_7_9"]
    assert clips["abc_1_5"].captions == ["A dog runs, then jumps.", "A dog is running."]
    assert clips["xyz_7_9"].captions == ["A cat sleeps."] and clips["xyz_7_9"].split == "test"
    assert clips["abc_1_5"].video == str(tmp_path / "root/YouTubeClips/abc_1_5.avi")
    assert clips["xyz_7_9"].video == str(tmp_path / "root/YouTubeClips/xyz_7_9.mp4")
    assert clips["abc_1_5"].emotion is None and clips["abc_1_5"].emotion_index == -1
    assert any(n.startswith("1 English rows") for n in notes)
    assert any(n.startswith("1 clips of corpus.csv are not in the split file") for n in notes)


def test_vid_mapping_split(cfg, tmp_path):
    write(tmp_path / "root/split.txt", "abc_1_5 vid1200\nxyz_7_9 vid1201\nunl_0_2 vid1301\n")
    clips = {c.id: c.split for c in read_msvd(cfg, [])}
    assert clips == {"abc_1_5": "train", "xyz_7_9": "val", "unl_0_2": "test"}
    assert [split_of_vid(n) for n in (1, 1200, 1201, 1300, 1301, 1970, 1971)] == [
        "train", "train", "val", "val", "test", "test", None]


@pytest.mark.parametrize("corpus, line, problem", [
    (HEADER.replace("Language", "Lang") + "abc,1,5,11,clean,10,English,x\n", 1, "expected the header"),
    (HEADER + "abc,1,5,11,clean,10,English,a dog, running\n", 2, "expected 8 columns, found 9"),
    (HEADER + 'abc,1,5,11,clean,10,English,"a dog\nxyz,7,9,14,clean,10,English,A cat.\n', 2, "an unclosed quote?"),
])
def test_malformed_corpus(cfg, tmp_path, corpus, line, problem):
    write(tmp_path / "root/corpus.csv", corpus)
    with pytest.raises(AnnotationError) as e:
        read_msvd(cfg, [])
    assert str(e.value).startswith(f"{tmp_path / 'root/corpus.csv'}:{line}: ")
    assert problem in str(e.value)


@pytest.mark.parametrize("split, line, problem", [
    ("abc_1_5 train\nabc_1_5 test\n", 2, "listed twice"),
    ("abc_1_5 train\nqqq_0_1 test\n", 2, "clip 'qqq_0_1' has no English caption"),
    ("abc_1_5 vid1999\n", 1, "outside vid1..vid1970"),
    ("abc_1_5 holdout\n", 1, "unknown split 'holdout'"),
    ("abc_1_5\n", 1, "found 1 fields"),
])
def test_malformed_split_file(cfg, tmp_path, split, line, problem):
    write(tmp_path / "root/split.txt", split)
    with pytest.raises(AnnotationError) as e:
        read_msvd(cfg, [])
    assert str(e.value).startswith(f"{tmp_path / 'root/split.txt'}:{line}: ")
    assert problem in str(e.value)


def test_missing_split_file(cfg, tmp_path):
    (tmp_path / "root/split.txt").unlink()
    with pytest.raises(AnnotationError, match=r"split\.txt: MSVD split file not found"):
        read_msvd(cfg, [])


def test_real_excerpts(formats_dir, cfg, tmp_path):
    """pandas-exported corpus rows (leading index column) and the published vidN mapping."""
    cfg.data.annotations = str(formats_dir / "MSVD_test.head.csv")
    write(tmp_path / "root/split.txt", "mv89psg6zh4_33_46 vid1301\n")
    touch_videos(tmp_path / "root/YouTubeClips", ["mv89psg6zh4_33_46.avi"])
    (tmp_path / "root/YouTubeClips/abc_1_5.avi").unlink()
    (tmp_path / "root/YouTubeClips/xyz_7_9.mp4").unlink()
    (clip,) = build_manifest(cfg)
    assert clip.id == "mv89psg6zh4_33_46" and clip.split == "test"
    assert len(clip.captions) == 24
    assert clip.captions[0] == "A bird in a sink keeps getting under the running water from a faucet."
    assert clip.captions[-1] == "A bird is taking a bath in a sink."
    mapping = read_split(formats_dir / "MSVD_youtube_mapping.head.txt")
    assert mapping["-4wsuPCjDBc_5_15"] == ("train", 1) and mapping["-_hbPLsZvvo_5_8"] == ("train", 25)


def test_youtube_mapping_is_the_default_split_file(formats_dir, cfg, tmp_path):
    """With data.split_file empty the shipped `youtube_mapping.txt` (CRLF, as in the real head) is used, before the
    older `msvd_split.txt`; neither there: the error names the usual file."""
    cfg.data.split_file = ""
    cfg.data.annotations = str(formats_dir / "MSVD_test.head.csv")
    head = (formats_dir / "MSVD_youtube_mapping.head.txt").read_bytes()
    assert b"\r\n" in head
    write(tmp_path / "root/msvd_split.txt", "mv89psg6zh4_33_46 train\n")
    (clip,) = read_msvd(cfg, [])
    assert clip.split == "train"
    # the mapping's layout (space, CRLF) with the excerpt's clip as a test video (the head's own clips are not in
    # the corpus excerpt, and a mapped clip without captions is an error)
    write(tmp_path / "root/youtube_mapping.txt", b"mv89psg6zh4_33_46 vid1400\r\n")
    (clip,) = read_msvd(cfg, [])
    assert clip.split == "test" and len(clip.captions) == 24
    (tmp_path / "root/youtube_mapping.txt").unlink()
    (tmp_path / "root/msvd_split.txt").unlink()
    with pytest.raises(AnnotationError, match=r"youtube_mapping\.txt: MSVD split file not found"):
        read_msvd(cfg, [])
