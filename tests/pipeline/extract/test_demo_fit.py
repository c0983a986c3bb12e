"""pipeline.extract.demo_fit: ground truth from the generator, the originals' checkpoint layouts through the real
loaders, the fit key, determinism, F1 on paper-checkable cases."""
import dataclasses

import numpy as np
import pytest
import torch

from pipeline.extract import demo_fit as D
from pipeline.config import load_config
from pipeline.extract.networks.anfl import AU_NAMES, anfl_demo, load_anfl
from pipeline.extract.networks.video_swin import forward_tokens, load_video_swin, swin3d_demo


def _spec(aus, onset=2, peak=5):
    from pipeline.data.demo import ClipSpec

    return ClipSpec(index=0, clip_id="demo_0000", emotion="happiness", gender="man", aus=aus, onset=onset, peak=peak,
                    turn=0.0, turn_onset=0, turn_peak=0, skin=(200, 150, 120), hair=(20, 20, 20),
                    background=(90, 110, 95), face_dx=0, face_dy=0, face_scale=1, gain=1, light=0)


def test_ground_truth_marks_drawn_aus_and_their_left_right_aus_once_active():
    assert D.gt_au_names(["AU1", "AU12", "AU26"], AU_NAMES) == {"AU1", "AUL1", "AUR1", "AU12", "AUL12", "AUR12", "AU26"}
    spec = _spec({"AU1": 0.9, "AU12": 0.7}, onset=2, peak=5)
    tgt, env = D.frame_targets(spec, np.array([0, 2, 4, 5, 63]), AU_NAMES)
    col = {a: i for i, a in enumerate(AU_NAMES)}
    assert tgt.shape == (5, 41)
    assert tgt[:2].sum() == 0 and env[0] == 0 and env[-1] == 1  # before/at onset: nothing active
    # frame 4: envelope 20/27 (smoothstep of 2/3): AU1 0.9*0.74 = 0.67 >= 0.5, AU12 0.7*0.74 = 0.52 >= 0.5
    assert env[2] == pytest.approx(20 / 27)
    on = {a for a in AU_NAMES if tgt[2, col[a]]}
    assert on == {"AU1", "AUL1", "AUR1", "AU12", "AUL12", "AUR12"}
    assert tgt[3].sum() == tgt[4].sum() == 6 and tgt[4, col["AU4"]] == 0


def test_f1_by_hand():
    true = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    pred = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]])
    f1 = D.f1_scores(pred, true)
    # AU a: tp 1, fp 1, fn 1 -> 0.5; AU b: tp 2, fp 1, fn 0 -> 0.8; AU c: no positives, no predictions -> NaN
    assert f1[0] == pytest.approx(0.5) and f1[1] == pytest.approx(0.8) and np.isnan(f1[2])


def test_video_swin_file_has_the_original_layout_and_loads_through_the_paper_loader(tmp_path):
    torch.manual_seed(3)
    fitted = swin3d_demo()
    head = torch.nn.Linear(fitted.num_features, 7)
    ckpt = D.video_swin_checkpoint(fitted, head, {"classes": ["a"] * 7})
    keys = set(ckpt["state_dict"])
    assert set(ckpt) == {"meta", "state_dict"}
    assert all(k.startswith(("backbone.", "cls_head.fc_cls.")) for k in keys)
    assert "backbone.layers.0.blocks.1.mlp.fc2.weight" in keys and "backbone.layers.2.downsample.reduction.weight" in keys
    assert "backbone.layers.3.blocks.0.attn.relative_position_index" in keys  # as the originals hold it
    assert not any(".features." in k for k in keys)
    torch.save(ckpt, tmp_path / "swin.pth")
    torch.manual_seed(4)
    fresh = swin3d_demo()
    load_video_swin(fresh, tmp_path / "swin.pth")
    x = torch.rand(1, 3, 8, 64, 64)
    with torch.inference_mode():
        assert torch.equal(forward_tokens(fresh.eval(), x), forward_tokens(fitted.eval(), x))


def test_anfl_file_has_the_opengraphau_layout_and_loads_through_load_anfl(tmp_path):
    torch.manual_seed(5)
    fitted = anfl_demo()
    opt = torch.optim.AdamW(fitted.parameters())
    ckpt = D.anfl_checkpoint(fitted, 3, opt.state_dict())
    assert set(ckpt) == {"epoch", "state_dict", "optimizer"} and ckpt["epoch"] == 3
    assert all(k.startswith("module.") for k in ckpt["state_dict"])
    torch.save(ckpt, tmp_path / "anfl.pth")
    torch.manual_seed(6)
    fresh = anfl_demo()
    load_anfl(fresh, tmp_path / "anfl.pth")
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(fresh.eval()(x)[1], fitted.eval()(x)[1])


def test_fit_key_follows_generator_data_and_fit_settings_not_knobs(tmp_path, monkeypatch):
    sets = [f"data.cache_root={tmp_path}"]
    cfg = load_config("demo", sets)
    assert cfg.extract.demo_fit and not cfg.extract.random_init
    assert cfg.extract.weights_dir == str(D.fit_dir(cfg)) and D.fit_dir(cfg).parent == tmp_path / "demo" / "extractors"
    assert cfg.extract.au_weights == D.AU_FILE and cfg.extract.er_weights == "resnet18_er_demo.pth"
    key = D.fit_key(cfg)
    assert D.fit_key(load_config("demo", sets + ["extract.batch_size=3", "extract.workers=0"])) == key
    for other in ("data.demo_seed=1", "data.demo_clips=100", "extract.demo_fit_epochs=2", "extract.face_size=48"):
        assert D.fit_key(load_config("demo", sets + [other])) != key, other
    import pipeline.data.demo

    monkeypatch.setattr(pipeline.data.demo, "GENERATOR_VERSION", "999")
    assert D.fit_key(cfg) != key
    # explicit weight files or random weights turn the fit off
    own = load_config("demo", sets + [f"extract.weights_dir={tmp_path / 'w'}"])
    assert not D.wanted(own) and own.extract.weights_dir == str(tmp_path / "w")
    assert not D.wanted(load_config("demo", sets + ["extract.random_init=true"]))


def test_extract_key_does_not_carry_the_fit_switches_but_the_weight_hashes(tmp_path):
    from pipeline.chain.specs import extract_slice as config_slice

    cfg = load_config("demo", [f"data.cache_root={tmp_path}"])
    s = config_slice(cfg)
    assert "demo_fit" not in s and "demo_fit_epochs" not in s
    assert s["weights"]["au"].startswith("missing:")  # not fitted yet: plan() fits before keying


def _tiny_data(n=6, f=2, seed=0):
    rng = np.random.default_rng(seed)
    return D.FitData(
        ids=[f"c{i}" for i in range(n)], faces=rng.integers(0, 255, (n, f, 64, 64, 3), dtype=np.uint8),
        video=rng.integers(0, 255, (n, 8, 64, 64, 3), dtype=np.uint8), emotion=np.arange(n) % 7,
        au=(rng.random((n, f, 41)) < 0.3).astype(np.float32), envelope=np.ones((n, f), np.float32),
        drawn=[["AU1"]] * n)


def test_fits_are_seeded_and_deterministic():
    cfg = load_config("demo", ["extract.au_frames=2"])
    data = _tiny_data(n=4)
    st = D.FitSettings(epochs=1, swin_epochs=1, batch_size=4, er_finetune_epochs=1)
    quiet = lambda _t: None  # noqa: E731
    runs = []
    for _ in range(2):
        anfl, emo, opt_state = D.fit_anfl(cfg, data, st, quiet)
        er = D.fit_er(cfg, data, st, quiet, start=(anfl, emo))
        swin, head = D.fit_swin(cfg, data, st, quiet)
        runs.append([m.state_dict() for m in (anfl, er, swin, head)])
    # ANFL's optimiser state covers ANFL's parameters only (the emotion head is not in its file)
    assert len(opt_state["param_groups"][0]["params"]) == len(list(anfl.parameters())) == len(opt_state["state"])
    for a, b in zip(*runs):
        assert all(torch.equal(v, b[k]) for k, v in a.items())
    # the ER trunk started from ANFL's: the fine-tune moved it, the classifier is its own
    anfl_sd, er_sd = runs[0][0], runs[0][1]
    assert er_sd["fc.weight"].shape == (7, 512) and not torch.equal(er_sd["conv1.weight"], anfl_sd["backbone.conv1.weight"])
    assert not torch.equal(er_sd["fc.weight"], emo.state_dict()["weight"])  # started from ANFL's emotion head, then fine-tuned
    other = D.fit_anfl(cfg, data, dataclasses.replace(st, seed=1), quiet)[0].state_dict()
    assert not torch.equal(other["head.main_sc"], anfl_sd["head.main_sc"])
