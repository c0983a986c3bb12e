"""The MAFW adapter: caption label file + official split sets, on written files and the real samples."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import MAFW_EMOTIONS
from pipeline.data.datasets.mafw import read_mafw
from pipeline.errors import AnnotationError
from pipeline.data.manifest import build_manifest
from tests.pipeline.data.datasets.conftest import touch_videos, write

SPLIT = "data/Train & Test Set/single/no_caption"
LABELS = (
    "00001.mp4\tanger\t\u4e00\u4e2a\u7537\u4eba\tA man shouts. The frown.\n"
    "00002.mp4\thappiness\t\tA woman smiles. The raised lip corners.\n"
    "00003.mp4\tsadness\t\tA man looks down. The drooping mouth corners.\n"
    "00004.mp4\tcontempt\t\tA woman sneers.\n"
)


def mafw_root(root: Path, labels: str = LABELS, train: str = "00001.mp4 anger\n00003.mp4 sadness\n",
              test: str = "00002.mp4 happiness\n") -> Path:
    write(root / "data/Labels/single_label.txt", labels)
    write(root / SPLIT / "set_1/train.txt", train)
    write(root / SPLIT / "set_1/test.txt", test)
    touch_videos(root / "data/clips", ["00001.mp4", "00002.mp4", "00003.mp4", "00004.mp4"])
    return root


@pytest.fixture
def cfg(tmp_path, make_cfg):
    mafw_root(tmp_path / "root")
    return make_cfg("mafw")  # the adapter's defaults are the MAFW release layout


def test_reads_the_release_layout(cfg, tmp_path):
    notes: list[str] = []
    clips = {c.id: c for c in read_mafw(cfg, notes)}
    assert sorted(clips) == ["00001", "00002", "00003"]  # 00004 is in neither split file
    assert clips["00001"].captions == ["A man shouts. The frown."]  # the English column, as written
    assert (clips["00001"].emotion, clips["00001"].emotion_index) == ("anger", 0)
    assert clips["00003"].emotion_index == MAFW_EMOTIONS.index("sadness")
    assert clips["00002"].split == "test" and clips["00003"].split == "train"
    assert clips["00002"].video == str(tmp_path / "root/data/clips/00002.mp4")
    assert any("1 clips of single_label.txt are in neither split file" in n for n in notes)


def test_other_split_set(cfg, tmp_path):
    write(tmp_path / "root" / SPLIT / "set_3/train.txt", "00004.mp4 contempt\n")
    write(tmp_path / "root" / SPLIT / "set_3/test.txt", "00001.mp4 anger\n")
    cfg.data.split_set = 3
    clips = {c.id: c.split for c in read_mafw(cfg, [])}
    assert clips == {"00004": "train", "00001": "test"}


@pytest.mark.parametrize("labels, line, problem", [
    (LABELS + "00005.mp4\tanger\tA man.\n", 5, "expected 4 TAB-separated columns"),
    (LABELS + "00005.mp4\tjoy\t\tA man laughs.\n", 5, "unknown emotion 'joy'"),
    (LABELS.replace("00003.mp4", "00001.mp4"), 3, "duplicate clip id '00001' (first at line 1)"),
    (LABELS.replace("A woman smiles. The raised lip corners.", " "), 2, "empty English caption"),
])
def test_malformed_label_file(tmp_path, make_cfg, labels, line, problem):
    mafw_root(tmp_path / "root", labels=labels)
    with pytest.raises(AnnotationError) as e:
        read_mafw(make_cfg("mafw"), [])
    assert str(e.value).startswith(f"{tmp_path / 'root/data/Labels/single_label.txt'}:{line}: ")
    assert problem in str(e.value)


def test_bad_encoding_in_label_file(tmp_path, make_cfg):
    mafw_root(tmp_path / "root")
    path = tmp_path / "root/data/Labels/single_label.txt"
    path.write_bytes(path.read_bytes().replace("\u4e00\u4e2a\u7537\u4eba".encode(), "\u4e00\u4e2a".encode("gbk")))
    with pytest.raises(AnnotationError, match=r"single_label\.txt:1: not valid UTF-8"):
        read_mafw(make_cfg("mafw"), [])


@pytest.mark.parametrize("train, test, which, line, problem", [
    ("00001.mp4 anger\n00009.mp4 anger\n", "00002.mp4 happiness\n", "train", 2, "clip '00009' is not in the label file"),
    ("00001.mp4 anger\n", "00002.mp4 happiness\n00002.mp4 happiness\n", "test", 2, "listed twice (first at"),
    ("00001.mp4 anger extra\n", "00002.mp4 happiness\n", "train", 1, "found 3 fields"),
    ("00001.mp4 rage\n", "00002.mp4 happiness\n", "train", 1, "unknown emotion 'rage'"),
])
def test_malformed_split_files(tmp_path, make_cfg, train, test, which, line, problem):
    mafw_root(tmp_path / "root", train=train, test=test)
    with pytest.raises(AnnotationError) as e:
        read_mafw(make_cfg("mafw"), [])
    assert str(e.value).startswith(f"{tmp_path / 'root' / SPLIT / 'set_1' / which}.txt:{line}: ")
    assert problem in str(e.value)


def test_clip_in_both_splits_follows_data_overlap(tmp_path, make_cfg):
    mafw_root(tmp_path / "root", test="00002.mp4 happiness\n00003.mp4 sadness\n")
    notes: list[str] = []
    clips = {c.id: c for c in read_mafw(make_cfg("mafw"), notes)}
    assert clips["00003"].split == "test" and clips["00001"].split == "train"
    split = tmp_path / "root" / SPLIT / "set_1"
    assert f"video 00003 is in both train ({split / 'train.txt'}:2) and test ({split / 'test.txt'}:2)" in notes[0]
    with pytest.raises(AnnotationError) as e:
        read_mafw(make_cfg("mafw", overlap="error"), [])
    assert str(e.value).startswith(f"{split / 'train.txt'}:2: video '00003' is in the train table")


def test_split_emotion_disagreeing_with_label_file_is_a_note(tmp_path, make_cfg):
    mafw_root(tmp_path / "root", train="00001.mp4 fear\n00003.mp4 sadness\n")
    notes: list[str] = []
    clips = {c.id: c for c in read_mafw(make_cfg("mafw"), notes)}
    assert clips["00001"].emotion == "anger"
    assert any(n.startswith("1 clips carry another emotion") for n in notes)


def test_missing_split_folder_names_expected_path(cfg, tmp_path):
    cfg.data.split_set = 4
    with pytest.raises(AnnotationError) as e:
        read_mafw(cfg, [])
    assert str(tmp_path / "root" / SPLIT / "set_4") in str(e.value) and "train.txt" in str(e.value)


def test_missing_split_file_in_existing_folder(cfg, tmp_path):
    (tmp_path / "root" / SPLIT / "set_1/test.txt").unlink()
    with pytest.raises(AnnotationError, match=r"set_1/test\.txt: MAFW test split file not found"):
        read_mafw(cfg, [])


def test_missing_label_file(cfg, tmp_path):
    (tmp_path / "root/data/Labels/single_label.txt").unlink()
    with pytest.raises(AnnotationError, match=r"single_label\.txt: MAFW label file not found"):
        read_mafw(cfg, [])


def test_real_samples(mafw_samples, tmp_path, make_cfg):
    """The three real clips, read in place through the label file the samples ship."""
    write(tmp_path / "split/set_1/train.txt", "00721.mp4 helplessness\n02358.mp4 anger\n")
    write(tmp_path / "split/set_1/test.txt", "02581.mp4 anger\n")
    cfg = make_cfg("mafw", videos=str(mafw_samples), annotations=str(mafw_samples / "single_label.txt"),
                   split_file=str(tmp_path / "split"), val_fraction=0.0)
    notes: list[str] = []
    clips = {c.id: c for c in build_manifest(cfg, notes)}  # also checks that the videos exist
    assert sorted(clips) == ["00721", "02358", "02581"]
    assert clips["00721"].emotion == "helplessness" and clips["00721"].emotion_index == 9
    assert clips["02358"].emotion_index == 0 and clips["02581"].split == "test"
    assert clips["00721"].captions == [
        "A man turns his head to look at someone, chews something, and sighs. The frown and the slight open mouth."]
    assert clips["02581"].video == str(mafw_samples / "02581.mp4")
    assert notes == []
