"""HDF5 export/import of stage-one features (pipeline.extract.hdf5)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.extract.hdf5 import FeatureFileError, export_hdf5, import_hdf5
from pipeline.extract.store import StoreShapes, create_store, open_store

SHAPES = StoreShapes(tokens=6, channels=5, frames=4, er_dim=3, emotions=2, au_frames=2, aus=3, au_dim=4)


def _store(path, ids):
    g = create_store(path, ids, SHAPES, {"emotions": ["a", "b"]})
    rng = np.random.default_rng(0)
    for name, (shape, dtype) in SHAPES.arrays().items():
        g[name][:] = rng.normal(size=(len(ids), *shape)).astype(dtype)
    return g


def test_export_round_trip(tmp_path):
    g = _store(tmp_path / "s.zarr", ["v1", "v2", "v3"])
    g["done"][:] = np.array([True, False, True])
    n = export_hdf5(tmp_path / "s.zarr", tmp_path / "f.h5")
    assert n == 2
    with h5py.File(tmp_path / "f.h5") as f:
        assert sorted(f["vid/tokens"]) == ["v1", "v3"]  # only done clips
        np.testing.assert_array_equal(f["vid/tokens/v3"][:], g["vid/tokens"][2])
        np.testing.assert_array_equal(f["au/feats/v1"][:], g["au/feats"][0])
        assert f["vid/tokens/v1"].shape == (6, 5)


def test_import_msvd_style_file(tmp_path):
    _store(tmp_path / "s.zarr", ["c1", "c2"])
    feats = {"vidA": np.arange(30, dtype=np.float32).reshape(6, 5), "vidB": np.ones((6, 5), np.float32)}
    with h5py.File(tmp_path / "msvd.h5", "w") as f:  # one dataset per video id, frames x dims, at the root
        for k, v in feats.items():
            f.create_dataset(k, data=v)
    out = import_hdf5(tmp_path / "msvd.h5", tmp_path / "s.zarr", id_map={"c1": "vidA", "c2": "vidB"})
    assert out == {"imported": 2, "missing": []}
    g = open_store(tmp_path / "s.zarr")
    np.testing.assert_array_equal(g["vid/tokens"][0], feats["vidA"].astype(np.float16))
    assert not g["done"][:].any()  # the other arrays still come from extraction


def test_import_reports_missing_and_bad_shapes_before_writing(tmp_path):
    g = _store(tmp_path / "s.zarr", ["c1", "c2", "c3"])
    before = g["vid/tokens"][:]
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("feats/c1", data=np.zeros((6, 5)))
    with pytest.raises(FeatureFileError, match="2 of 3 clips have no dataset under /feats: c2, c3"):
        import_hdf5(tmp_path / "x.h5", tmp_path / "s.zarr", group="feats")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f.create_dataset("c1", data=np.zeros((7, 5)))
    with pytest.raises(FeatureFileError, match=r"c1 \(7, 5\)"):
        import_hdf5(tmp_path / "y.h5", tmp_path / "s.zarr", allow_missing=True)
    np.testing.assert_array_equal(open_store(tmp_path / "s.zarr")["vid/tokens"][:], before)
