"""The shared readers of pipeline.data.datasets: line numbers, encodings, empty and missing files."""
from __future__ import annotations

import pytest

from pipeline.data.datasets import ClipBuilder, data_path, delimited_rows, emotion_index, find_video, lines
from pipeline.errors import AnnotationError
from tests.pipeline.data.datasets.conftest import write


def test_lines_numbers_lines_from_one_and_strips_bom(tmp_path):
    p = write(tmp_path / "a.txt", "\ufefffirst\r\nsecond\n\nfourth\n")
    assert list(lines(p)) == [(1, "first"), (2, "second"), (3, ""), (4, "fourth")]


def test_bad_utf8_names_file_and_line(tmp_path):
    p = write(tmp_path / "labels.txt", "ok line\nfine too\nbad \xe9 latin-1\n".encode("latin-1"))
    with pytest.raises(AnnotationError) as e:
        list(lines(p))
    assert e.value.line == 3
    assert str(e.value).startswith(f"{p}:3:") and "UTF-8" in str(e.value)


def test_empty_and_missing_files(tmp_path):
    p = write(tmp_path / "empty.csv", "\n  \n")
    with pytest.raises(AnnotationError, match=r"empty\.csv:1: .*empty"):
        list(lines(p))
    with pytest.raises(AnnotationError, match=r"nothere\.txt: .*not found"):
        list(lines(tmp_path / "nothere.txt"))


def test_quoted_csv_rows_keep_commas_and_report_start_line(tmp_path):
    p = write(tmp_path / "t.csv", 'a,b\n1,"x, y"\n\n2,"multi\nline"\n3,z\n')
    rows = list(delimited_rows(p, ","))
    assert rows == [(1, ["a", "b"]), (2, ["1", "x, y"]), (4, ["2", "multi\nline"]), (6, ["3", "z"])]


def test_unquoted_tab_rows_keep_stray_quotes(tmp_path):
    p = write(tmp_path / "t.txt", 'a\t"he said\n')
    assert list(delimited_rows(p, "\t", quoted=False)) == [(1, ["a", '"he said'])]


def test_emotion_index_case_insensitive_and_unknown(tmp_path):
    emotions = ["anger", "happiness"]
    assert emotion_index(emotions, " Happiness ", tmp_path, 1) == ("happiness", 1)
    assert emotion_index(emotions, None, tmp_path, 1) == (None, -1)
    assert emotion_index(emotions, "", tmp_path, 1) == (None, -1)
    with pytest.raises(AnnotationError, match=r":7: unknown emotion 'joy'.*anger, happiness"):
        emotion_index(emotions, "joy", tmp_path / "f", 7)


def test_clip_builder_merges_and_rejects_conflicts(tmp_path):
    f = tmp_path / "ann.csv"
    b = ClipBuilder(["anger"])
    b.add("c1", video="/v/c1.mp4", captions=["one"], split="train", emotion="anger", path=f, line=2)
    b.add("c1", video="/v/c1.mp4", captions=["two"], split="train", emotion="anger", path=f, line=3)
    (clip,) = b.clips()
    assert clip.captions == ["one", "two"] and clip.emotion_index == 0
    with pytest.raises(AnnotationError, match=r"ann\.csv:4: clip 'c1' has split 'test' here but 'train' at .*ann\.csv:2"):
        b.add("c1", video="/v/c1.mp4", captions=["x"], split="test", emotion="anger", path=f, line=4)
    with pytest.raises(AnnotationError, match=r"ann\.csv:5: duplicate clip id 'c1' \(first at .*ann\.csv:2\)"):
        b.add("c1", video="/v/c1.mp4", captions=["x"], split="train", emotion="anger", path=f, line=5, unique=True)
    with pytest.raises(AnnotationError, match=r"ann\.csv:6: empty or non-text caption for clip 'c2'"):
        b.add("c2", video="/v/c2.mp4", captions=["  "], split="train", path=f, line=6)
    with pytest.raises(AnnotationError, match=r"ann\.csv:7: unknown split 'dev2'"):
        b.add("c3", video="/v/c3.mp4", captions=["x"], split="dev2", path=f, line=7)


def test_data_path_and_find_video(tmp_path, make_cfg):
    cfg = make_cfg("generic")
    assert data_path(cfg, "", "videos") == tmp_path / "root" / "videos"
    assert data_path(cfg, "/abs/x", "v").as_posix() == "/abs/x"
    write(tmp_path / "v" / "a.webm", "x")
    assert find_video(tmp_path / "v", "a", (".mp4", ".webm")) == tmp_path / "v" / "a.webm"
    assert find_video(tmp_path / "v", "b", (".mp4", ".webm")) == tmp_path / "v" / "b.mp4"
