"""pipeline.config: presets, overrides, errors, knob fields. Every shipped preset is tested."""
from __future__ import annotations

import ast
import inspect
from dataclasses import fields

import pytest

import pipeline.config as config_mod
from pipeline.config import (
    SECTIONS, Config, apply_mapping, canonical_json, load_config, parse_override, preset_names, save_config,
    section_slice,
)
from pipeline.errors import UserError
from pipeline.data.manifest import FORMATS


def test_presets_exist():
    assert {"demo", "mafw", "emvidcap", "msvd", "msrvtt"} <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_round_trips(name, tmp_path):
    cfg = load_config(name)
    assert cfg.preset == name
    assert cfg.data.name and "/" not in cfg.data.name
    if name in ("demo", "mafw", "emvidcap", "msvd", "msrvtt"):
        assert cfg.data.name == name  # `make extract DATASET=mafw` writes cache/mafw
    assert cfg.data.format in FORMATS
    assert cfg.data.emotions and len(set(cfg.data.emotions)) == len(cfg.data.emotions)
    assert cfg.model.hidden % cfg.model.heads == 0
    assert 0 <= cfg.data.val_fraction < 1
    # the saved resolved config loads back to the same config (what --cache relies on)
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()


def test_mafw_preset_is_the_papers_setting():
    cfg = load_config("mafw")
    assert cfg.data.emotions == config_mod.MAFW_EMOTIONS and len(cfg.data.emotions) == 11
    assert (cfg.extract.num_frames, cfg.extract.crop, cfg.extract.swin) == (32, 224, "swin3d_b")
    assert (cfg.model.layers, cfg.model.hidden, cfg.model.heads, cfg.model.top_k) == (12, 768, 12, 3)
    assert (cfg.train.tau_c, cfg.train.margin) == (0.3, 0.5)


@pytest.mark.parametrize("override, section, name, value", [
    ("train.lr=1e-4", "train", "lr", 1e-4),
    ("train.lr=3", "train", "lr", 3.0),
    ("train.epochs=7", "train", "epochs", 7),
    ("model.sparse_attention=false", "model", "sparse_attention", False),
    ("model.sparse_attention=ON", "model", "sparse_attention", True),
    ("data.emotions=a, b,c", "data", "emotions", ["a", "b", "c"]),
    ("data.emotions=[x, y]", "data", "emotions", ["x", "y"]),
    ("data.root=/a=b", "data", "root", "/a=b"),
    ("caption.split=val", "caption", "split", "val"),
])
def test_overrides_parse_to_the_field_type(override, section, name, value):
    cfg = load_config("demo", [override])
    got = getattr(getattr(cfg, section), name)
    assert got == value and type(got) is type(value)


def test_overrides_win_over_preset_over_defaults():
    assert Config().model.layers == 12
    assert load_config("demo").model.layers == 2
    assert load_config("demo", ["model.layers=5"]).model.layers == 5
    assert load_config("demo", ["model.layers=5", "model.layers=6"]).model.layers == 6


@pytest.mark.parametrize("override, message", [
    ("trian.lr=1", "unknown config section 'trian'"),
    ("train.lrr=1", "unknown field train.lrr (fields of train: epochs"),
    ("train.epochs=ten", "bad value for train.epochs"),
    ("train.lr=fast", "bad value for train.lr"),
    ("model.sparse_attention=maybe", "expected true/false, got 'maybe'"),
    ("train.lr", "expected section.field=value"),
    ("lr=1", "expected section.field=value"),
    ("a.b.c=1", "expected section.field=value"),
])
def test_bad_overrides_raise_user_error(override, message):
    with pytest.raises(UserError) as e:
        load_config("demo", [override])
    assert message in str(e.value)


def test_bad_presets_raise_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'nope'; presets: demo"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("train:\n  epochs: ten\n")
    with pytest.raises(UserError, match=r"bad\.yaml: bad value for train\.epochs"):
        load_config(bad)
    bad.write_text("train:\n  epochs: [1]\n")
    with pytest.raises(UserError, match=r"bad\.yaml: train\.epochs must be int, got list \[1\]"):
        load_config(bad)
    bad.write_text("train: 3\n")
    with pytest.raises(UserError, match=r"section 'train' must be a mapping"):
        load_config(bad)
    bad.write_text("training:\n  epochs: 3\n")
    with pytest.raises(UserError, match=r"bad\.yaml: unknown config section 'training'"):
        load_config(bad)


def test_yaml_int_for_float_field_becomes_float():
    cfg = apply_mapping(Config(), {"train": {"lr": 1}}, "test")
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_parse_override_splits_on_first_equals():
    assert parse_override("data.root=a=b") == ("data", "root", "a=b")


def test_knob_fields_are_excluded_from_section_slice():
    cfg = Config()
    ex = section_slice(cfg.extract)
    assert {"batch_size", "workers", "device"}.isdisjoint(ex) and "num_frames" in ex
    assert {"batch_size", "workers", "device"} <= set(section_slice(cfg.extract, keyed_only=False))
    data = section_slice(cfg.data)
    assert "cache_root" not in data and "check_videos" not in data and "emotions" in data
    assert "batch_size" in section_slice(cfg.train)  # train batch size changes the result: keyed
    assert "prefix_cache" not in section_slice(cfg.caption)
    # changing a knob leaves the slice (hence the key) unchanged; changing a keyed field does not
    a = load_config("demo")
    b = load_config("demo", ["extract.batch_size=99", "extract.workers=7", "extract.device=cpu"])
    assert canonical_json(section_slice(a.extract)) == canonical_json(section_slice(b.extract))
    c = load_config("demo", ["extract.num_frames=4"])
    assert canonical_json(section_slice(a.extract)) != canonical_json(section_slice(c.extract))


def test_every_field_has_a_docstring():
    """The STYLE rule: a docstring (string literal) right under every config field."""
    for section in SECTIONS.values():  # the section dataclasses (Config only holds them)
        cls = section if isinstance(section, type) else getattr(config_mod, section)
        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(
                    nxt.value.value, str), f"{cls.__name__}.{node.target.id} has no docstring"
        assert {f.name for f in fields(cls)} == {n.target.id for n in body if isinstance(n, ast.AnnAssign)}
