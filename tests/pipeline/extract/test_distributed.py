"""Stage one on a dask LocalCluster of two processes writes the same store as one process."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from pipeline.extract.distributed import shard
from pipeline.extract.runner import ClipTask
from pipeline.extract import stage as extract
from pipeline.chain.plan import prepare_and_plan as plan
from tests.pipeline.extract._extract_helpers import demo_videos, mini_config


def test_shard_contiguous_and_complete():
    tasks = [ClipTask(i, f"c{i}", f"v{i}") for i in range(7)]
    shards = shard(tasks, 3)
    assert [len(s) for s in shards] == [3, 2, 2]
    assert [t.index for s in shards for t in s] == list(range(7))
    assert len(shard(tasks[:2], 8)) == 2


@pytest.mark.slow  # ~60 s on 2 shared cores: two dask worker processes each import torch and build the extractors
def test_local_cluster_equals_single_process(tiny_demo_extracted, tmp_path):
    videos = demo_videos(tiny_demo_extracted)[:3]
    one = mini_config(tmp_path / "one", videos, bad={"zz_bad": "text"})
    two = mini_config(tmp_path / "two", videos, bad={"zz_bad": "text"})
    r1 = extract.run(one)
    r2 = extract.run(two, workers_cluster=2)
    assert r1["key"] == r2["key"]
    assert r2["extra"]["distributed"] == "local:2"
    assert r1["counts"]["done"] == r2["counts"]["done"] == 3 and r2["counts"]["failed"] == 1
    g1 = zarr.open_group(r1["extra"]["store"], mode="r")
    g2 = zarr.open_group(r2["extra"]["store"], mode="r")
    assert g1["clip_id"][:].tolist() == g2["clip_id"][:].tolist()
    assert g1["done"][:].tolist() == g2["done"][:].tolist() == [True, True, True, False]
    for name in ("vid/tokens", "er/feats", "er/logits", "au/feats", "au/probs", "face/boxes"):
        a, b = g1[name][:].astype(np.float32), g2[name][:].astype(np.float32)
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3, equal_nan=True, err_msg=name)
    p = plan(two, upto="extract")["extract"]
    assert "not a video" in (p.out_dir / "errors.jsonl").read_text()
