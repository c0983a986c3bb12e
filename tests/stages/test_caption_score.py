"""pipeline.caption.stage / pipeline.score.stage / stages.show / pipeline.chain.protocols on the tiny demo chain (shared fixture).

Scoring here runs with score.meteor=false (the PTB tokenizer still needs Java); METEOR itself is pinned
in tests/pipeline/test_scoring.py."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import UserError
from stages._common import JAVA_HINT, java_available

NO_METEOR = ["score.meteor=false"]


@pytest.fixture(scope="module")
def cfg(tiny_demo_trained, tiny_demo_sets):
    return load_config("demo", tiny_demo_sets + NO_METEOR)


@pytest.fixture(scope="module")
def captioned(cfg):
    from pipeline.caption import stage as caption

    rec = caption.run(cfg)
    from pipeline.chain.plan import prepare_and_plan as plan

    return rec, plan(cfg, upto="caption")["caption"].out_dir


@pytest.fixture(scope="module")
def scored(cfg, captioned):
    if not java_available():
        pytest.skip("java not on PATH")
    from pipeline.score import stage as score
    from pipeline.chain.plan import prepare_and_plan as plan

    rec = score.run(cfg)
    return rec, plan(cfg, upto="score")["score"].out_dir


def test_caption_files_cover_the_split_in_coco_format(cfg, captioned):
    from pipeline.data.manifest import read_manifest

    rec, out = captioned
    results = json.loads((out / "captions.json").read_text())
    refs = json.loads((out / "references.json").read_text())
    test_clips = {c.id: c for c in read_manifest(cfg.manifest_path) if c.split == "test"}
    assert [r["image_id"] for r in results] == [im["id"] for im in refs["images"]]
    assert {r["image_id"] for r in results} == set(test_clips)
    assert rec["counts"]["clips"] == len(test_clips)
    for r in results:
        assert set(r) == {"image_id", "caption", "emotion", "emotion_index", "pieces", "ended"}
        # [CLS] counts in caption.max_length: a caption that used every other slot never emitted [SEP]
        assert r["ended"] == (r["pieces"] < cfg.caption.max_length - 1) and r["pieces"] <= cfg.caption.max_length - 1
        assert r["emotion"] == cfg.data.emotions[r["emotion_index"]]
    assert rec["counts"]["unended_captions"] == sum(not r["ended"] for r in results)
    # references: every manifest caption once, unique annotation ids, true emotions carried on images
    anns = refs["annotations"]
    assert len({a["id"] for a in anns}) == len(anns)
    for cid, c in test_clips.items():
        assert [a["caption"] for a in anns if a["image_id"] == cid] == c.captions
    assert {im["id"]: im["emotion"] for im in refs["images"]} == {k: c.emotion for k, c in test_clips.items()}
    rec_disk = json.loads((out / "stage.json").read_text())
    assert rec_disk["key"] == rec["key"] and (out / "config.yaml").is_file()


def test_captions_equal_an_independent_uncached_decode(cfg, captioned):
    """Re-decode the first clips from the store without the prefix cache: same text, same emotion."""
    from pipeline.caption.decoding import decode_with_emotion
    from pipeline.extract.store import open_store
    from pipeline.train.data import FEATURE_ARRAYS
    from pipeline.train.loop import load_trained
    from pipeline.chain.plan import prepare_and_plan as plan

    _, out = captioned
    plans = plan(cfg, upto="caption")
    model, tok, _ = load_trained(plans["train"].out_dir, cfg.caption.checkpoint)
    g = open_store(plans["extract"].out_dir / "store.zarr")
    ids = [str(x) for x in np.asarray(g["clip_id"][:])]
    results = json.loads((out / "captions.json").read_text())[:3]
    rows = [ids.index(r["image_id"]) for r in results]
    batch = {k: torch.from_numpy(np.stack([np.asarray(g[name][i]) for i in rows])) for k, name in FEATURE_ARRAYS.items()}
    seqs, emo = decode_with_emotion(model, batch, tok, beam_size=cfg.caption.beam_size,
                                    max_length=cfg.caption.max_length, use_cache=False)
    assert [tok.decode(s) for s in seqs] == [r["caption"] for r in results]
    assert emo.argmax(-1).tolist() == [r["emotion_index"] for r in results]


def test_caption_reused_when_fresh(cfg, captioned, monkeypatch):
    from pipeline.caption import decoding
    from pipeline.caption import stage as caption

    rec, out = captioned
    before = (out / "captions.json").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("decoded again although the output is fresh")

    monkeypatch.setattr(decoding, "decode_with_emotion", boom)
    again = caption.run(cfg)
    assert again["key"] == rec["key"]
    assert (out / "captions.json").stat().st_mtime_ns == before


def test_caption_refuses_an_untrained_config(tiny_demo_trained, tiny_demo_sets):
    from pipeline.caption import stage as caption

    other = load_config("demo", tiny_demo_sets + ["train.seed=12345"])
    with pytest.raises(UserError, match="ecpa train"):
        caption.run(other)


def test_score_reports_the_training_baselines(cfg, scored):
    from collections import Counter

    from pipeline.data.manifest import read_manifest

    _, out = scored
    payload = json.loads((out / "scores.json").read_text())
    base = payload["baseline"]
    clips = read_manifest(cfg.manifest_path)
    train = [c for c in clips if c.split == "train"]
    counts = Counter(cap for c in train for cap in c.captions)
    top = max(counts.values())
    assert counts[base["caption"]] == top and base["caption"] == min(t for t in counts if counts[t] == top)
    emo = Counter(c.emotion for c in train)
    assert emo[base["emotion"]] == max(emo.values())
    assert base["emotion_chance"] == pytest.approx(1 / len(cfg.data.emotions))
    test = [c for c in clips if c.split == cfg.caption.split]
    assert base["metrics"]["emotion_acc"] == pytest.approx(sum(c.emotion == base["emotion"] for c in test) / len(test))
    # a constant caption is one of the training captions: scored against the same references, with the same metrics
    assert set(base["metrics"]) == set(payload["metrics"])


def test_score_files(cfg, captioned, scored):
    rec, out = scored
    payload = json.loads((out / "scores.json").read_text())
    m = payload["metrics"]
    assert {"Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr", "emotion_acc"} <= set(m) and "METEOR" not in m
    assert "METEOR skipped (score.meteor=false)" in payload["notes"]
    # caption lengths in words, from the two caption files
    _, cap_dir = captioned
    results = json.loads((cap_dir / "captions.json").read_text())
    anns = json.loads((cap_dir / "references.json").read_text())["annotations"]
    words = lambda t: len(re.findall(r"[a-z0-9]+", t.lower()))   # noqa: E731
    lengths = payload["lengths"]
    assert lengths["mean_generated_words"] == pytest.approx(sum(words(r["caption"]) for r in results) / len(results))
    assert lengths["mean_reference_words"] == pytest.approx(sum(words(a["caption"]) for a in anns) / len(anns))
    assert lengths["unended_share"] == pytest.approx(sum(not r["ended"] for r in results) / len(results))
    assert any("without [SEP]" in n for n in payload["notes"]) == (lengths["unended_share"] > 0)
    # emotion accuracy by hand from the two caption files
    _, cap_dir = captioned
    results = json.loads((cap_dir / "captions.json").read_text())
    true = {im["id"]: im["emotion"] for im in json.loads((cap_dir / "references.json").read_text())["images"]}
    hits = [r["emotion"] == true[r["image_id"]] for r in results if true[r["image_id"]] is not None]
    assert m["emotion_acc"] == pytest.approx(sum(hits) / len(hits))
    # the per-clip table: one row per clip, worst CIDEr first; corpus CIDEr and ROUGE-L are per-clip means
    rows = list(csv.DictReader((out / "per_clip.csv").open()))
    assert [r["clip"] for r in rows] and {r["clip"] for r in rows} == {r["image_id"] for r in results}
    cider = [float(r["CIDEr"]) for r in rows]
    assert cider == sorted(cider)
    assert np.mean(cider) == pytest.approx(m["CIDEr"], abs=1e-3)
    assert np.mean([float(r["ROUGE_L"]) for r in rows]) == pytest.approx(m["ROUGE_L"], abs=1e-3)
    by_clip = {r["image_id"]: r for r in results}
    for r in rows:
        assert r["caption"] == by_clip[r["clip"]]["caption"]
        assert r["emotion_correct"] == str(int(r["emotion_true"] == r["emotion_pred"]))
    from pipeline.chain.compare import read_scores

    assert read_scores(out)["CIDEr"] == pytest.approx(m["CIDEr"])  # what `ecpa compare` / `ecpa run` read


def test_score_without_java_stops_before_writing(cfg, captioned, monkeypatch, tiny_demo_sets):
    import pipeline.score.coco
    from pipeline.score import stage as score
    from pipeline.chain.plan import prepare_and_plan as plan

    monkeypatch.setattr(pipeline.score.coco, "java_available", lambda: False)
    other = load_config("demo", tiny_demo_sets + ["score.metrics=CIDEr", "score.meteor=false"])
    p = plan(other, upto="score")["score"]
    with pytest.raises(UserError) as e:
        score.run(other)
    assert JAVA_HINT in str(e.value) and "PTB tokenizer" in str(e.value)
    assert not p.out_dir.exists()


def test_show_sheet(cfg, captioned, tmp_path):
    from stages import show

    _, out = captioned
    results = json.loads((out / "captions.json").read_text())
    pick = [results[1]["image_id"], results[0]["image_id"]]
    rows = show.build_rows(out, pick, n=6, frames_per_clip=3, side=64)
    assert [r["clip"] for r in rows] == pick
    for r in rows:
        assert r["frames"].shape == (3, 64, 64, 3) and r["frames"].dtype == np.uint8
        assert len(r["aus"]) == 3 and all(0.0 <= p <= 1.0 for _, p in r["aus"])
        assert [p for _, p in r["aus"]] == sorted((p for _, p in r["aus"]), reverse=True)
    png = show.render_sheet(rows, tmp_path / "sheet.png", frames_per_clip=3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(UserError, match="not in"):
        show.build_rows(out, ["no_such_clip"], n=1)


def test_show_sheet_draws_the_stored_face_boxes(cfg, captioned, tmp_path):
    """--boxes: the extraction's own frames (its sampling and crop) with face/boxes at the same frames."""
    import zarr

    from pipeline.records import read_record
    from pipeline.extract.video import even_subset
    from stages import show

    _, out = captioned
    cid = json.loads((out / "captions.json").read_text())[0]["image_id"]
    (row,) = show.build_rows(out, [cid], n=1, frames_per_clip=3, boxes=True)
    assert row["frames"].shape == (3, cfg.extract.crop, cfg.extract.crop, 3)
    g = zarr.open_group(read_record(out)["extra"]["store"], mode="r")
    r = g["clip_id"][:].tolist().index(cid)
    idx = even_subset(cfg.extract.num_frames, 3)
    np.testing.assert_array_equal(np.stack([b for b, _ in row["boxes"]]), g["face/boxes"][r][idx])
    assert all(kind in show.BOX_COLOURS for _, kind in row["boxes"])
    png = show.render_sheet([row], tmp_path / "boxes.png", frames_per_clip=3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_top_aus_by_mean_confidence():
    from stages.show import top_aus

    probs = np.array([[0.1, 0.9, 0.5, 0.2], [0.3, 0.7, 0.6, 0.0]])  # means 0.2, 0.8, 0.55, 0.1
    assert [n for n, _ in top_aus(probs, ["AU1", "AU2", "AU4", "AU6"], k=3)] == ["AU2", "AU4", "AU1"]


# ---- protocols ----------------------------------------------------------------------------------


def test_protocol_keys_equal_the_in_domain_chain(cfg):
    from pipeline.chain.plan import prepare_and_plan as plan
    from pipeline.chain.protocols import protocol_plan as _protocol_plan
    from pipeline.chain.plan import prepare

    def protocol_plan(a, b):
        return _protocol_plan(a, b, prepare(a), prepare(b))

    pp = protocol_plan(cfg, cfg)
    plans = plan(cfg, upto="score")
    assert (pp.caption.key, pp.score.key) == (plans["caption"].key, plans["score"].key)
    assert pp.caption.out_dir == plans["caption"].out_dir


def test_cross_command_end_to_end_on_the_val_split(cfg, tiny_demo_sets, captioned):
    """`ecpa cross` with the demo on both sides but the val split to caption: outputs under the training run,
    keyed by the eval side's caption settings, with protocol.json."""
    if not java_available():
        pytest.skip("java not on PATH")
    from typer.testing import CliRunner

    from stages.cli import app
    from pipeline.chain.protocols import protocol_plan as _protocol_plan
    from pipeline.chain.plan import prepare

    def protocol_plan(a, b):
        return _protocol_plan(a, b, prepare(a), prepare(b))

    sets = [a for s in tiny_demo_sets + NO_METEOR for a in ("--set", s)]
    res = CliRunner().invoke(app, ["cross", "--train-preset", "demo", "--eval-preset", "demo", *sets,
                                   "--eval-set", "caption.split=val"])
    assert res.exit_code == 0, res.output
    eval_cfg = load_config("demo", tiny_demo_sets + NO_METEOR + ["caption.split=val"])
    pp = protocol_plan(cfg, eval_cfg)
    assert pp.caption.out_dir.parent == pp.train.out_dir / "captions"
    assert pp.caption.key != protocol_plan(cfg, cfg).caption.key
    info = json.loads((pp.caption.out_dir / "protocol.json").read_text())
    assert info["protocol"] == "cross" and info["eval_dataset"] == "demo"
    assert info["vocabulary"]["oov_rate"] == 0.0  # val captions come from the same generator as training
    caps = json.loads((pp.caption.out_dir / "captions.json").read_text())
    from pipeline.data.manifest import read_manifest

    assert {c["image_id"] for c in caps} == {c.id for c in read_manifest(cfg.manifest_path) if c.split == "val"}
    assert (pp.score.out_dir / "scores.json").is_file()


def test_compare_stores_flags_shapes_and_extractors():
    from pipeline.extract.store import StoreShapes
    from pipeline.chain.protocols import Compatibility, compare_stores

    a = StoreShapes(tokens=784, channels=1024, frames=32, er_dim=2048, emotions=11, au_frames=8, aus=41, au_dim=512)
    b = StoreShapes(tokens=392, channels=1024, frames=16, er_dim=2048, emotions=11, au_frames=8, aus=41, au_dim=512)
    out = Compatibility()
    compare_stores({"extract": {"swin": "swin3d_b", "num_frames": 32}, "weights": {"swin": "aa"}}, a,
                   {"extract": {"swin": "swin3d_b", "num_frames": 16}, "weights": {"swin": "bb"}}, b, out)
    assert out.errors == ["video tokens: training features 784, evaluation features 392"]
    assert any("frames" in n for n in out.notes)
    assert any("extract.num_frames differs" in n for n in out.notes)
    assert any("swin weights differ" in n for n in out.notes)


def test_compare_emotions_without_labels_and_with_other_classes():
    from pipeline.chain.protocols import Compatibility, compare_emotions
    from pipeline.score.stage import NO_EMOTION_NOTE

    out = Compatibility()
    compare_emotions(["anger", "happiness"], ["anger", "happiness"], [None, None], out)
    assert out.notes == [NO_EMOTION_NOTE] and out.emotions["countable_clips"] == 0
    out = Compatibility()
    compare_emotions(["anger", "happiness"], ["anger", "joy"], ["anger", "joy", None], out)
    assert out.emotions["countable_clips"] == 1 and out.emotions["unknown_classes"] == ["joy"]
    assert any("joy" in n for n in out.notes)


def test_vocabulary_coverage_names_unknown_words():
    from pipeline.train.tokenizer import train_wordpiece
    from pipeline.chain.protocols import vocabulary_coverage

    tok = train_wordpiece(["a man smiles at the camera", "a woman talks"] * 5, vocab_size=60)
    v = vocabulary_coverage(tok, ["a man smiles", "a zebra talks quickly"])
    # 'zebra' and 'quickly' contain letters never seen in training (z, b, q, k, y) -> [UNK]
    assert set(v["oov_words"]) == {"zebra", "quickly"}
    assert v["words"] == 7 and v["oov_rate"] == pytest.approx(2 / 7)


def test_cross_refuses_missing_eval_features(cfg, tiny_demo_sets, tmp_path):
    from pipeline.chain.protocols import run_protocol

    other = load_config("demo", tiny_demo_sets + ["data.name=demo_other", "data.demo_clips=6",
                                                  f"data.root={tmp_path / 'other'}"])
    with pytest.raises(UserError, match="ecpa extract --preset demo"):
        run_protocol(cfg, other, protocol="cross")


@pytest.mark.slow
def test_cross_and_zeroshot_on_another_extracted_dataset(cfg, tiny_demo_sets, tmp_path):
    """A second demo dataset (other seed, own extraction) captioned by the tiny run: its manifest joins the
    caption key, outputs land under the training run, the captions cover ITS test clips."""
    if not java_available():
        pytest.skip("java not on PATH")
    from typer.testing import CliRunner

    from pipeline.data.manifest import read_manifest
    from pipeline.extract import stage as extract
    from stages.cli import app
    from pipeline.chain.protocols import protocol_plan as _protocol_plan
    from pipeline.chain.plan import prepare

    def protocol_plan(a, b):
        return _protocol_plan(a, b, prepare(a), prepare(b))

    other_sets = [f"data.root={tmp_path / 'other'}", "data.name=demo_other", "data.demo_seed=7"]
    other = load_config("demo", tiny_demo_sets + NO_METEOR + other_sets)
    extract.run(other)
    sets = [a for s in tiny_demo_sets + NO_METEOR for a in ("--set", s)]
    eval_sets = [a for s in other_sets for a in ("--eval-set", s)]
    for command in ("cross", "zeroshot"):
        res = CliRunner().invoke(app, [command, "--train-preset", "demo", "--eval-preset", "demo", *sets, *eval_sets])
        assert res.exit_code == 0, res.output
    pp = protocol_plan(cfg, other)
    assert pp.caption.parents["eval_manifest"] and pp.caption.parents["features"] == pp.eval_extract.key
    assert pp.caption.out_dir.parent == pp.train.out_dir / "captions"
    caps = json.loads((pp.caption.out_dir / "captions.json").read_text())
    assert {c["image_id"] for c in caps} == {c.id for c in read_manifest(other.manifest_path) if c.split == "test"}
    assert json.loads((pp.score.out_dir / "scores.json").read_text())["clips"] == len(caps)
