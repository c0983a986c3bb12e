"""Issue 8.3: bad annotation files, through the real CLI (`ecpa manifest`).

Each case starts from a small valid dataset of one adapter's layout (checked to pass first), breaks one
thing, and runs `ecpa manifest`: exit status 2, one message naming the file (and the line where the
file has one) and the problem, no traceback, and nothing written under the cache root (no manifest,
no config, no features).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from tests.faults._harness import Row, report
from tests.pipeline.data.datasets.conftest import touch_videos, write  # the adapters' test helpers

TAB = "\t"


# ---- one small valid dataset per layout ---------------------------------------------------------

MAFW_LABELS = "data/Labels/single_label.txt"
MAFW_SPLIT = "data/Train & Test Set/single/no_caption/set_1"


def mafw(root: Path) -> list[str]:
    write(root / MAFW_LABELS, "".join(f"{i:05d}.mp4{TAB}{e}{TAB}{TAB}a person looks {e}.\n"
                                       for i, e in ((1, "anger"), (2, "happiness"), (3, "sadness"), (4, "fear"))))
    write(root / MAFW_SPLIT / "train.txt", "00001.mp4 anger\n00002.mp4 happiness\n00003.mp4 sadness\n")
    write(root / MAFW_SPLIT / "test.txt", "00004.mp4 fear\n")
    touch_videos(root / "data/clips", [f"{i:05d}.mp4" for i in range(1, 5)])
    return ["data.format=mafw", "data.videos=data/clips", f"data.annotations={MAFW_LABELS}",
            "data.split_file=data/Train & Test Set/single/no_caption", "data.split_set=1"]


def generic(root: Path) -> list[str]:
    rows = [{"id": f"c{i}", "video": f"videos/c{i}.mp4", "captions": [f"a man smiles {i}."], "emotion": "happiness",
             "split": "train" if i < 3 else "test"} for i in range(4)]
    write(root / "annotations.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    touch_videos(root / "videos", [f"c{i}.mp4" for i in range(4)])
    return ["data.format=generic"]


def generic_csv(root: Path) -> list[str]:
    write(root / "clips.csv", "id,video,caption,emotion,split\n" + "".join(
        f"c{i},videos/c{i}.mp4,a woman frowns {i}.,sadness,{'train' if i < 3 else 'test'}\n" for i in range(4)))
    touch_videos(root / "videos", [f"c{i}.mp4" for i in range(4)])
    return ["data.format=generic", "data.annotations=clips.csv"]


def emvidcap(root: Path) -> list[str]:
    write(root / "train.csv", f"VideoID{TAB}EmCaptions\n" + "".join(
        f"vid{i}{TAB}a man became angry {i}\n" for i in range(3)))
    touch_videos(root / "videos", [f"vid{i}.mp4" for i in range(3)])
    return ["data.format=emvidcap", "data.annotations=train.csv"]


def msvd(root: Path) -> list[str]:
    header = "VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description\n"
    write(root / "corpus.csv", header + "".join(
        f"v{i},1,5,{i},clean,10,English,\"a dog runs, {i}\"\n" for i in range(3)))
    write(root / "split.txt", "v0_1_5 train\nv1_1_5 train\nv2_1_5 test\n")
    touch_videos(root / "YouTubeClips", [f"v{i}_1_5.avi" for i in range(3)])
    return ["data.format=msvd", "data.annotations=corpus.csv", "data.split_file=split.txt"]


def msrvtt(root: Path) -> list[str]:
    info = {"videos": [{"video_id": f"video{i}", "split": "train" if i < 2 else "validate"} for i in range(3)],
            "sentences": [{"video_id": f"video{i}", "caption": f"a cat sits {i}", "sen_id": i} for i in range(3)]}
    write(root / "info.json", json.dumps(info, indent=1))
    touch_videos(root / "videos", [f"video{i}.mp4" for i in range(3)])
    return ["data.format=msrvtt", "data.annotations=info.json"]


LAYOUTS = {"mafw": mafw, "generic": generic, "generic_csv": generic_csv, "emvidcap": emvidcap, "msvd": msvd,
           "msrvtt": msrvtt}


# ---- the breakages ---------------------------------------------------------------------------------

def _edit_line(path: Path, no: int, fn: Callable[[str], str]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[no - 1] = fn(lines[no - 1])
    path.write_text("".join(lines), encoding="utf-8")


@dataclass
class Case:
    name: str
    layout: str
    breaks: Callable[[Path], None]
    file: str
    """The file the message must name (relative to the dataset root)."""
    line: int | None
    """The line it must name (None: a file-level problem)."""
    words: tuple[str, ...]
    """Words the message must contain (lower case)."""


def _mafw_swap_id(root: Path) -> None:
    _edit_line(root / MAFW_LABELS, 3, lambda t: t.replace("00003", "00001"))


def _generic_dup(root: Path) -> None:
    _edit_line(root / "annotations.jsonl", 3, lambda t: t.replace('"c2"', '"c0"'))


def _latin1(root: Path) -> None:
    p = root / "annotations.jsonl"
    data = p.read_bytes().splitlines(keepends=True)
    data[1] = data[1].replace(b"smiles", "sourit \u00e0 l'\u00e9cran".encode("latin-1"))
    p.write_bytes(b"".join(data))


def _json_syntax(root: Path) -> None:
    p = root / "info.json"
    text = p.read_text()
    p.write_text(text.replace('"split": "train"\n  },', '"split": "train"\n  }', 1))


def _ids_without_videos(root: Path) -> None:
    (root / "videos" / "c1.mp4").unlink()
    (root / "videos" / "c3.mp4").unlink()


def _rm_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


CASES = [
    Case("wrong column count (MAFW TAB file)", "mafw",
         lambda r: _edit_line(r / MAFW_LABELS, 2, lambda t: t.replace(TAB, " ", 1)),
         MAFW_LABELS, 2, ("4", "columns", "found 3")),
    Case("wrong column count (CSV)", "generic_csv",
         lambda r: _edit_line(r / "clips.csv", 3, lambda t: t.rstrip("\n") + ",extra\n"),
         "clips.csv", 3, ("columns",)),
    Case("unknown emotion", "mafw",
         lambda r: _edit_line(r / MAFW_LABELS, 3, lambda t: t.replace("sadness", "melancholy")),
         MAFW_LABELS, 3, ("unknown emotion", "melancholy")),
    Case("duplicate clip id (MAFW)", "mafw", _mafw_swap_id, MAFW_LABELS, 3, ("duplicate", "00001")),
    Case("duplicate clip id (JSONL)", "generic", _generic_dup, "annotations.jsonl", 3, ("duplicate", "c0")),
    Case("empty caption", "mafw",
         lambda r: _edit_line(r / MAFW_LABELS, 2, lambda t: t.rsplit(TAB, 1)[0] + TAB + "\n"),
         MAFW_LABELS, 2, ("empty", "caption")),
    Case("empty caption (EmVidCap)", "emvidcap",
         lambda r: _edit_line(r / "train.csv", 3, lambda t: t.split(TAB)[0] + TAB + "  \n"),
         "train.csv", 3, ("empty", "caption")),
    Case("bad text encoding", "generic", _latin1, "annotations.jsonl", 2, ("utf-8",)),
    Case("missing split folder", "mafw", lambda r: _rm_tree(r / MAFW_SPLIT), MAFW_SPLIT, None,
         ("split", "not found")),
    Case("missing split file (MSVD)", "msvd", lambda r: (r / "split.txt").unlink(), "split.txt", None,
         ("not found",)),
    Case("split names an unknown clip", "mafw",
         lambda r: write(r / MAFW_SPLIT / "test.txt", "00004.mp4 fear\n00009.mp4 fear\n"),
         f"{MAFW_SPLIT}/test.txt", 2, ("00009", "not in the label file")),
    Case("caption of a clip the split lacks (MSVD)", "msvd",
         lambda r: write(r / "split.txt", "v0_1_5 train\nv1_1_5 train\nv7_1_5 test\n"),
         "split.txt", 3, ("v7_1_5", "no english caption")),
    Case("ids without videos", "generic", _ids_without_videos, "videos", None, ("2 of 4", "missing", "c1.mp4")),
    # the comma is missing at the end of line 6; the parser stops at line 7, where it expected one
    Case("JSON syntax error", "msrvtt", _json_syntax, "info.json", 7, ("not valid json", "delimiter")),
    Case("JSONL syntax error", "generic",
         lambda r: _edit_line(r / "annotations.jsonl", 4, lambda t: t.replace('"split"', "'split'")),
         "annotations.jsonl", 4, ("not valid json",)),
    Case("empty file", "generic", lambda r: write(r / "annotations.jsonl", "\n  \n"), "annotations.jsonl", 1,
         ("empty",)),
    Case("wrong header (EmVidCap)", "emvidcap",
         lambda r: _edit_line(r / "train.csv", 1, lambda t: t.replace("EmCaptions", "Caption")),
         "train.csv", 1, ("header",)),
    Case("annotation file missing", "generic", lambda r: (r / "annotations.jsonl").unlink(), "annotations.jsonl",
         None, ("not found",)),
]


def run_manifest(root: Path, cache: Path, sets: list[str]):
    from stages.cli import app

    args = ["manifest", "--preset", "demo", "--set", f"data.root={root}", "--set", f"data.cache_root={cache}"]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(app, args, env={"COLUMNS": "400"})


def written(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_valid_layout_passes(tmp_path, layout):
    """The starting points are valid, so each failure below is the breakage's doing."""
    root, cache = tmp_path / "root", tmp_path / "cache"
    sets = LAYOUTS[layout](root)
    res = run_manifest(root, cache, sets)
    assert res.exit_code == 0, res.output
    assert (cache / "demo" / "manifest.jsonl").is_file()


_results: dict[str, bool] = {}


@pytest.fixture(scope="module", autouse=True)
def _summary_row():
    yield
    if _results:
        report(Row("bad annotation files (ecpa manifest)", len(_results), len(_results), 0, 0, 0,
                   all(_results.values()), ", ".join(n for n, v in _results.items() if not v) or
                   "exit 2, file:line named, no traceback, nothing written"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_annotation_stops_cleanly(tmp_path, case):
    root, cache = tmp_path / "root", tmp_path / "cache"
    sets = LAYOUTS[case.layout](root)
    case.breaks(root)
    res = run_manifest(root, cache, sets)
    out = " ".join(res.output.split())  # undo rich's line wrapping
    ok = False
    try:
        assert res.exit_code == 2, f"exit {res.exit_code}, expected 2:\n{res.output}\n{res.exception!r}"
        assert "Traceback" not in res.output, res.output
        where = str(root / case.file) + (f":{case.line}" if case.line is not None else "")
        assert where in out, f"the message does not name {where}:\n{res.output}"
        for w in case.words:
            assert w in out.lower(), f"the message lacks {w!r}:\n{res.output}"
        assert sum(line.startswith("error:") for line in res.output.splitlines()) == 1, res.output
        assert written(cache) == [], f"files written despite the error: {written(cache)}"
        ok = True
    finally:
        _results[case.name] = ok


def test_videos_without_ids_are_left_out_with_a_warning(tmp_path, caplog):
    """Videos on disk that no annotation names are not an error (datasets ship more videos than they
    caption): they stay out of the manifest and the warning names how many and one of them."""
    root, cache = tmp_path / "root", tmp_path / "cache"
    sets = generic(root)
    touch_videos(root / "videos", ["stray.mp4"])
    with caplog.at_level("WARNING", logger="pipeline.data.manifest"):
        res = run_manifest(root, cache, sets)
    assert res.exit_code == 0, res.output
    manifest = (cache / "demo" / "manifest.jsonl").read_text()
    assert "stray" not in manifest and manifest.count("\n") == 4
    # `ecpa manifest` prints the adapters' warnings itself (library callers get them logged)
    out = " ".join(res.output.split())
    assert "warning: 1 videos" in out and "stray.mp4" in out, res.output
