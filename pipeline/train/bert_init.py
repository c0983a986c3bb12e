"""Initialise ECPA's transformer from a local bert-base-uncased folder (SwinBERT's `--load_partial_weights`).

The folder is in the Hugging Face layout: `config.json` plus `model.safetensors` (preferred) or
`pytorch_model.bin`, as `BertForMaskedLM.save_pretrained` writes it or as the hub ships it. An explicit key
map fills:

    bert.embeddings.{word,position,token_type}_embeddings   -> word/position/token_type_embeddings
    bert.embeddings.LayerNorm                                -> emb_norm
    bert.encoder.layer.<i>.*                                 -> encoder.layer.<i>.* (same BertLayer names)
    cls.predictions.transform.{dense,LayerNorm}              -> mlm_transform.{0,2}
    cls.predictions.bias                                     -> mlm_bias (decoder.weight is tied to the words)

Older files name LayerNorm parameters `gamma`/`beta`; they are read as `weight`/`bias`. The pooler, the
next-sentence head and the tied decoder are dropped by name; any other key, and any missing BERT
parameter, is refused with the list. Position embeddings keep the first rows the model has (BERT has 512).
The video projection, the prompts, the class tokens, the sparse mask and the emotion head stay freshly
initialised, as in SwinBERT.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from pipeline.checkpoints import CheckpointError, apply_key_map, check_and_load, read_checkpoint

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_P = r"(?:bert\.)?"
RULES = [
    (_P + r"embeddings\.word_embeddings\.weight", "word_embeddings.weight"),
    (_P + r"embeddings\.position_embeddings\.weight", "position_embeddings.weight"),
    (_P + r"embeddings\.token_type_embeddings\.weight", "token_type_embeddings.weight"),
    (_P + r"embeddings\.LayerNorm\.(weight|bias)", r"emb_norm.\1"),
    (_P + r"encoder\.layer\.(\d+)\.(.+)", r"encoder.layer.\1.\2"),
    (r"cls\.predictions\.transform\.dense\.(weight|bias)", r"mlm_transform.0.\1"),
    (r"cls\.predictions\.transform\.LayerNorm\.(weight|bias)", r"mlm_transform.2.\1"),
    (r"cls\.predictions\.bias", "mlm_bias"),
]
SKIP = [
    _P + r"embeddings\.position_ids",
    _P + r"pooler\..+",
    r"cls\.seq_relationship\..+",
    r"cls\.predictions\.decoder\.(weight|bias)",   # tied to the word embeddings / to cls.predictions.bias
]
FRESH = [r"video_proj\..+", r"er_prompt\..+", r"au_prompt\..+", r"class_tokens", r"sparse_logits",
         r"emotion_head\..+"]
"""ECPA parameters BERT does not have: they keep their fresh initialisation."""

CONFIG_FIELDS = {"hidden_size": "hidden", "num_hidden_layers": "layers", "num_attention_heads": "heads",
                 "intermediate_size": "intermediate"}


def _legacy_names(sd: dict) -> dict:
    """`LayerNorm.gamma` / `.beta` (old BERT files) -> `.weight` / `.bias`."""
    out = {}
    for k, v in sd.items():
        out[re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k))] = v
    return out


def read_bert_folder(path: str | Path) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """(config.json as a dict, the state dict, the weight file) of a Hugging Face BERT folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"model.init_from={path}: not a folder (expected a bert-base-uncased folder "
                              f"with config.json and {' or '.join(WEIGHT_FILES)})")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing (model.init_from needs the model's config.json)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)}); this folder holds "
                              f"{', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'}")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(weights))
    else:
        obj = read_checkpoint(weights)
        if not isinstance(obj, dict):
            raise CheckpointError(f"{weights}: expected a state dict, got {type(obj).__name__}")
        sd = obj
    return config, _legacy_names(sd), weights


def load_bert_init(model, path: str | Path) -> Path:
    """Fill `model` (an `ECPA`) from the BERT folder at `path`; returns the weight file read."""
    config, sd, weights = read_bert_folder(path)
    wrong = [f"{hf}={config.get(hf)} vs model.{ours}={getattr(model.cfg, ours)}"
             for hf, ours in CONFIG_FIELDS.items() if config.get(hf) != getattr(model.cfg, ours)]
    if config.get("vocab_size") != model.vocab_size:
        wrong.append(f"vocab_size={config.get('vocab_size')} vs the tokenizer's {model.vocab_size} (set model.tokenizer "
                     f"to the same folder's vocab.txt)")
    if wrong:
        raise CheckpointError(f"{weights}: does not fit the configured transformer: {'; '.join(wrong)}")
    if "cls.predictions.bias" not in sd and "cls.predictions.decoder.bias" in sd:
        sd["cls.predictions.bias"] = sd["cls.predictions.decoder.bias"]
    mapped, _ = apply_key_map(sd, RULES, skip=SKIP, source=str(weights))
    pos = mapped.get("position_embeddings.weight")
    n_pos = model.position_embeddings.weight.shape[0]
    if pos is not None:
        if pos.shape[0] < n_pos:
            raise CheckpointError(f"{weights}: {pos.shape[0]} position embeddings, the model needs {n_pos}")
        mapped["position_embeddings.weight"] = pos[:n_pos].clone()
    mapped = {k: v.float() for k, v in mapped.items()}
    check_and_load(model, mapped, source=str(weights), keep_model=FRESH)
    return weights


__all__ = ["load_bert_init", "read_bert_folder"]
