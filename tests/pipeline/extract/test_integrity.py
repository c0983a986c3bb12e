"""pipeline.extract.integrity: which done clips of a store can no longer be trusted (cheap and full checks), the
repair's verify_store, and pipeline.extract.store writing every chunk (so a missing chunk file is always damage)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import CacheMismatchError
from pipeline.extract.integrity import check_store, require_intact, verify_store
from pipeline.extract.store import open_store
from tests.pipeline._random_store import TINY_SHAPES, random_store


def _chunk(store: Path, array: str, row: int, ndim: int) -> Path:
    return store / array / "/".join(["c", str(row), *["0"] * (ndim - 1)])


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "s.zarr"
    random_store(path, n=6)
    return path


def test_intact_store_has_no_damage(store):
    g = open_store(store)
    assert check_store(g, store) == {}
    assert check_store(g, store, full=True) == {}


def test_cheap_check_finds_missing_chunks_and_unreadable_flags_only_of_done_rows(store):
    g = open_store(store, mode="r+")
    _chunk(store, "au/feats", 2, 4).unlink()
    _chunk(store, "done", 1, 1).write_bytes(b"\x00garbage")
    g["done"][5] = False                     # an unfinished clip: its missing chunks are not damage
    _chunk(store, "vid/tokens", 5, 3).unlink()
    bad = check_store(open_store(store), store)
    assert sorted(bad) == [1, 2]
    assert "au/feats" in bad[2] and "missing" in bad[2]
    assert "done flag" in bad[1]


def test_full_check_finds_damage_inside_a_chunk(store):
    f = _chunk(store, "vid/tokens", 4, 3)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x5A            # same size: only a decode with its checksum sees it
    f.write_bytes(bytes(data))
    g = open_store(store)
    assert check_store(g, store) == {}
    bad = check_store(g, store, full=True)
    assert list(bad) == [4] and "vid/tokens" in bad[4]


def test_verify_store_recreates_a_missing_array_and_marks_every_row(store):
    shutil.rmtree(store / "au" / "probs")
    g = open_store(store, mode="r+")
    assert sorted(check_store(g, store)) == list(range(6))
    bad = verify_store(g, store, shapes=TINY_SHAPES)
    assert sorted(bad) == list(range(6)) and all("au/probs" in r for r in bad.values())
    g = open_store(store)
    assert g["au/probs"].shape == (6, TINY_SHAPES.au_frames, TINY_SHAPES.aus)
    assert not np.asarray(g["au/probs"][:]).any()   # recreated at its fill value, to be extracted again


def test_require_intact_names_the_clip_and_the_repair(store):
    _chunk(store, "er/feats", 3, 3).unlink()
    with pytest.raises(CacheMismatchError) as err:
        require_intact(open_store(store), store)
    assert "clip003" in str(err.value) and "ecpa extract --verify" in str(err.value)
    assert "clip002" not in str(err.value)


def test_a_chunk_equal_to_the_fill_value_is_written_even_in_a_reopened_store(store):
    import zarr

    before = zarr.config.get("array.write_empty_chunks")
    zarr.config.set({"array.write_empty_chunks": False})   # zarr's default in a fresh process
    try:
        g = open_store(store, mode="r+")
        g["au/probs"][1] = np.zeros((TINY_SHAPES.au_frames, TINY_SHAPES.aus), np.float32)   # all fill value
        g["face/boxes"][1] = np.full((TINY_SHAPES.frames, 4), np.nan, np.float32)
    finally:
        zarr.config.set({"array.write_empty_chunks": before})
    assert _chunk(store, "au/probs", 1, 3).exists()
    assert _chunk(store, "face/boxes", 1, 3).exists()
    assert check_store(open_store(store), store, full=True) == {}
