"""Stage keys and stage records: the rule that a cache never lies.

    key(stage) = sha256(stage name, stage code version,
                        canonical JSON of exactly the config fields this stage reads,
                        keys of its parent stages)

An output directory is complete only when its `stage.json` exists, parses, and carries the key
the directory is named for. The record is written last, atomically (temp file + rename), so a
crash at any moment leaves either no record (output counts as missing) or a whole one.

References: HF datasets `fingerprint.py` (parent fingerprint chained into the child), DVC's
`dict_hash` (sha256 over sorted-key JSON).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import UserError


def canonical_json(obj: Any) -> str:
    """The canonical JSON that keys hash: sorted keys, no spaces, floats as repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


RECORD_NAME = "stage.json"
KEY_DIR_LEN = 16  # directory names use the first 16 hex digits; the record holds the full key


def stage_key(stage: str, version: str, config_slice: dict, parents: dict[str, str] | None = None) -> str:
    """The content address of one stage output (full sha256 hex)."""
    payload = canonical_json(
        {"stage": stage, "version": str(version), "config": config_slice, "parents": dict(sorted((parents or {}).items()))}
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def short(key: str) -> str:
    """Directory name for a key."""
    return key[:KEY_DIR_LEN]


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes the outputs (recorded, not keyed)."""
    return dict(_library_versions())


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "transformers", "tokenizers", "zarr", "numpy", "decord", "av", "pycocoevalcap"):
        # the installed distribution's version first: some packages (pycocoevalcap) carry no __version__
        try:
            out[name] = version(name)
            continue
        except PackageNotFoundError:
            pass
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__version__", None):
            out[name] = str(mod.__version__)   # importable without distribution metadata (a source tree)
    return out


@dataclass
class StageRecord:
    """What `stage.json` holds."""

    stage: str
    key: str
    version: str
    config: dict
    parents: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=library_versions)
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {
            "stage": self.stage, "key": self.key, "version": self.version, "config": self.config,
            "parents": self.parents, "timings": self.timings, "counts": self.counts, "extra": self.extra,
            "libraries": self.libraries, "created": self.created,
        }


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_record(out_dir: Path, record: StageRecord) -> Path:
    """Write `stage.json` into `out_dir`, last and atomically. Returns its path."""
    path = Path(out_dir) / RECORD_NAME
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
    return path


class DamagedRecordError(UserError):
    """A `stage.json` that exists but cannot be read (truncated, not JSON, wrong fields)."""


def read_record(out_dir: Path) -> dict | None:
    """The record of `out_dir`, None when there is none; raises DamagedRecordError when it is damaged."""
    path = Path(out_dir) / RECORD_NAME
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedRecordError(
            f"{path}: damaged stage record ({e}); the output is treated as missing - delete {path.parent} "
            "or rerun the stage to rebuild it"
        ) from None
    if not isinstance(rec, dict) or not {"stage", "key", "config", "parents"} <= rec.keys():
        raise DamagedRecordError(f"{path}: stage record lacks stage/key/config/parents; rerun the stage to rebuild it")
    return rec


def is_complete(out_dir: Path, key: str) -> bool:
    """True when `out_dir` holds an intact record for exactly `key`."""
    try:
        rec = read_record(out_dir)
    except DamagedRecordError:
        return False
    return rec is not None and rec.get("key") == key


def status_of(out_dir: Path, key: str) -> str:
    """'fresh' (complete for this key), 'damaged' (record unreadable), 'partial' (dir without record) or 'missing'."""
    out_dir = Path(out_dir)
    try:
        rec = read_record(out_dir)
    except DamagedRecordError:
        return "damaged"
    if rec is not None:
        return "fresh" if rec.get("key") == key else "stale"
    return "partial" if out_dir.exists() else "missing"


# ---- content hashes of inputs ------------------------------------------------------------------

def file_sha256(path: Path, memo_dir: Path | None = None, write_memo: bool = True) -> str:
    """sha256 of a file; memoised by (absolute path, size, mtime) in `memo_dir/hashes.json` when given,
    so big checkpoints are hashed once, not on every `ecpa status` (`write_memo=False`: read the memo only)."""
    path = Path(path)
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = Path(memo_dir) / "hashes.json" if memo_dir else None
    memo: dict = {}
    if memo_file and memo_file.exists():
        try:
            memo = json.loads(memo_file.read_text())
        except json.JSONDecodeError:
            memo = {}
        if ident in memo:
            return memo[ident]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if memo_file and write_memo:
        memo[ident] = digest
        atomic_write_text(memo_file, json.dumps(memo, indent=1))
    return digest


def diff_configs(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two (nested) config slices."""
    changed = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        name = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            changed += diff_configs(a, b, name + ".")
        elif a != b:
            changed.append(name)
    return changed


def save_figure(fig, path: Path | str, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically (temp file beside it, then rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path
