"""Stage-two data: store rows joined with the manifest, RAM vs chunk reads, padding, seeded order."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.errors import CacheMismatchError
from pipeline.train.data import (CaptionPairs, EpochSampler, FeatureSource, collate, match_clips,
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


# ---- direct chunk reads vs the zarr API, damage, RAM vs streaming ----

def _all_arrays(shapes) -> dict[str, str]:
    return {name: name for name in ("done", *shapes.arrays())}


def test_direct_chunk_reads_byte_identical_to_zarr(tmp_path):
    from pipeline.train.data import ClipReader

    path = tmp_path / "s.zarr"
    random_store(path, n=5, n_val=0)
    import zarr

    g = zarr.open_group(str(path), mode="r+")
    g["au/feats"][3] = np.zeros(g["au/feats"].shape[1:], np.float16)   # all fill value: zarr writes no chunk
    (path / "face" / "boxes" / "c" / "1" / "0" / "0").unlink()         # absent chunk: NaN fill value
    names = _all_arrays(TINY_SHAPES)
    direct, api = ClipReader(path, names, direct=True), ClipReader(path, names, direct=False)
    assert set(direct.paths().values()) == {"direct"} and set(api.paths().values()) == {"zarr"}
    assert set(ClipReader(path, names).paths().values()) == {"direct"}   # auto: the layout stage one writes
    for row in (0, 1, 3, 4):
        a, b = direct.read(row), api.read(row)
        for k in names:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert a[k].tobytes() == b[k].tobytes(), (k, row)
            assert a[k].flags.writeable
    assert np.isnan(direct.read(1)["face/boxes"]).all() and not direct.read(3)["au/feats"].any()
    assert direct.read(4)["vid/tokens"].tobytes() == np.asarray(g["vid/tokens"][4]).tobytes()


@pytest.mark.parametrize("codecs", ["blosc", "zstd+crc32c", "gzip", "big-endian", "v2-keys", "sharded", "transposed"])
def test_direct_reader_codecs_or_zarr_fallback(tmp_path, codecs):
    import zarr
    from zarr.codecs import (BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, TransposeCodec,
                             ZstdCodec)

    from pipeline.train.data import ClipReader

    path = tmp_path / "x.zarr"
    g = zarr.open_group(str(path), mode="w")
    kw = {"compressors": None}
    if codecs == "blosc":
        kw = {"compressors": [BloscCodec(cname="lz4", shuffle="shuffle")]}
    elif codecs == "zstd+crc32c":
        kw = {"compressors": [ZstdCodec(level=3), Crc32cCodec()]}
    elif codecs == "gzip":
        kw = {"compressors": [GzipCodec()]}
    elif codecs == "big-endian":
        kw = {"serializer": BytesCodec(endian="big"), "compressors": [Crc32cCodec()]}
    elif codecs == "v2-keys":
        kw = {"chunk_key_encoding": {"name": "v2", "separator": "."}, "compressors": [Crc32cCodec()]}
    elif codecs == "transposed":
        kw = {"filters": [TransposeCodec(order=(0, 2, 1))], "compressors": None}
    shards = {"shards": (2, 3, 4)} if codecs == "sharded" else {}
    a = g.create_array("a", shape=(4, 3, 4), chunks=(1, 3, 4), dtype="float32", fill_value=0, **shards, **kw)
    data = np.random.default_rng(1).standard_normal((4, 3, 4)).astype(np.float32)
    a[:] = data
    fallback = codecs in ("sharded", "transposed")
    rd = ClipReader(path, {"a": "a"})
    assert rd.paths() == {"a": "zarr" if fallback else "direct"}
    for row in range(4):
        got = rd.read(row)["a"]
        assert got.dtype == np.float32 and got.dtype.isnative and got.tobytes() == data[row].tobytes()
    if fallback:
        with pytest.raises(ValueError, match="no direct chunk reader"):
            ClipReader(path, {"a": "a"}, direct=True).paths()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
@pytest.mark.parametrize("direct", [True, False])
def test_damaged_chunk_named_not_read(tmp_path, damage, direct):
    path = tmp_path / "s.zarr"
    random_store(path, n=4, n_val=0)
    f = path / "vid" / "tokens" / "c" / "2" / "0" / "0"
    raw = bytearray(f.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x5A
    else:
        raw = raw[: len(raw) // 2]
    f.write_bytes(bytes(raw))
    stream = FeatureSource(path, [0, 1, 2, 3], False, direct=direct)
    assert stream.get(1)["vid"].shape == (6, 8)                     # other clips read fine
    with pytest.raises(CacheMismatchError, match=r"clip002 \(row 2\).*vid/tokens.*ecpa extract"):
        stream.get(2)
    with pytest.raises(CacheMismatchError, match=r"clip002.*ecpa extract"):
        FeatureSource(path, [0, 1, 2, 3], True, direct=direct)


def test_plan_loading_counts_rows_used():
    from pipeline.train.data import plan_loading

    per_clip = store_bytes(TINY_SHAPES, 1)
    fits3 = 3.5 * per_clip / 2**30
    p = plan_loading(TINY_SHAPES, [0, 5, 5, 9], fits3, 0)             # 3 distinct rows of a bigger store
    assert p.in_memory and p.bytes_used == 3 * per_clip and p.num_workers == 0 and p.note == ""
    p = plan_loading(TINY_SHAPES, [0, 1, 2, 3], fits3, 0)
    assert not p.in_memory and p.num_workers == min(2, os.cpu_count() or 1) and "train.num_workers was 0" in p.note
    kw = p.loader_kwargs()
    assert kw["num_workers"] == p.num_workers and kw["persistent_workers"] and kw["prefetch_factor"] >= 2
    p = plan_loading(TINY_SHAPES, [0, 1, 2, 3], fits3, 3)
    assert p.num_workers == 3 and p.note == ""


def test_training_batches_identical_in_ram_and_streaming(tmp_path):
    import functools

    from torch.utils.data import DataLoader

    from pipeline.train.data import plan_loading

    path = tmp_path / "s.zarr"
    clips = random_store(path, n=9, n_val=2)
    g, shapes = open_checked_store(path)
    refs, _ = match_clips(g, path, clips, ("train",))
    rows = [r.row for r in refs]
    plan = plan_loading(shapes, rows, ram_cache_gb=1e-9, num_workers=0)    # forces streaming with workers
    assert not plan.in_memory and plan.num_workers >= 1

    def batches(in_memory: bool, kwargs: dict) -> list[dict]:
        ds = CaptionPairs(refs, FeatureSource(path, rows, in_memory), _Tok(), max_len=6)
        sampler = EpochSampler(len(ds), seed=4)
        loader = DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=functools.partial(collate, pad_id=0),
                            **kwargs)
        out = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            out += list(loader)
        return out

    ram, stream = batches(True, {"num_workers": 0}), batches(False, plan.loader_kwargs())
    assert len(ram) == len(stream) == 2 * 4                             # 14 pairs / 4 per batch, 2 epochs
    for a, b in zip(ram, stream):
        assert a["clip_id"] == b["clip_id"]
        for k in ("vid", "er", "au_feats", "au_probs", "emotion", "input_ids"):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
