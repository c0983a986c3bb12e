"""Stage-two data: store rows joined with the manifest, RAM vs chunk reads, padding, seeded order."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import CacheMismatchError
from pipeline.train_data import (CaptionPairs, EpochSampler, FeatureSource, collate, match_clips,
                                 open_checked_store, store_bytes)
from tests.pipeline._random_store import TINY_SHAPES, random_store


class _Tok:
    def encode(self, text, max_len):
        return [2, *[5 + len(w) for w in text.split()][: max_len - 2], 3]


def test_ram_and_chunk_reads_agree_and_skip_unfinished(tmp_path):
    path = tmp_path / "s.zarr"
    clips = random_store(path, n=6, n_val=1)
    g, shapes = open_checked_store(path)
    g2 = __import__("zarr").open_group(str(path), mode="r+")
    g2["done"][3] = False                                   # clip003 failed extraction
    refs, skipped = match_clips(g2, path, clips, ("train",))
    assert [r.id for r in refs] == ["clip000", "clip001", "clip002", "clip004"] and skipped == ["clip003"]
    rows = [r.row for r in refs]
    mem, disk = FeatureSource(path, rows, True), FeatureSource(path, rows, False)
    for r in rows:
        a, b = mem.get(r), disk.get(r)
        for k in a:
            assert np.array_equal(a[k], b[k])
    assert np.array_equal(mem.get(4)["vid"], np.asarray(g["vid/tokens"][4]))
    assert store_bytes(TINY_SHAPES, 2) == 2 * 2 * (6 * 8 + 4 * 16 + 2 * 5 * 12) + 2 * 4 * (2 * 5)


def test_pairs_and_collate_padding(tmp_path):
    path = tmp_path / "s.zarr"
    clips = random_store(path, n=3, n_val=0)
    g, _ = open_checked_store(path)
    refs, _ = match_clips(g, path, clips, ("train",))
    ds = CaptionPairs(refs, FeatureSource(path, [r.row for r in refs], True), _Tok(), max_len=6)
    assert len(ds) == 6                                   # 3 clips x 2 captions
    b = collate([ds[0], ds[1], ds[2]], pad_id=0)
    lens = [len(ds[i]["input_ids"]) for i in range(3)]
    assert b["input_ids"].shape == (3, max(lens)) and max(lens) <= 6
    for i, n in enumerate(lens):
        assert (b["input_ids"][i, n:] == 0).all() and b["input_ids"][i, n - 1] == 3
    assert b["vid"].dtype == torch.float16 and b["vid"].shape == (3, 6, 8)
    assert b["emotion"].tolist() == [0, 0, 1]


def test_epoch_sampler_seeded_and_partitioned():
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    a = list(s)
    assert list(s) == a and sorted(a) == list(range(10))
    s.set_epoch(2)
    assert list(s) != a
    ranks = [EpochSampler(10, seed=3, rank=r, world=3) for r in range(3)]
    for r in ranks:
        r.set_epoch(1)
    parts = [list(r) for r in ranks]
    assert all(len(p) == 4 for p in parts)               # padded to 12: every rank takes the same steps
    assert set(sum(parts, [])) == set(range(10))


def test_store_missing_arrays_refused(tmp_path):
    path = tmp_path / "s.zarr"
    random_store(path, n=2)
    import shutil
    shutil.rmtree(path / "au" / "probs")
    with pytest.raises(CacheMismatchError, match="au/probs"):
        open_checked_store(path)
    with pytest.raises(CacheMismatchError):
        open_checked_store(tmp_path / "none.zarr")
