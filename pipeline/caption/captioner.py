"""Use a trained model on any video: `Captioner`, built from a run folder or an exported model folder.

    video -> decode, find faces, crops            pipeline.extract.runner.prepare_clip   (stage one's code)
          -> ResNet50-ER, ANFL, Video Swin         pipeline.extract.runner.run_extractors (stage one's code)
          -> per-clip arrays in the store's dtypes  (what `ecpa caption` reads from the Zarr store)
          -> caption + emotion                     pipeline.caption.decoding.decode_with_emotion

Nothing is written into a dataset cache: the features of a new video live in memory only.

The extractors run with the settings the model was trained on (`extract.*` of its run) and with the same
checkpoint files: their sha256 is recorded with the run (the extract stage's record) and checked before
the networks are built; a different file is refused, naming it. Random-init extractors (demo, tests) are
rebuilt from their recorded seed, so they compute the features the run was trained on.

A clip of the training dataset therefore gets the features the store holds for it and the caption
`ecpa caption` wrote (tests/stages/test_predict.py checks it).

`captioner_from_run(run_dir)` reads a run folder; `pipeline.caption.bundle.load_captioner(folder)` an exported one.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

from pipeline.chain.layout import CONFIG_FILE, extract_dir
from pipeline.config import ExtractConfig
from pipeline.errors import UserError
from pipeline.train.data import FEATURE_ARRAYS

RANDOM_INIT = "random-init"

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts")
"""File suffixes taken as videos when a folder is given."""

_PER_CLIP_DIMS = {"vid": 2, "er": 2, "au_feats": 3, "au_probs": 2}
"""Dimensions of one clip's array (no batch axis): (L, C), (F, D_er), (F_au, A, D_au), (F_au, A)."""
_STORE_DTYPES = {"vid": torch.float16, "er": torch.float16, "au_feats": torch.float16, "au_probs": torch.float32}
"""The dtypes the store holds (and `ecpa caption` feeds the model)."""


@dataclass
class Prediction:
    """What the model says about one video (or one set of features)."""

    video: str
    caption: str
    emotion: str | None
    """Predicted emotion class name (None when the model has no emotion head)."""
    emotion_prob: float | None
    """Its softmax probability."""
    top_aus: list[tuple[str, float]] = field(default_factory=list)
    """The AUs of highest clip-level confidence (mean over the ANFL frames), with that confidence."""

    def to_dict(self) -> dict:
        return {"video": self.video, "caption": self.caption, "emotion": self.emotion,
                "emotion_prob": self.emotion_prob,
                "top_aus": [{"au": name, "confidence": conf} for name, conf in self.top_aus]}


@dataclass
class VideoFailure:
    """A video that could not be used, with the reason (as stage one words it)."""

    video: str
    reason: str

    def to_dict(self) -> dict:
        return {"video": self.video, "error": self.reason}


@dataclass
class ExtractorSetup:
    """How stage one ran for a model: its settings, the identity of its checkpoints, the random-init seed."""

    extract: ExtractConfig
    num_emotions: int
    """E of the ER network (the dataset's emotion classes)."""
    weights: dict[str, str]
    """{'er', 'au', 'swin'} -> checkpoint sha256, or 'random-init'."""
    seed: int = 0
    """Seed of random-init extractors (stage one's)."""

    def to_dict(self) -> dict:
        return {"extract": asdict(self.extract), "num_emotions": self.num_emotions, "weights": dict(self.weights),
                "seed": self.seed}

    @classmethod
    def from_dict(cls, d: Mapping, source: str) -> "ExtractorSetup":
        try:
            ex = ExtractConfig(**d["extract"])
            return cls(extract=ex, num_emotions=int(d["num_emotions"]), weights=dict(d["weights"]),
                       seed=int(d.get("seed", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{source}: not a valid extractor description ({type(e).__name__}: {e})") from None

    @property
    def random_init(self) -> bool:
        return all(v == RANDOM_INIT for v in self.weights.values())


def check_weights(setup: ExtractorSetup) -> None:
    """Refuse checkpoint files that are missing or are not the ones the model was trained on (by sha256)."""
    from pipeline.extract.networks.extractors import resolve_weights
    from pipeline.records import file_sha256

    kinds = set(setup.weights.values())
    if RANDOM_INIT in kinds and len(kinds) > 1:
        raise UserError(f"extractor weights partly random-init ({setup.weights}); this pipeline builds all three "
                        "random or none")
    if setup.random_init:
        return
    paths = resolve_weights(setup.extract)  # missing files: WeightsMissingError naming each
    what = {"er": "ResNet50-ER", "au": "ANFL", "swin": "Video Swin"}
    bad = []
    for k, path in paths.items():
        got = file_sha256(path)
        if got != setup.weights.get(k):
            bad.append(f"{what[k]} checkpoint {path} has sha256 {got[:16]}..., the model was trained on features "
                       f"of {str(setup.weights.get(k))[:16]}...")
    if bad:
        raise UserError("; ".join(bad) + " (point extract.weights_dir / --weights-dir at the checkpoints the model "
                        "was trained with)")


class Captioner:
    """A trained ECPA model plus the stage-one extractors it was trained on.

    `caption(video)` -> Prediction; `caption_videos(paths)` -> one Prediction or VideoFailure per path, batched;
    `caption_features(features)` -> Predictions for features already extracted (store arrays)."""

    def __init__(self, model, tokenizer, emotions: list[str], setup: ExtractorSetup, *, au_names: list[str],
                 shapes: Mapping[str, int], beam_size: int = 1, max_length: int = 20, length_penalty: float = 1.0,
                 top_aus: int = 3, source: str = "", words_only: bool = False, no_repeat_ngram: int = 0):
        if len(emotions) != model.num_emotions:
            raise UserError(f"{source}: {len(emotions)} emotion class names for a model of {model.num_emotions} classes")
        self.model, self.tokenizer = model, tokenizer
        self.emotions, self.setup, self.au_names = list(emotions), setup, list(au_names)
        self.shapes = dict(shapes)
        self.beam_size, self.max_length, self.length_penalty = beam_size, max_length, length_penalty
        self.top_aus = top_aus
        self.source = source
        self.words_only = words_only and tokenizer.caption_pieces is not None
        self.no_repeat_ngram = no_repeat_ngram
        """Decode only word pieces seen in the training captions (caption.vocabulary=train), as `ecpa caption`."""
        self._extractors = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- stage one on new videos -----------------------------------------------------------------
    @property
    def extractors(self):
        """The frozen networks, built on first use (checkpoints checked against the recorded sha256s)."""
        if self._extractors is None:
            from pipeline.extract.networks.extractors import build_extractors

            ex = self.setup.extract
            ex.random_init = self.setup.random_init
            check_weights(self.setup)
            with tempfile.TemporaryDirectory() as memo:  # each checkpoint hashed once, nothing left behind
                self._extractors = build_extractors(ex, self.setup.num_emotions, self.device, seed=self.setup.seed,
                                                    memo_dir=Path(memo))
        return self._extractors

    def caption(self, video: str | Path) -> Prediction:
        """Caption one video file; UserError naming the file when it cannot be used."""
        out = next(iter(self.caption_videos([video], batch_size=1)))
        if isinstance(out, VideoFailure):
            raise UserError(f"{out.video}: {out.reason}")
        return out

    def caption_videos(self, videos: Iterable[str | Path], *, batch_size: int = 4, workers: int = 0,
                       on_item: Callable[[Prediction | VideoFailure], None] | None = None
                       ) -> Iterator[Prediction | VideoFailure]:
        """Decode, extract and caption `videos` in batches of `batch_size` (decoding in `workers` processes ahead
        of the device). Yields one result per video, in input order; a video that cannot be used (missing, not
        a video, no frames ...) gives a VideoFailure and the others go on."""
        from pipeline.extract.runner import ClipTask, Failed, prepared_stream, run_extractors

        tasks = [ClipTask(i, Path(v).name, str(v)) for i, v in enumerate(videos)]
        ex = self.setup.extract
        if not tasks:
            return
        extractors = self.extractors
        done: dict[int, Prediction | VideoFailure] = {}
        pending = []
        next_out = 0

        def flush():
            if pending:
                arrays = run_extractors(extractors, pending, ex, self.device)
                feats = {name: np.stack([a[store] for a in arrays]) for name, store in FEATURE_ARRAYS.items()}
                for p, pred in zip(pending, self.caption_features(feats, videos=[tasks[p.index].video for p in pending])):
                    done[p.index] = pred
                pending.clear()

        for item in prepared_stream(tasks, ex, workers):
            if isinstance(item, Failed):
                done[item.index] = VideoFailure(item.video, item.reason)
            else:
                pending.append(item)
                if len(pending) >= batch_size:
                    flush()
            while next_out in done and not pending:
                result = done.pop(next_out)
                if on_item:
                    on_item(result)
                yield result
                next_out += 1
        flush()
        while next_out in done:
            result = done.pop(next_out)
            if on_item:
                on_item(result)
            yield result
            next_out += 1

    # ---- stage two on features -------------------------------------------------------------------
    def caption_features(self, features: Mapping, videos: list[str] | None = None) -> list[Prediction]:
        """Predictions for extracted features: a mapping with the store's array names (`vid/tokens`, `er/feats`,
        `au/feats`, `au/probs`) or the batch names (`vid`, `er`, `au_feats`, `au_probs`), numpy or torch, for
        one clip (no leading axis) or a batch. Shapes must fit the model (the extraction it was trained on)."""
        from pipeline.caption.decoding import decode_with_emotion

        batch = self._as_batch(features)
        b = batch["vid"].shape[0]
        videos = list(videos) if videos is not None else [f"features[{i}]" for i in range(b)]
        ids, emo = decode_with_emotion(self.model, batch, self.tokenizer, beam_size=self.beam_size,
                                       max_length=self.max_length, length_penalty=self.length_penalty,
                                       words_only=self.words_only, no_repeat_ngram=self.no_repeat_ngram)
        conf = batch["au_probs"].float().mean(dim=1)                                # (B, A)
        k = min(self.top_aus, conf.shape[1])
        top = conf.topk(k, dim=1) if k > 0 else None
        out = []
        for i in range(b):
            emotion = prob = None
            if emo is not None:
                p = emo[i].float().softmax(-1)
                j = int(p.argmax())
                emotion, prob = self.emotions[j], float(p[j])
            aus = [] if top is None else [(self.au_names[int(a)], float(c))
                                          for a, c in zip(top.indices[i], top.values[i])]
            out.append(Prediction(video=videos[i], caption=self.tokenizer.decode(ids[i]), emotion=emotion,
                                  emotion_prob=prob, top_aus=aus))
        return out

    def _as_batch(self, features: Mapping) -> dict[str, torch.Tensor]:
        store_to_batch = {store: name for name, store in FEATURE_ARRAYS.items()}
        batch = {}
        for key, value in features.items():
            name = store_to_batch.get(key, key)
            if name in _PER_CLIP_DIMS:
                batch[name] = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
        missing = [n for n in _PER_CLIP_DIMS if n not in batch]
        if missing:
            raise UserError(f"features lack {', '.join(FEATURE_ARRAYS[n] for n in missing)} (give the store arrays "
                            f"{', '.join(FEATURE_ARRAYS.values())})")
        single = batch["vid"].dim() == _PER_CLIP_DIMS["vid"]
        for name, t in batch.items():
            if t.dim() == _PER_CLIP_DIMS[name] and single:
                t = t[None]
            if t.dim() != _PER_CLIP_DIMS[name] + 1:
                raise UserError(f"features: {FEATURE_ARRAYS[name]} has shape {tuple(t.shape)}; expected "
                                f"{_PER_CLIP_DIMS[name]} dims per clip, with or without a leading clip axis")
            batch[name] = t.to(_STORE_DTYPES[name])
        B = batch["vid"].shape[0]
        s = self.shapes
        want = {"vid": (B, s["tokens"], s["channels"]), "er": (B, None, s["er_dim"]),
                "au_feats": (B, None, s["aus"], s["au_dim"]), "au_probs": (B, None, s["aus"])}
        for name, shape in want.items():
            got = tuple(batch[name].shape)
            if any(w is not None and w != g for w, g in zip(shape, got)):
                exp = tuple("*" if w is None else w for w in shape)
                raise UserError(f"features: {FEATURE_ARRAYS[name]} has shape {got}, the model reads {exp} "
                                "(features of another extraction: other extractors, frames or crop)")
        if batch["au_feats"].shape[1] != batch["au_probs"].shape[1]:
            raise UserError("features: au/feats and au/probs have different frame counts")
        return batch


# ---- from a run folder ---------------------------------------------------------------------------

def run_extractor_setup(run_dir: Path, cfg, seed: int) -> ExtractorSetup:
    """The extraction a run was trained on: its config's extract section and the checkpoint sha256s that
    the extract stage recorded (cache/<ds>/features/<extract-key>/stage.json, the run's parent)."""
    from pipeline.records import read_record

    run_dir = Path(run_dir)
    rec = read_record(run_dir)
    if rec is None or rec.get("stage") != "train":
        raise UserError(f"{run_dir}: not a finished training run (no train stage.json); run `ecpa train` first")
    ex_key = rec.get("parents", {}).get("extract")
    ex_dir = extract_dir(run_dir.parent.parent, str(ex_key))
    ex_rec = read_record(ex_dir) if ex_key else None
    if ex_rec is None or ex_rec.get("key") != ex_key:
        raise UserError(f"{ex_dir}: the extraction this run was trained on has no record any more, so the "
                        "extractor checkpoints it used cannot be named; rerun `ecpa extract` with the run's config")
    weights = ex_rec.get("config", {}).get("weights")
    if not isinstance(weights, dict) or set(weights) != {"er", "au", "swin"}:
        raise UserError(f"{ex_dir / 'stage.json'}: no extractor weight record (er, au, swin)")
    return ExtractorSetup(extract=cfg.extract, num_emotions=len(cfg.data.emotions), weights=weights, seed=seed)


def captioner_from_run(run_dir: Path | str, *, checkpoint: str = "best", device: str = "auto", seed: int = 0,
                       weights_dir: str | None = None, beam_size: int | None = None, max_length: int | None = None,
                       top_aus: int | None = None) -> Captioner:
    """A Captioner for the training run in `run_dir` (cache/<ds>/runs/<train-key>/), decoding as the run's
    config says (`caption.*`) unless `beam_size` / `max_length` are given. `seed`: stage one's random-init
    seed. `weights_dir`: where the extractor checkpoints are, when not where the run's config says."""
    from pipeline.config import load_config
    from pipeline.extract.networks.anfl import AU_NAMES
    from pipeline.train.loop import load_trained, resolve_device

    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: the run has no config.yaml; not a training run folder")
    cfg = load_config(cfg_path)
    setup = run_extractor_setup(run_dir, cfg, seed)
    if weights_dir:
        setup.extract.weights_dir = str(weights_dir)
    model, tok, info = load_trained(run_dir, checkpoint, resolve_device(device))
    if not max_length:
        from pipeline.train.tokenizer import data_length

        # caption.max_length=0: from the run's training captions, the rule `ecpa caption` keys by
        max_length = cfg.caption.max_length or data_length(cfg)[0]
    return Captioner(model, tok, list(cfg.data.emotions), setup, au_names=list(AU_NAMES),
                     shapes=info.get("meta", {}).get("shapes", {}),
                     beam_size=beam_size or cfg.caption.beam_size, max_length=max_length,
                     length_penalty=cfg.caption.length_penalty,
                     top_aus=cfg.model.top_k if top_aus is None else top_aus, source=str(run_dir),
                     words_only=cfg.caption.vocabulary == "train", no_repeat_ngram=cfg.caption.no_repeat_ngram)


def video_paths(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given (existing or not: a missing one is reported by the run); folders expand to the video
    files directly inside them (by suffix), sorted. UserError for a folder with no video in it."""
    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise UserError(f"{p}: no video files in this folder (suffixes {', '.join(VIDEO_SUFFIXES)})")
            out += found
        else:
            out.append(p)
    return out
