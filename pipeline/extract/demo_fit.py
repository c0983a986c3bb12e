"""Fit the demo's three frozen extractors on the demo's own training clips, and save them as the
originals ship theirs.

The demo generator knows the ground truth of every clip (`pipeline.data.demo`: the emotion, and per
frame the intensity of every drawn action unit, `au_levels(spec, t)`), so the demo's "frozen"
networks can be real trained networks instead of random ones, cheaply:

- ER (timm `extract.er_model`, ResNet-18 in the demo preset) on face crops, cross-entropy against
  the clip's emotion label, on the frames where the expression is shown (envelope >= 0.5; every frame of
  a neutral clip).
- ANFL (`anfl_demo`) on face crops, binary cross-entropy of its 41 confidences (cosine similarities in
  [0, 1], used as probabilities as OpenGraphAU does) against the drawn AUs active in that frame
  (intensity >= `ACTIVE_LEVEL`); a drawn AU<n> also marks AUL<n>/AUR<n> (the drawn face is symmetric).
- Video Swin (`swin3d_demo`) briefly as a clip classifier: mean-pooled final tokens -> linear head
  (mmaction's `cls_head.fc_cls`), cross-entropy against the emotion.

Inputs are what stage one sees: the same decoding, face finder and crops (`pipeline.extract.runner.
prepare_clip`), the same normalisation (`Extractors.er/au/video`), on the manifest's `train` split only
(never val or test). The files are written in the originals' layouts, so the demo preset loads them
through the very loaders the paper presets use (`build_extractors`):

    <er_model>_er_demo.pth        ER: a plain timm/torchvision state dict (conv1.*, layer1.*, fc.*)
    anfl_demo_first_stage.pth     ANFL: {'epoch', 'state_dict' ('module.'-prefixed), 'optimizer'}
    swin3d_demo_emotion.pth       Video Swin: {'meta', 'state_dict': {'backbone.layers.<i>...', 'cls_head.fc_cls.*'}}

They live in `cache/<dataset>/extractors/<fit-key>/` beside a `stage.json` written last; the key hashes
the generator version and parameters, the frame/crop settings, the network names and the fit settings
(`fit_key`), so rerunning the demo never refits, and the weight files' sha256s enter the extract key as
for any checkpoint. After saving, the fit reloads the three files through `build_extractors` and reports
their quality on the demo's *test* split (`evaluate`): clip-level ER accuracy (mean logits over the
sampled frames), AU F1 per AU and mean over the drawn AUs, Swin clip accuracy.

Seeded: each network has its own seed and a seeded batch order; on one machine with one torch thread
count the files are bit-identical run to run (CPU kernels may reduce in another order with other counts:
the weight hashes key the extraction, so a cache is never wrong, only recomputed).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.errors import UserError
from pipeline.extract.demo_weights import (  # noqa: F401  (where the fitted files go: a leaf module load_config reads)
    ACTIVE_LEVEL, AU_FILE, ER_FILE, STAGE, SWIN_FILE, VERSION, FitSettings, file_names, fit_dir, fit_key,
    fit_settings, fit_slice, point_weights, wanted)

log = logging.getLogger(__name__)

EXPRESSED = 0.5
"""ER trains on frames whose expression envelope is at least this (the neutral start says nothing)."""
PROB_THRESHOLD = 0.5
"""An ANFL confidence >= this predicts the AU (OpenGraphAU's own threshold)."""

QUALITY_FILE = "quality.json"


# ---- ground truth --------------------------------------------------------------------------------------

def gt_au_names(drawn: list[str], au_names: list[str]) -> set[str]:
    """The store's AU names a clip that draws `drawn` (e.g. ['AU1', 'AU12']) shows: each drawn AU<n> and,
    where OpenGraphAU has them, its left/right AUL<n>/AUR<n>."""
    out = set()
    for a in drawn:
        n = a[2:]
        out |= {x for x in (f"AU{n}", f"AUL{n}", f"AUR{n}") if x in au_names}
    return out


def frame_targets(spec, frame_indices: np.ndarray, au_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(F, A) 0/1 AU targets and (F,) expression envelope of the sampled frames of one clip."""
    from pipeline.data.demo import _envelope, au_levels

    tgt = np.zeros((len(frame_indices), len(au_names)), np.float32)
    col = {a: i for i, a in enumerate(au_names)}
    env = np.zeros(len(frame_indices), np.float32)
    for f, t in enumerate(frame_indices):
        env[f] = _envelope(int(t), spec.onset, spec.peak)
        for a, level in au_levels(spec, int(t)).items():
            if level >= ACTIVE_LEVEL:
                for name in gt_au_names([a], au_names):
                    tgt[f, col[name]] = 1.0
    return tgt, env


# ---- the data: stage one's own view of each clip ----------------------------------------------------

@dataclass
class FitData:
    """Prepared clips of one split, in manifest order."""

    ids: list[str]
    faces: "np.ndarray"
    """(N, F, S, S, 3) uint8 face crops (what ER/ANFL see in stage one)."""
    video: "np.ndarray"
    """(N, T, C, C, 3) uint8 centre crops (what Video Swin sees)."""
    emotion: "np.ndarray"
    """(N,) emotion index."""
    au: "np.ndarray"
    """(N, F, A) 0/1 AU targets per sampled frame."""
    envelope: "np.ndarray"
    """(N, F) expression envelope per sampled frame."""
    drawn: list[list[str]]
    """The AUs each clip draws (generator names: AU1 ... AU26)."""


def _specs_by_id(cfg) -> dict:
    from pipeline.data.demo import build_specs

    meta_path = Path(cfg.data.root) / "demo.json"
    if not meta_path.is_file():
        raise UserError(f"demo fit: {meta_path} missing: the demo dataset was not made by the generator "
                        "(run `ecpa demo-data` or set extract.demo_fit=false)")
    meta = json.loads(meta_path.read_text())
    specs = build_specs(meta["n_clips"], meta["seed"], meta["frames"])
    return {s.clip_id: s for s in specs}, meta["frames"]


def load_split(cfg, clips, au_names: list[str], workers: int = 0) -> FitData:
    """Decode and crop `clips` (manifest Clips) exactly as stage one does; attach the generator's truth."""
    from pipeline.extract.runner import ClipTask, Failed, prepared_stream
    from pipeline.extract.video import sample_indices

    specs, frames = _specs_by_id(cfg)
    emotions = list(cfg.data.emotions)
    tasks = [ClipTask(i, c.id, c.video) for i, c in enumerate(clips)]
    idx = sample_indices(frames, cfg.extract.num_frames)
    ids, faces, video, emo, au, env, drawn = [], [], [], [], [], [], []
    for item in prepared_stream(tasks, cfg.extract, workers):
        if isinstance(item, Failed):
            raise UserError(f"demo fit: clip {item.clip_id} could not be prepared: {item.reason}")
        spec = specs.get(item.clip_id)
        if spec is None:
            raise UserError(f"demo fit: clip {item.clip_id} is not one the generator made (demo.json differs)")
        tgt, e = frame_targets(spec, idx, au_names)
        ids.append(item.clip_id)
        faces.append(item.faces)
        video.append(item.video)
        emo.append(emotions.index(spec.emotion))
        au.append(tgt)
        env.append(e)
        drawn.append(list(spec.aus))
    return FitData(ids, np.stack(faces), np.stack(video), np.asarray(emo, np.int64), np.stack(au),
                   np.stack(env), drawn)


# ---- fitting --------------------------------------------------------------------------------------------

def _to_float(x: np.ndarray):
    """uint8 channels-last images (..., H, W, 3) -> float tensor (..., 3, H, W) in [0, 1]."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.movedim(-1, -3).float().div_(255.0)


def _train_loop(model, params, inputs, targets, loss_fn, settings: FitSettings, epochs: int, batch: int,
                seed: int, say: Callable[[str], None], what: str) -> dict:
    """Plain AdamW + cosine schedule over (inputs, targets) tensors; returns the optimiser's state."""
    import torch

    n = inputs.shape[0]
    steps = epochs * max(1, -(-n // batch))
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total, seen = 0.0, 0
        for s in range(0, n, batch):
            sel = order[s:s + batch]
            if len(sel) < 2:  # BatchNorm needs two samples
                continue
            loss = loss_fn(model, inputs[sel], targets[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(sel)
            seen += len(sel)
        if (epoch + 1) % max(1, epochs // 4) == 0 or epoch + 1 == epochs:
            say(f"{what}: epoch {epoch + 1}/{epochs} loss {total / max(seen, 1):.4f} ({time.perf_counter() - t0:.0f}s)")
    model.eval()
    return opt.state_dict()


def _expressed(cfg, data: FitData) -> np.ndarray:
    """(N, F) bool: frames whose emotion label is visible (envelope >= EXPRESSED; every frame of a neutral clip)."""
    emotions = list(cfg.data.emotions)
    neutral = emotions.index("neutral") if "neutral" in emotions else -1
    return (data.envelope >= EXPRESSED) | (data.emotion[:, None] == neutral)


def fit_anfl(cfg, data: FitData, settings: FitSettings, say) -> tuple["object", "object", dict]:
    """ANFL on face crops against each frame's active AUs (BCE on its 41 confidences), its trunk also
    classifying the emotion of the expressive frames (cross-entropy of a linear head on the pooled trunk
    features: the ER network's head, so ER starts from this trunk). -> (ANFL, emotion head, optimizer state)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from pipeline.extract.networks.anfl import ANFL_BUILDERS, anfl_preprocess
    from pipeline.extract.networks.extractors import _seeded
    from pipeline.extract.video import even_subset

    frames = even_subset(data.au.shape[1], cfg.extract.au_frames) if settings.au_frames_only else slice(None)
    faces, au = data.faces[:, frames], data.au[:, frames]
    n, f, a = au.shape
    x = anfl_preprocess(_to_float(faces.reshape(n * f, *faces.shape[2:])), cfg.extract.face_size)
    emo = np.repeat(data.emotion, f).astype(np.float32)[:, None]                       # N*F, 1
    weight = _expressed(cfg, data)[:, frames].reshape(-1, 1).astype(np.float32)        # N*F, 1
    y = torch.from_numpy(np.concatenate([au.reshape(n * f, a), emo, weight], axis=1))  # N*F, A + 2
    anfl = _seeded(ANFL_BUILDERS[cfg.extract.au_model], settings.seed + 1)
    head = _seeded(lambda: nn.Linear(anfl.backbone.num_features, len(cfg.data.emotions)), settings.seed + 4)
    both = nn.ModuleDict({"anfl": anfl, "emotion": head})

    def loss_fn(m, xb, yb):
        tokens = m["anfl"].backbone(xb)                                  # B, L, C
        _, conf = m["anfl"].head(m["anfl"].global_linear(tokens))        # B, 41 cosine confidences in [0, 1]
        loss_au = F.binary_cross_entropy(conf.clamp(1e-4, 1 - 1e-4), yb[:, :a])
        ce = F.cross_entropy(m["emotion"](tokens.mean(dim=1)), yb[:, a].long(), reduction="none")  # B
        w = yb[:, a + 1]
        return loss_au + (ce * w).sum() / w.sum().clamp(min=1.0)

    opt_state = _train_loop(both, both.parameters(), x, y, loss_fn, settings, settings.epochs, settings.batch_size,
                            settings.seed + 1, say, f"ANFL ({cfg.extract.au_model}, {len(x)} crops; AUs + emotion)")
    # the file holds ANFL's own optimiser state only (as OpenGraphAU's), not the emotion head's
    names = {id(p): k for k, p in both.named_parameters()}
    order = [names[id(p)] for p in both.parameters()]
    keep = [i for i, k in enumerate(order) if k.startswith("anfl.")]
    opt_state = {"state": {j: opt_state["state"][i] for j, i in enumerate(keep) if i in opt_state["state"]},
                 "param_groups": [{**g, "params": list(range(len(keep)))} for g in opt_state["param_groups"]]}
    return anfl, head, opt_state


def fit_er(cfg, data: FitData, settings: FitSettings, say, start=None) -> "object":
    """timm ER network on the expressive frames' face crops, against the clip's emotion -> the fitted model.

    With `start` = (fitted ANFL, its emotion head) and the same ResNet depth, the network starts from ANFL's
    trunk and that head (as the originals start from ImageNet weights) and is fine-tuned for
    `settings.er_finetune_epochs`; without it, it trains from scratch for `settings.epochs`."""
    import torch
    import torch.nn.functional as F

    from pipeline.extract.networks.extractors import _normalise, _seeded
    from pipeline.extract.networks.resnet_er import IMAGENET_MEAN, IMAGENET_STD, build_resnet_er, er_forward

    rows, cols = np.nonzero(_expressed(cfg, data))
    x = _normalise(_to_float(data.faces[rows, cols]), IMAGENET_MEAN, IMAGENET_STD)   # M, 3, S, S
    y = torch.from_numpy(data.emotion[rows])
    model = _seeded(lambda: build_resnet_er(len(cfg.data.emotions), cfg.extract.er_model), settings.seed)
    what = f"ER ({cfg.extract.er_model}, {len(x)} crops)"

    def loss_fn(m, xb, yb):
        return F.cross_entropy(er_forward(m, xb)[1], yb)

    epochs = settings.epochs
    if start is not None:
        anfl, head = start
        sd = {k[len("backbone."):]: v for k, v in anfl.state_dict().items() if k.startswith("backbone.")}
        sd.update({f"fc.{k}": v for k, v in head.state_dict().items()})
        own = model.state_dict()
        if set(sd) != set(own) or any(sd[k].shape != own[k].shape for k in own):
            raise UserError(f"demo fit: ANFL's trunk does not match extract.er_model={cfg.extract.er_model!r} "
                            "(the same ResNet depth is needed to start ER from it)")
        model.load_state_dict({k: v.detach().clone() for k, v in sd.items()})
        epochs = settings.er_finetune_epochs
        what += ", from ANFL's trunk"
    if epochs:
        tuned = dataclasses.replace(settings, lr=settings.lr / 4) if start is not None else settings
        _train_loop(model, model.parameters(), x, y, loss_fn, tuned, epochs, settings.batch_size,
                    settings.seed, say, what)
    model.eval()
    return model


def fit_swin(cfg, data: FitData, settings: FitSettings, say) -> tuple["object", "object"]:
    """Video Swin + a linear head on the mean token, as a clip classifier -> (backbone, head)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from pipeline.extract.networks.extractors import _normalise, _seeded
    from pipeline.extract.networks.video_swin import KINETICS_MEAN, KINETICS_STD, SWIN_BUILDERS, forward_tokens

    x = _normalise(_to_float(data.video).movedim(-3, 1), KINETICS_MEAN, KINETICS_STD)   # N, 3, T, H, W
    y = torch.from_numpy(data.emotion)
    backbone = _seeded(SWIN_BUILDERS[cfg.extract.swin], settings.seed + 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed + 3)
        head = nn.Linear(backbone.num_features, len(cfg.data.emotions))
    both = nn.ModuleDict({"backbone": backbone, "head": head})

    def loss_fn(m, xb, yb):
        return F.cross_entropy(m["head"](forward_tokens(m["backbone"], xb).mean(dim=1)), yb)

    _train_loop(both, both.parameters(), x, y, loss_fn, settings, settings.swin_epochs,
                max(2, settings.batch_size // 4), settings.seed + 2, say, f"Video Swin ({cfg.extract.swin}, {len(x)} clips)")
    return backbone, head


# ---- the originals' layouts -----------------------------------------------------------------------------

def _stage_block(m: re.Match) -> str:
    k, j, rest = int(m["k"]), m["j"], m["rest"]
    rest = re.sub(r"^mlp\.0\.", "mlp.fc1.", re.sub(r"^mlp\.3\.", "mlp.fc2.", rest))
    return f"layers.{k // 2}.blocks.{j}.{rest}"


TO_VIDEO_SWIN = [
    (r"patch_embed\.(?P<m>proj|norm)\.(?P<p>weight|bias)", r"patch_embed.\g<m>.\g<p>"),
    (r"features\.(?P<k>\d*[02468])\.(?P<j>\d+)\.(?P<rest>(?:norm1|norm2|attn\.qkv|attn\.proj|mlp\.0|mlp\.3)"
     r"\.(?:weight|bias)|attn\.relative_position_bias_table|attn\.relative_position_index)", _stage_block),
    (r"features\.(?P<k>\d*[13579])\.(?P<rest>reduction\.weight|norm\.weight|norm\.bias)",
     lambda m: f"layers.{int(m['k']) // 2}.downsample.{m['rest']}"),
    (r"norm\.(?P<p>weight|bias)", r"norm.\g<p>"),
]
"""torchvision `SwinTransformer3d` names -> the original Video Swin backbone's names (the inverse of
`pipeline.extract.networks.video_swin.FROM_VIDEO_SWIN`; `relative_position_index` kept, as the originals hold it)."""


def video_swin_checkpoint(backbone, head, meta: dict) -> dict:
    """{'meta', 'state_dict': {'backbone.<original names>', 'cls_head.fc_cls.*'}} as mmaction saves it."""
    from pipeline.checkpoints import apply_key_map

    sd, _ = apply_key_map(backbone.state_dict(), TO_VIDEO_SWIN, source="fitted Video Swin")
    out = {f"backbone.{k}": v.detach().clone() for k, v in sd.items()}
    out["cls_head.fc_cls.weight"] = head.weight.detach().clone()
    out["cls_head.fc_cls.bias"] = head.bias.detach().clone()
    return {"meta": meta, "state_dict": out}


def anfl_checkpoint(model, epoch: int, opt_state: dict) -> dict:
    """{'epoch', 'state_dict' with 'module.' keys (DataParallel), 'optimizer'} as OpenGraphAU saves it."""
    return {"epoch": epoch, "state_dict": {f"module.{k}": v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": opt_state}


def _save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


# ---- quality on the test split ---------------------------------------------------------------------------

def f1_scores(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-column F1 of 0/1 arrays (..., A); NaN where a column has neither positives nor predictions."""
    p = pred.reshape(-1, pred.shape[-1]).astype(bool)
    t = true.reshape(-1, true.shape[-1]).astype(bool)
    tp = (p & t).sum(0).astype(float)
    denom = p.sum(0) + t.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def evaluate(extractors, data: FitData, swin_head=None) -> dict:
    """The loaded extractors' quality on `data` (the test split) against the generator's truth."""
    import torch

    n, f = data.envelope.shape
    faces = _to_float(data.faces.reshape(n * f, *data.faces.shape[2:]))
    _, logits = extractors.er(faces)
    clip_logits = logits.reshape(n, f, -1).mean(dim=1)
    er_acc = float((clip_logits.argmax(-1).numpy() == data.emotion).mean())
    _, probs = extractors.au(faces)
    probs = probs.reshape(n, f, -1).numpy()
    names = extractors.au_names
    f1 = f1_scores(probs >= PROB_THRESHOLD, data.au)
    drawn = sorted({a for d in data.drawn for a in gt_au_names(d, names)}, key=names.index)
    per_au = {a: round(float(f1[names.index(a)]), 4) for a in drawn}
    main = [a for a in drawn if not a.startswith(("AUL", "AUR"))]
    clip_conf = probs.mean(axis=1)                                                     # N, A
    top3 = np.argsort(-clip_conf, axis=1, kind="stable")[:, :3]
    hits = [np.mean([names[j] in gt_au_names(d, names) for j in row]) for row, d in zip(top3, data.drawn) if d]
    out = {
        "clips": n,
        "er_clip_accuracy": round(er_acc, 4),
        "au_f1": per_au,
        "au_f1_mean_main": round(float(np.nanmean([per_au[a] for a in main])), 4),
        "au_f1_mean_all_drawn": round(float(np.nanmean(list(per_au.values()))), 4),
        "au_top3_precision": round(float(np.mean(hits)), 4) if hits else None,
        "chance_er_accuracy": round(1 / len(np.unique(data.emotion)), 4),
    }
    if swin_head is not None:
        x = _to_float(data.video).movedim(-3, 1)
        tokens = extractors.video(x)
        with torch.inference_mode():
            swin_logits = swin_head(tokens.mean(dim=1))
        out["swin_clip_accuracy"] = round(float((swin_logits.argmax(-1).numpy() == data.emotion).mean()), 4)
    return out


# ---- the cached step ---------------------------------------------------------------------------------------

def ensure_demo_extractors(cfg, say: Callable[[str], None] | None = None, force: bool = False) -> dict:
    """The fitted extractors of this config: reused when `fit_dir(cfg)` holds a record for `fit_key(cfg)`,
    else fitted now (minutes on a CPU). Returns the record's `extra` (files, their sha256s, the quality)."""
    from pipeline.records import read_record, status_of

    if cfg.data.format != "demo":
        raise UserError(f"extract.demo_fit needs the generator's ground truth (data.format=demo, not "
                        f"{cfg.data.format!r}); set extract.demo_fit=false and give weight files, or extract.random_init=true")
    out_dir = fit_dir(cfg)
    key = fit_key(cfg)
    if not force and status_of(out_dir, key) == "fresh":
        return read_record(out_dir)["extra"]
    say = say or (lambda text: log.warning("%s", text))
    from pipeline.chain.locks import hold_stage

    with hold_stage(out_dir, key, what=f"the demo extractor fit {out_dir}", report=say) as hold:
        if hold.waited and not force and status_of(out_dir, key) == "fresh":  # fitted by the process waited for
            return read_record(out_dir)["extra"]
        return fit_demo_extractors(cfg, out_dir, key, say)


def fit_demo_extractors(cfg, out_dir: Path, key: str, say: Callable[[str], None]) -> dict:
    """Fit, save in the originals' layouts, reload through `build_extractors`, measure on the test split,
    then write `stage.json` (last)."""
    import torch

    from pipeline.data.manifest import read_manifest
    from pipeline.extract.networks.anfl import AU_NAMES
    from pipeline.checkpoints import read_checkpoint
    from pipeline.extract.networks.extractors import build_extractors
    from pipeline.records import StageRecord, file_sha256, write_record

    settings = fit_settings(cfg)
    t0 = time.perf_counter()
    clips = read_manifest(cfg.manifest_path)
    train = [c for c in clips if c.split == "train"]
    test = [c for c in clips if c.split == "test"]
    if len(train) < 2 or not test:
        raise UserError(f"demo fit: needs training and test clips ({len(train)} train, {len(test)} test in "
                        f"{cfg.manifest_path})")
    say(f"demo extractors: fitting ER, ANFL and Video Swin on {len(train)} training clips "
        f"(cached in {out_dir}; once per generator version/seed and fit settings)")
    data = load_split(cfg, train, list(AU_NAMES), workers=cfg.extract.workers)
    t_data = time.perf_counter() - t0
    anfl, emotion_head, anfl_opt = fit_anfl(cfg, data, settings, say)
    er = fit_er(cfg, data, settings, say, start=(anfl, emotion_head) if settings.er_from_anfl else None)
    swin, head = fit_swin(cfg, data, settings, say)
    del data

    out_dir.mkdir(parents=True, exist_ok=True)
    names = file_names(cfg)
    _save({k: v.detach().clone() for k, v in er.state_dict().items()}, out_dir / names["er"])
    _save(anfl_checkpoint(anfl, settings.epochs, anfl_opt), out_dir / names["au"])
    meta = {"fitted_by": "pipeline.extract.demo_fit", "version": VERSION, "classes": list(cfg.data.emotions),
            "epochs": settings.swin_epochs}
    _save(video_swin_checkpoint(swin, head, meta), out_dir / names["swin"])
    t_fit = time.perf_counter() - t0 - t_data

    # reload through the loaders every preset uses, and measure on the held-out test clips
    ex = dataclasses.replace(cfg.extract, random_init=False, weights_dir=str(out_dir), er_weights=names["er"],
                             au_weights=names["au"], swin_weights=names["swin"])
    loaded = build_extractors(ex, len(cfg.data.emotions), "cpu")
    test_data = load_split(cfg, test, loaded.au_names, workers=cfg.extract.workers)
    saved = read_checkpoint(out_dir / names["swin"])["state_dict"]  # the classifier as the file holds it
    cls_head = torch.nn.Linear(*saved["cls_head.fc_cls.weight"].shape[::-1])
    cls_head.load_state_dict({"weight": saved["cls_head.fc_cls.weight"], "bias": saved["cls_head.fc_cls.bias"]})
    quality = evaluate(loaded, test_data, swin_head=cls_head.eval())
    (out_dir / QUALITY_FILE).write_text(json.dumps(quality, indent=2) + "\n")
    extra = {
        "files": names,
        "sha256": {k: file_sha256(out_dir / n) for k, n in names.items()},
        "quality": quality,
        "train_clips": len(train),
        "test_clips": len(test),
    }
    say(f"demo extractors: done in {time.perf_counter() - t0:.0f}s; test split: ER accuracy "
        f"{100 * quality['er_clip_accuracy']:.1f}%, AU F1 (mean over drawn AUs) {100 * quality['au_f1_mean_main']:.1f}")
    write_record(out_dir, StageRecord(
        stage=STAGE, key=key, version=VERSION, config=fit_slice(cfg), parents={},
        timings={"data": round(t_data, 2), "fit": round(t_fit, 2), "total": round(time.perf_counter() - t0, 2)},
        counts={"train_clips": len(train), "test_clips": len(test)}, extra=extra,
    ))
    return extra
