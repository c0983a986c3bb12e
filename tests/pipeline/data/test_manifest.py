"""pipeline.data.manifest: the manifest file, the val split, video checks, and ensure_manifest's caching."""
from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import AnnotationError, MissingVideosError, UserError
from pipeline.data.manifest import (
    Clip, build_manifest, carve_val, content_hash, ensure_manifest, manifest_text, read_manifest, val_rank, write_manifest,
)
from tests.pipeline.data.datasets.conftest import touch_videos, write


def _clip(i: int, split: str = "train") -> Clip:
    return Clip(id=f"c{i:03d}", video=f"/v/c{i:03d}.mp4", captions=[f"caption {i}"], emotion="anger",
                emotion_index=0, split=split)


def _demo_rows(n: int, test_every: int = 4) -> str:
    return "".join(json.dumps({
        "id": f"clip{i:02d}", "video": f"videos/clip{i:02d}.mp4", "captions": [f"a person does thing {i}."],
        "emotion": "happiness" if i % 2 else "sadness", "split": "test" if i % test_every == 0 else "train",
    }) + "\n" for i in range(n))


@pytest.fixture
def demo_cfg(tmp_path):
    """A demo config whose dataset (10 clips, videos as dummy files) already exists."""
    root = tmp_path / "data"
    write(root / "annotations.jsonl", _demo_rows(10))
    touch_videos(root / "videos", [f"clip{i:02d}.mp4" for i in range(10)])
    return load_config("demo", [f"data.root={root}", f"data.cache_root={tmp_path / 'cache'}"])


# ---- the file ---------------------------------------------------------------------------------

def test_write_read_roundtrip_sorted_and_deterministic(tmp_path):
    clips = [_clip(3), _clip(1, "test"), Clip("z", "/v/z.mp4", ["\u4e00 caf\u00e9"], None, -1, "val")]
    digest = write_manifest(clips, tmp_path / "m.jsonl")
    data = (tmp_path / "m.jsonl").read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    assert data.isascii()  # the same bytes whatever the locale
    assert [json.loads(line)["id"] for line in data.splitlines()] == ["c001", "c003", "z"]
    assert read_manifest(tmp_path / "m.jsonl") == sorted(clips, key=lambda c: c.id)
    assert manifest_text(list(reversed(clips))) == data.decode()


@pytest.mark.parametrize("bad, problem", [
    ('{"id": "c9", "video": "/v', "damaged manifest line"),
    ('{"id": "c9"}', "expected keys"),
    ('{"captions": [], "emotion": null, "emotion_index": -1, "id": "c9", "split": "train", "video": "/v"}', "wrong type"),
    ('{"captions": ["x"], "emotion": null, "emotion_index": -1, "id": "c9", "split": "dev", "video": "/v"}', "wrong type"),
    ('{"captions": ["x"], "emotion": null, "emotion_index": -1, "id": "c001", "split": "train", "video": "/v"}', "twice"),
])
def test_read_manifest_damaged_line_names_file_and_line(tmp_path, bad, problem):
    path = tmp_path / "m.jsonl"
    write_manifest([_clip(1), _clip(2)], path)
    path.write_text(path.read_text() + bad + "\n")
    with pytest.raises(AnnotationError) as e:
        read_manifest(path)
    assert str(e.value).startswith(f"{path}:3: ") and problem in str(e.value)


def test_read_manifest_missing_file_says_how_to_build(tmp_path):
    with pytest.raises(AnnotationError, match="ecpa manifest"):
        read_manifest(tmp_path / "nope.jsonl")


# ---- val split ------------------------------------------------------------------------------------

def test_carve_val_is_hash_based_and_order_independent():
    clips = [_clip(i) for i in range(40)] + [_clip(100 + i, "test") for i in range(5)]
    shuffled = [Clip(**c.to_dict()) for c in reversed(clips)]
    assert carve_val(clips, 0.1) == 4 and carve_val(shuffled, 0.1) == 4
    val = sorted(c.id for c in clips if c.split == "val")
    assert val == sorted(c.id for c in shuffled if c.split == "val")
    # exactly the 4 training ids whose sha256 is smallest; test clips are never touched
    expected = sorted(sorted((f"c{i:03d}" for i in range(40)), key=lambda s: hashlib.sha256(s.encode()).hexdigest())[:4])
    assert val == expected and val_rank("c001") == hashlib.sha256(b"c001").hexdigest()
    assert all(c.split == "test" for c in clips if c.id >= "c100")


def test_carve_val_edges():
    assert carve_val([_clip(1)], 0.5) == 0  # a single training clip stays in train
    two = [_clip(1), _clip(2)]
    assert carve_val(two, 0.01) == 1 and sorted(c.split for c in two) == ["train", "val"]
    three = [_clip(i) for i in range(3)]
    assert carve_val(three, 0.0) == 0 and carve_val(three, 0.99) == 2  # never all of train
    with pytest.raises(UserError, match="val_fraction"):
        carve_val(three, 1.0)


# ---- build_manifest ----------------------------------------------------------------------------

def test_build_manifest_demo_layout(demo_cfg, tmp_path):
    clips = build_manifest(demo_cfg)
    assert [c.id for c in clips] == [f"clip{i:02d}" for i in range(10)]
    by_id = {c.id: c for c in clips}
    assert by_id["clip00"].split == "test" and by_id["clip04"].split == "test" and by_id["clip08"].split == "test"
    assert sum(c.split == "val" for c in clips) == 1  # round(0.1 * 7 train clips)
    assert by_id["clip01"].video == str(tmp_path / "data" / "videos" / "clip01.mp4")
    emotions = load_config("demo").data.emotions
    assert by_id["clip01"].emotion_index == emotions.index("happiness")
    assert by_id["clip02"].emotion_index == emotions.index("sadness")


def test_build_manifest_keeps_a_given_val_split(demo_cfg, tmp_path):
    rows = _demo_rows(6).replace('"split": "train"', '"split": "val"', 1)
    write(tmp_path / "data" / "annotations.jsonl", rows)
    clips = build_manifest(demo_cfg)
    assert [c.id for c in clips if c.split == "val"] == ["clip01"]


def test_missing_videos_reported_together(demo_cfg, tmp_path):
    for i in (2, 5, 7):
        (tmp_path / "data" / "videos" / f"clip{i:02d}.mp4").unlink()
    with pytest.raises(MissingVideosError) as e:
        build_manifest(demo_cfg)
    msg = str(e.value)
    assert msg.startswith("3 of 10 videos") and all(f"clip{i:02d}.mp4" in msg for i in (2, 5, 7))
    demo_cfg.data.check_videos = False
    notes: list[str] = []
    assert len(build_manifest(demo_cfg, notes)) == 10
    assert any("3 of 10 videos are missing" in n for n in notes)


def test_directory_named_like_a_video_is_not_called_missing(demo_cfg, tmp_path):
    videos = tmp_path / "data" / "videos"
    (videos / "clip03.mp4").unlink()
    (videos / "clip03.mp4").mkdir()
    (videos / "clip06.mp4").unlink()
    with pytest.raises(UserError) as e:
        build_manifest(demo_cfg)
    msg = str(e.value)
    head, _, rest = msg.partition(";")
    assert head.startswith("1 of 10 videos") and "directories, not video files" in head and "clip03.mp4" in head
    assert "missing" not in head and "clip06.mp4" not in head
    assert "1 of 10 videos" in rest and "missing" in rest and "clip06.mp4" in rest and "clip03.mp4" not in rest
    demo_cfg.data.check_videos = False
    notes: list[str] = []
    assert len(build_manifest(demo_cfg, notes)) == 10
    assert any("1 of 10 videos are directories" in n and "clip03.mp4" in n for n in notes), notes
    assert any("1 of 10 videos are missing" in n for n in notes), notes


def test_videos_without_annotation_are_a_note_not_an_error(demo_cfg, tmp_path):
    touch_videos(tmp_path / "data" / "videos", ["stray.mp4", "readme.txt"])
    notes: list[str] = []
    assert len(build_manifest(demo_cfg, notes)) == 10
    assert any(n.startswith("1 videos under") and "stray.mp4" in n for n in notes)


def test_empty_annotation_file(demo_cfg, tmp_path):
    write(tmp_path / "data" / "annotations.jsonl", "\n")
    with pytest.raises(AnnotationError) as e:
        build_manifest(demo_cfg)
    assert str(e.value) == f"{tmp_path / 'data' / 'annotations.jsonl'}:1: annotation file is empty"


def test_unknown_format_and_no_clips(demo_cfg, tmp_path):
    demo_cfg.data.format = "kinetics"
    with pytest.raises(UserError, match="unknown data.format 'kinetics'"):
        build_manifest(demo_cfg)
    demo_cfg.data.format = "generic"
    demo_cfg.data.annotations = "only_header.csv"
    write(tmp_path / "data" / "only_header.csv", "id,video,caption,split\n")
    with pytest.raises(AnnotationError, match=r"only_header\.csv: no clips"):
        build_manifest(demo_cfg)


# ---- ensure_manifest ------------------------------------------------------------------------------

def test_ensure_manifest_writes_once_and_returns_content_hash(demo_cfg):
    digest = ensure_manifest(demo_cfg)
    path = demo_cfg.manifest_path
    assert digest == content_hash(read_manifest(path), Path(demo_cfg.data.root))
    mtime = path.stat().st_mtime_ns
    cfg_mtime = (demo_cfg.cache_dir / "config.yaml").stat().st_mtime_ns
    assert ensure_manifest(demo_cfg) == digest
    assert path.stat().st_mtime_ns == mtime and (demo_cfg.cache_dir / "config.yaml").stat().st_mtime_ns == cfg_mtime
    # a changed caption changes the manifest and its hash
    ann = Path(demo_cfg.data.root) / "annotations.jsonl"
    ann.write_text(ann.read_text().replace("thing 3.", "thing three."))
    assert ensure_manifest(demo_cfg) != digest
    assert "thing three." in path.read_text()


def test_content_hash_survives_a_moved_dataset_but_not_reencoded_videos(demo_cfg, tmp_path):
    import shutil

    digest = ensure_manifest(demo_cfg)
    moved = tmp_path / "moved"
    shutil.copytree(demo_cfg.data.root, moved)
    demo_cfg.data.root = str(moved)
    assert ensure_manifest(demo_cfg) == digest  # same clips, same bytes, other place: same key
    video = next((moved / "videos").glob("*.mp4"))
    video.write_bytes(video.read_bytes() + b"re-encoded")
    assert ensure_manifest(demo_cfg) != digest  # same name, other file: never the stale key


def test_ensure_manifest_writes_nothing_for_bad_annotations(demo_cfg):
    ann = Path(demo_cfg.data.root) / "annotations.jsonl"
    ann.write_text(ann.read_text() + '{"id": "x", "video": "x.mp4", "captions": ["x"], "split": "train", "emotion": "joy"}\n')
    with pytest.raises(AnnotationError, match=r"annotations\.jsonl:11: unknown emotion 'joy'"):
        ensure_manifest(demo_cfg)
    assert not demo_cfg.cache_dir.exists()


def test_ensure_manifest_keeps_old_manifest_when_annotations_break(demo_cfg):
    ensure_manifest(demo_cfg)
    before = demo_cfg.manifest_path.read_bytes()
    ann = Path(demo_cfg.data.root) / "annotations.jsonl"
    ann.write_text(ann.read_text() + "{broken\n")
    with pytest.raises(AnnotationError, match=":11: not valid JSON"):
        ensure_manifest(demo_cfg)
    assert demo_cfg.manifest_path.read_bytes() == before


def test_ensure_manifest_generates_demo_data_when_absent(tmp_path, monkeypatch):
    calls = []

    def fake_generate(root: Path, n_clips: int, seed: int, video_size: int | None = None) -> Path:
        calls.append((Path(root), n_clips, seed))
        touch_videos(Path(root) / "videos", [f"clip{i:02d}.mp4" for i in range(n_clips)])
        return write(Path(root) / "annotations.jsonl", _demo_rows(n_clips))

    monkeypatch.setitem(sys.modules, "pipeline.data.demo",  # the version keys the demo's extractor fit
                        types.SimpleNamespace(generate=fake_generate, GENERATOR_VERSION="fake"))
    cfg = load_config("demo", [f"data.root={tmp_path / 'd'}", f"data.cache_root={tmp_path / 'c'}",
                               "data.demo_clips=8", "data.demo_seed=5"])
    ensure_manifest(cfg)
    assert calls == [(tmp_path / "d", 8, 5)]
    assert len(read_manifest(cfg.manifest_path)) == 8
    ensure_manifest(cfg)
    assert len(calls) == 1  # present now: not generated again


def test_saved_config_lets_cache_find_its_preset_without_other_overrides(demo_cfg, tmp_path):
    from stages._common import resolve_config

    demo_cfg.data.val_fraction = 0.25
    demo_cfg.train.lr = 0.123  # a one-off override of another section must not stick to the cache
    ensure_manifest(demo_cfg)
    cfg = resolve_config(None, None, demo_cfg.cache_dir)
    assert cfg.data.root == demo_cfg.data.root and cfg.data.val_fraction == 0.25
    assert cfg.train.lr == load_config("demo").train.lr and cfg.model.layers == load_config("demo").model.layers
    assert cfg.preset == "demo"
    assert cfg.manifest_path == demo_cfg.manifest_path
