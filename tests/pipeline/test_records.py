"""pipeline.records: stage keys, atomic records, status, memoised file hashes."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from pipeline import records
from pipeline.records import (
    RECORD_NAME, DamagedRecordError, StageRecord, diff_configs, file_sha256, is_complete, read_record, short,
    stage_key, status_of, write_record,
)

BASE = dict(stage="train", version="3", config_slice={"lr": 1e-4, "layers": 2, "nested": {"a": 1, "b": [1, 2]}},
            parents={"extract": "e" * 64, "manifest": "m" * 64})


def _record(key: str = "k" * 64) -> StageRecord:
    return StageRecord(stage="train", key=key, version="3", config={"lr": 1e-4}, parents={"extract": "e"},
                       timings={"total": 1.5}, counts={"clips": 3})


# ---- keys ------------------------------------------------------------------------------------------

def test_key_is_sha256_hex_and_stable():
    key = stage_key(**BASE)
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == stage_key(**BASE)
    assert short(key) == key[:16]


@pytest.mark.parametrize("change", [
    {"stage": "extract"},
    {"version": "4"},
    {"config_slice": {**BASE["config_slice"], "lr": 2e-4}},
    {"config_slice": {**BASE["config_slice"], "layers": 3}},
    {"config_slice": {**BASE["config_slice"], "nested": {"a": 1, "b": [2, 1]}}},
    {"config_slice": {**BASE["config_slice"], "extra": None}},
    {"parents": {**BASE["parents"], "extract": "f" * 64}},
    {"parents": {"extract": "e" * 64}},
])
def test_key_changes_with_each_input(change):
    assert stage_key(**{**BASE, **change}) != stage_key(**BASE)


def test_key_ignores_dict_order():
    cfg = BASE["config_slice"]
    reordered = {"nested": {"b": [1, 2], "a": 1}, "layers": 2, "lr": 1e-4}
    assert list(reordered) != list(cfg)
    parents = dict(reversed(list(BASE["parents"].items())))
    assert stage_key("train", "3", reordered, parents) == stage_key(**BASE)


# ---- records ---------------------------------------------------------------------------------------

def test_write_then_read_record(tmp_path):
    path = write_record(tmp_path / "out", _record())
    assert path == tmp_path / "out" / RECORD_NAME
    rec = read_record(tmp_path / "out")
    assert rec["key"] == "k" * 64 and rec["counts"] == {"clips": 3} and rec["timings"] == {"total": 1.5}
    assert "python" in rec["libraries"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == [RECORD_NAME]  # no temp file left


def test_write_record_is_atomic_when_the_rename_fails(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()

    def crash(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(records.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_record(out, _record())
    assert list(out.iterdir()) == []  # neither a record nor a half-written temp file
    assert read_record(out) is None and status_of(out, "k" * 64) == "partial"


def test_write_record_replaces_an_old_record_whole(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_record(out, _record("a" * 64))
    monkeypatch.setattr(records.os, "replace", lambda s, d: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_record(out, _record("b" * 64))
    assert read_record(out)["key"] == "a" * 64  # the old one is intact, not a mix
    assert [p.name for p in out.iterdir()] == [RECORD_NAME]


def test_truncated_record_reads_as_damaged(tmp_path):
    path = write_record(tmp_path / "out", _record())
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(DamagedRecordError) as e:
        read_record(tmp_path / "out")
    assert str(path) in str(e.value) and "damaged" in str(e.value)
    assert status_of(tmp_path / "out", "k" * 64) == "damaged"
    assert not is_complete(tmp_path / "out", "k" * 64)


def test_record_without_required_fields_is_damaged(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / RECORD_NAME).write_text(json.dumps({"stage": "train", "key": "k"}))
    with pytest.raises(DamagedRecordError, match="lacks stage/key/config/parents"):
        read_record(tmp_path / "out")
    (tmp_path / "out" / RECORD_NAME).write_bytes(b"\xff\xfe{")
    assert status_of(tmp_path / "out", "k") == "damaged"


def test_status_states(tmp_path):
    out = tmp_path / "out"
    assert status_of(out, "k" * 64) == "missing"
    out.mkdir()
    (out / "store.zarr").mkdir()
    assert status_of(out, "k" * 64) == "partial"  # work without a record counts as unfinished
    write_record(out, _record())
    assert status_of(out, "k" * 64) == "fresh" and is_complete(out, "k" * 64)
    assert status_of(out, "x" * 64) == "stale" and not is_complete(out, "x" * 64)


# ---- file hashes -----------------------------------------------------------------------------------

def test_file_sha256_without_memo(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"weights" * 1000)
    assert file_sha256(f) == hashlib.sha256(b"weights" * 1000).hexdigest()


def test_file_sha256_memo_is_used_and_invalidated_on_change(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"first")
    memo = tmp_path / "memo"
    assert file_sha256(f, memo) == hashlib.sha256(b"first").hexdigest()
    entries = json.loads((memo / "hashes.json").read_text())
    assert list(entries.values()) == [hashlib.sha256(b"first").hexdigest()]
    # prove the memo is consulted: a planted value for the same (path, size, mtime) is returned
    ident = next(iter(entries))
    (memo / "hashes.json").write_text(json.dumps({ident: "planted"}))
    assert file_sha256(f, memo) == "planted"
    # same size, new content and mtime: the memo entry no longer matches, the file is hashed again
    f.write_bytes(b"secon")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert file_sha256(f, memo) == hashlib.sha256(b"secon").hexdigest()


def test_file_sha256_survives_a_corrupt_memo(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    (tmp_path / "memo").mkdir()
    (tmp_path / "memo" / "hashes.json").write_text("{trunc")
    assert file_sha256(f, tmp_path / "memo") == hashlib.sha256(b"x").hexdigest()
    assert json.loads((tmp_path / "memo" / "hashes.json").read_text())  # rewritten whole


def test_diff_configs_names_changed_fields():
    old = {"train": {"lr": 1, "seed": 2}, "model": {"layers": 2}}
    new = {"train": {"lr": 3, "seed": 2}, "model": {"layers": 2, "heads": 4}}
    assert diff_configs(old, new) == ["model.heads", "train.lr"]
    assert diff_configs(old, old) == []


def test_library_versions_name_pycocoevalcap_real_version():
    """pycocoevalcap has no __version__: the record reads the installed distribution's version, never '?'."""
    from importlib.metadata import version

    import pycocoevalcap  # noqa: F401  (imported, as scoring does, before a record is written)

    from pipeline.records import library_versions

    libs = library_versions()
    assert libs["pycocoevalcap"] == version("pycocoevalcap") != "?"
    assert "?" not in libs.values()
