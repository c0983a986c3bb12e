"""The cache layout: every folder and file name of a dataset cache, once (DESIGN.md "Cache layout").

    cache/<dataset>/
      manifest.jsonl  config.yaml  fingerprints.json  hashes.json
      extractors/<fit-key>/                          the demo's fitted extractors (pipeline.extract.demo_fit)
      features/<extract-key>/{store.zarr, errors.jsonl, config.yaml, stage.json}
      runs/<train-key>/{checkpoints/, metrics.jsonl, config.yaml, stage.json, ...}
        captions/<caption-key>/{captions.json, references.json [, protocol.json], config.yaml, stage.json}
          scores/<score-key>/{scores.json, per_clip.csv, config.yaml, stage.json}
      sweeps/<name>/{sweep.csv, sweep.json, sweep.png}
      ablations/<name>/{ablation.csv, ablation.md, ablation.png}

Folders are named by the first 16 hex digits of the stage key (pipeline.records.short); the record names
the full key. Names that have an older home elsewhere are imported from it, never spelled twice.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.extract.store import STORE_NAME  # noqa: F401  (re-exported: the one home is the store module)
from pipeline.records import RECORD_NAME, short  # noqa: F401

FEATURES_DIR = "features"
RUNS_DIR = "runs"
CAPTIONS_DIR = "captions"
SCORES_DIR = "scores"
SWEEPS_DIR = "sweeps"
ABLATIONS_DIR = "ablations"
EXTRACTORS_DIR = "extractors"

MANIFEST_FILE = "manifest.jsonl"
CONFIG_FILE = "config.yaml"
"""The resolved config saved beside every output (and the dataset's data config at cache/<dataset>/)."""
ERRORS_NAME = "errors.jsonl"
"""Failed clips of an extraction, one JSON line each (pipeline.extract.runner)."""
CAPTIONS_FILE = "captions.json"
REFERENCES_FILE = "references.json"
PROTOCOL_FILE = "protocol.json"
SCORES_FILE = "scores.json"
PER_CLIP_FILE = "per_clip.csv"

SIBLINGS = {
    "extract": f"{FEATURES_DIR}/*",
    "train": f"{RUNS_DIR}/*",
    "caption": f"{RUNS_DIR}/*/{CAPTIONS_DIR}/*",
    "score": f"{RUNS_DIR}/*/{CAPTIONS_DIR}/*/{SCORES_DIR}/*",
}
"""Where the outputs of each stage live, relative to cache/<dataset>/ (earlier ones are compared against)."""


def extract_dir(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / FEATURES_DIR / short(key)


def run_dir(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / RUNS_DIR / short(key)


def caption_dir(run_folder: Path, key: str) -> Path:
    return Path(run_folder) / CAPTIONS_DIR / short(key)


def score_dir(caption_folder: Path, key: str) -> Path:
    return Path(caption_folder) / SCORES_DIR / short(key)


def store_path(extract_folder: Path) -> Path:
    return Path(extract_folder) / STORE_NAME


def sweep_dir(cache_dir: Path, name: str) -> Path:
    return Path(cache_dir) / SWEEPS_DIR / name
