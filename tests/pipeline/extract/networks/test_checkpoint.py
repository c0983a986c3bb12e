"""Shared checkpoint helpers: unwrap, prefix stripping, explicit key maps, checked loads."""
import logging

import pytest
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.checkpoints import (
    CheckpointError, apply_key_map, check_and_load, clean_state_dict, load_state_dict_file, read_checkpoint,
    unwrap_state_dict,
)


def test_clean_strips_module_and_compile_prefixes_in_any_order():
    t = torch.zeros(1)
    sd = clean_state_dict({"module._orig_mod.a.w": t, "_orig_mod.module.b.w": t, "c.module.w": t})
    assert sorted(sd) == ["a.w", "b.w", "c.module.w"]  # only leading prefixes go


def test_clean_refuses_two_keys_that_collide():
    with pytest.raises(CheckpointError, match="twice"):
        clean_state_dict({"module.a": torch.zeros(1), "a": torch.zeros(1)})


@pytest.mark.parametrize("wrap", ["state_dict", "model", None])
def test_unwrap_finds_the_tensor_dict(wrap):
    sd = {"w": torch.ones(2)}
    obj = {wrap: sd, "epoch": 3, "optimizer": {"state": {}}} if wrap else sd
    assert unwrap_state_dict(obj) == sd


def test_unwrap_names_the_top_level_keys_when_nothing_fits():
    with pytest.raises(CheckpointError, match="epoch, weights") as e:
        unwrap_state_dict({"epoch": 1, "weights": [1, 2]}, "x.pth")
    assert isinstance(e.value, UserError) and "x.pth" in str(e.value)


def test_key_map_renames_skips_and_lists_every_unknown_key():
    sd = {"a.0.w": torch.zeros(1), "a.1.w": torch.zeros(1), "idx": torch.zeros(1), "typo.w": torch.zeros(1),
          "other": torch.zeros(1)}
    rules = [(r"a\.(\d+)\.w", r"b.\1.weight")]
    with pytest.raises(CheckpointError) as e:
        apply_key_map(sd, rules, skip=[r"idx"], source="f.pth")
    assert "typo.w" in str(e.value) and "other" in str(e.value) and "f.pth" in str(e.value)
    out, skipped = apply_key_map({k: sd[k] for k in ("a.0.w", "a.1.w", "idx")}, rules, skip=[r"idx"])
    assert sorted(out) == ["b.0.weight", "b.1.weight"] and skipped == ["idx"]


def test_key_map_matches_whole_keys_only():
    with pytest.raises(CheckpointError, match="a.0.w.extra"):
        apply_key_map({"a.0.w.extra": torch.zeros(1)}, [(r"a\.(\d+)\.w", r"b.\1")])


def test_check_and_load_lists_missing_unknown_and_shape_problems():
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    sd = dict(m.state_dict())
    sd.pop("1.bias")
    sd["1.bais"] = torch.zeros(1)
    sd["0.weight"] = torch.zeros(4, 2)
    with pytest.raises(CheckpointError) as e:
        check_and_load(m, sd, source="ck.pth")
    msg = str(e.value)
    assert "unknown key(s) 1.bais" in msg and "missing key(s) 1.bias" in msg and "0.weight (4, 2)" in msg


def test_check_and_load_keeps_declared_model_entries():
    m = nn.BatchNorm1d(2)
    src = nn.BatchNorm1d(2)
    with torch.no_grad():
        src.weight.fill_(3.0)
    sd = {k: v for k, v in src.state_dict().items() if k != "num_batches_tracked"}
    check_and_load(m, sd, keep_model=[r"num_batches_tracked"])
    assert torch.equal(m.weight, torch.full((2,), 3.0))


class _Opaque:  # an arbitrary pickled object, as mmcv's `meta` may hold
    pass


def test_read_checkpoint_refuses_a_file_needing_the_full_unpickler_unless_trusted(tmp_path, caplog):
    from pipeline.checkpoints import UntrustedPickleError, trusting

    p = tmp_path / "c.pth"
    torch.save({"state_dict": {"module.w": torch.ones(1)}, "meta": _Opaque()}, p)
    with pytest.raises(UntrustedPickleError) as e:
        load_state_dict_file(p)
    assert str(p) in str(e.value) and "_Opaque" in str(e.value) and "extract.trust_pickle" in str(e.value)
    assert "\x1b" not in str(e.value)
    with trusting([tmp_path / "other.pth"]):            # trusting another file is no trust for this one
        with pytest.raises(UntrustedPickleError):
            load_state_dict_file(p)
    with caplog.at_level(logging.WARNING), trusting([p]) as used:
        sd = load_state_dict_file(p)
    assert sd == {"w": torch.ones(1)} and used == [str(p)]
    assert "full unpickler" in caplog.text and str(p) in caplog.text
def test_read_checkpoint_plain_file_loads_without_warning(tmp_path, caplog):
    p = tmp_path / "c.pth"
    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(1)}}, p)
    with caplog.at_level(logging.WARNING):
        obj = read_checkpoint(p)
    assert obj["epoch"] == 1 and caplog.text == ""
