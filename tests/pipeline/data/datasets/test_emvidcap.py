"""The EmVidCap adapter: the release's caption tables as shipped (L: TAB/LF, S: comma/CRLF), on written files
and the real excerpts, the release layout found under data.root, and the train/test overlap policy."""
from __future__ import annotations

import pytest

from pipeline.data.datasets.emvidcap import read_emvidcap
from pipeline.errors import AnnotationError
from pipeline.data.manifest import build_manifest
from tests.pipeline.data.datasets.conftest import touch_videos, write

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
    ("VideoID;EmCaptions\nvid1;x\n", "train.csv:1", "expected the header"),
    ("VideoID\tEmCaptions\nvid1\tx\textra\n", "train.csv:2", "expected 2 TAB-separated columns"),
    ("VideoID\tEmCaptions\nvid1 x\n", "train.csv:2", "separated by a TAB as in the header"),
    ("VideoID,EmCaptions\r\nvid1,x\r\nvid2\r\n", "train.csv:3", "separated by a comma as in the header"),
    ("VideoID\tEmCaptions\nvid1\tx\nvid1\t  \n", "train.csv:3", "empty or non-text caption for clip 'vid1'"),
    ("VideoID,EmCaptions\nvid1,\"a\" b\"\n", "train.csv:2", "cannot parse the quoted caption"),
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


def test_overlap_kept_in_test_with_a_warning_or_an_error(cfg, tmp_path):
    write(tmp_path / "root/train.csv", "VideoID\tEmCaptions\nvid1\tx\nvid3\ty\nvid3\tz\n")
    notes: list[str] = []
    clips = {c.id: c for c in read_emvidcap(cfg, notes)}
    assert clips["vid3"].split == "test" and clips["vid3"].captions == ["A boy is scared"]  # train rows dropped
    assert [n for n in notes if "vid3" in n] == [
        f"video vid3 is in both train ({tmp_path / 'root/train.csv'}:3) and test ({tmp_path / 'root/test.csv'}:2): "
        "kept in test, dropped from train (data.overlap=test; set data.overlap=error to stop instead)"]
    cfg.data.overlap = "error"
    with pytest.raises(AnnotationError) as e:
        read_emvidcap(cfg, [])
    assert str(e.value).startswith(f"{tmp_path / 'root/train.csv'}:3: video 'vid3' is in the train table")
    cfg.data.overlap = "train"
    with pytest.raises(AnnotationError, match="data.overlap='train'; expected one of test, error"):
        read_emvidcap(cfg, [])


def _release(root, formats_dir, variant: str, test_name: str, bom: bool = False) -> None:
    """The release layout: <root>/<variant>/EmVideo_{trainval,test}_captions.csv, bytes as shipped."""
    src = (formats_dir / test_name).read_bytes()
    head = src.split(b"\n", 1)[0] + b"\n"
    crlf = b"\r\n" if b"\r\n" in src else b"\n"
    sep = b"," if variant == "EmVidCap-S" else b"\t"
    train = head + sep.join([b"vid9001", b"a girl smiles happily"]) + crlf
    write(root / variant / "EmVideo_trainval_captions.csv", (b"\xef\xbb\xbf" if bom else b"") + train)
    write(root / variant / "EmVideo_test_captions.csv", src)


@pytest.mark.parametrize("variant, name, bom", [
    ("EmVidCap-L", "EmVidCap-L_EmVideo_test_captions.head.csv", False),
    ("EmVidCap-S", "EmVidCap-S_EmVideo_test_captions.head.csv", False),
    ("EmVidCap-S", "EmVidCap-S_EmVideo_test_captions.head.csv", True),
])
def test_release_layout_found_under_root(formats_dir, make_cfg, tmp_path, variant, name, bom):
    """Unpacked as released, no path set: the adapter finds the tables; S (comma, CRLF) reads like L (TAB, LF)."""
    root = tmp_path / "root"
    _release(root, formats_dir, variant, name, bom)
    cfg = make_cfg("emvidcap", videos="videos")
    rows = [r for r in (formats_dir / name).read_text(encoding="utf-8").splitlines()[1:] if r.strip()]
    sep = "\t" if "\t" in rows[0] else ","
    want: dict[str, list[str]] = {}
    for r in rows:
        vid, cap = r.split(sep, 1)
        want.setdefault(vid, []).append(cap.strip())
    clips = {c.id: c for c in read_emvidcap(cfg, [])}
    assert {k: c.captions for k, c in clips.items() if c.split == "test"} == want
    assert clips["vid9001"].split == "train" and clips["vid9001"].captions == ["a girl smiles happily"]
    assert not any("\r" in cap for c in clips.values() for cap in c.captions)
    if variant == "EmVidCap-S":
        assert clips["vid1301"].captions[1] == "a guy is playing with a puppy happily"


def test_both_variants_unpacked_asks_which(formats_dir, make_cfg, tmp_path):
    root = tmp_path / "root"
    _release(root, formats_dir, "EmVidCap-L", "EmVidCap-L_EmVideo_test_captions.head.csv")
    _release(root, formats_dir, "EmVidCap-S", "EmVidCap-S_EmVideo_test_captions.head.csv")
    with pytest.raises(AnnotationError, match="several EmVidCap caption tables.*data.annotations=EmVidCap-S/"):
        read_emvidcap(make_cfg("emvidcap"), [])
    with pytest.raises(AnnotationError, match="EmVidCap caption table not found"):
        read_emvidcap(make_cfg("emvidcap", root=str(tmp_path / "empty")), [])


def test_old_flat_names_are_aliases(make_cfg, tmp_path):
    write(tmp_path / "root/EmVidCap-L_EmVideo_train_captions.csv", TRAIN)
    write(tmp_path / "root/EmVidCap-L_EmVideo_test_captions.csv", "VideoID\tEmCaptions\nvid3\tA boy is scared\n")
    clips = {c.id: c.split for c in read_emvidcap(make_cfg("emvidcap"), [])}
    assert clips == {"vid1": "train", "vid2": "train", "vid3": "test"}


def test_real_excerpt(formats_dir, cfg, tmp_path):
    """The published test table excerpt: 19 captions of vid10005, 5 of vid10009 (a caption with a comma)."""
    cfg.data.test_annotations = str(formats_dir / "EmVidCap-L_EmVideo_test_captions.head.csv")
    touch_videos(tmp_path / "root/videos", ["vid10005.mp4", "vid10009.mp4"])
    clips = {c.id: c for c in build_manifest(cfg)}
    assert clips["vid10005"].split == "test" and len(clips["vid10005"].captions) == 19
    assert len(clips["vid10009"].captions) == 5
    assert clips["vid10005"].captions[0] == "A man heard the sound of weeding and became angry"
    assert "One person is using electric saw  ,  noise makes another person intolerable" in clips["vid10005"].captions
    assert "vid3" not in clips
