"""Issue 8.5: a damaged cache is detected, reported with its repair, and never read as valid.

Each case copies the finished reference cache, damages it one way, then checks the three readers:

- `ecpa status --json`: the extract stage is 'damaged' (not 'fresh'), the reason names the repair;
- training (`pipeline.train.stage.run`): refuses with CacheMismatchError (a UserError for a damaged record)
  naming the damaged clips, before training on anything;
- `ecpa extract --verify`: repairs it - the damaged clips are computed again, every other clip is kept
  as it was (not recomputed), and the store equals the reference afterwards.

Damages: a chunk file of vid/tokens truncated, the same chunk with bytes flipped in place (same size),
a chunk file deleted (zarr would read zeros), a done-flag chunk damaged, stage.json truncated, and the
store missing a whole array.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.faults._harness import (FAULT_CLIPS, Row, chunk_file, copy_cache, differing_clips, logged_writes, read_log,
                                   report, store_path)

ROW = 5
"""The clip row the chunk damages hit."""


def _truncate_chunk(store: Path) -> list[int]:
    f = chunk_file(store, "vid/tokens", ROW)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return [ROW]


def _flip_chunk(store: Path) -> list[int]:
    f = chunk_file(store, "vid/tokens", ROW)
    data = bytearray(f.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    f.write_bytes(bytes(data))
    return [ROW]


def _delete_chunk(store: Path) -> list[int]:
    chunk_file(store, "au/feats", ROW).unlink()
    return [ROW]


def _damage_done_flag(store: Path) -> list[int]:
    chunk_file(store, "done", ROW).write_bytes(b"\x00garbage")
    return [ROW]


def _truncate_record(store: Path) -> list[int]:
    rec = store.parent / "stage.json"
    rec.write_text(rec.read_text()[:100])
    return []


def _drop_array(store: Path) -> list[int]:
    shutil.rmtree(store / "au" / "probs")
    return list(range(FAULT_CLIPS))


@dataclass
class Damage:
    name: str
    apply: Callable[[Path], list[int]]
    """Damages the store; returns the rows that must be recomputed."""
    repair: tuple[str, ...] = ("extract", "--verify")
    """The command that repairs it (a damaged record needs no verification: extract rebuilds it)."""
    status: tuple[str, ...] = ("status", "--json")
    """The status command that must show it: damage inside a chunk of the same or another size needs every
    chunk read (`--verify`); a missing file, array or flag is seen by a cheap structural check."""


DAMAGES = [
    # a damage inside a chunk (same or other size) needs every chunk read: `ecpa status --verify`
    Damage("chunk truncated", _truncate_chunk, status=("status", "--json", "--verify")),
    Damage("chunk bytes flipped", _flip_chunk, status=("status", "--json", "--verify")),
    Damage("chunk file deleted", _delete_chunk),
    Damage("done flag damaged", _damage_done_flag),
    Damage("stage.json truncated", _truncate_record, repair=("extract",)),
    Damage("array missing", _drop_array),
]


DAMAGE_PARAMS = [pytest.param(d, id=d.name) for d in DAMAGES]


@pytest.fixture
def damaged(fault_reference, request):
    """(cfg, store, rows to recompute) of a fresh copy of the reference cache with `request.param` applied."""
    damage: Damage = request.param
    demo = fault_reference.demo
    cache = demo.work / f"damaged_{request.node.name}".replace("[", "_").replace("]", "").replace(" ", "_")
    copy_cache(fault_reference.cache_root, cache)
    cfg = demo.cfg(cache)
    store = store_path(cfg)
    rows = damage.apply(store)
    return cfg, store, rows


_seen: dict[tuple[str, str], bool] = {}


@pytest.fixture(scope="module", autouse=True)
def _summary_row():
    yield
    if _seen:
        handled = sum(_seen.values())
        report(Row("damaged cache (status/train/repair)", len(_seen), len({d for d, _ in _seen}), 0, 0, 0,
                   handled == len(_seen), f"{handled}/{len(_seen)} damage x reader checks pass",
                   "open (fix pending): " + ", ".join(f"{d}:{r}" for (d, r), v in _seen.items() if not v)
                   if handled < len(_seen) else ""))


def _note(damage: str, reader: str, ok: bool) -> None:
    _seen[(damage, reader)] = ok


def _ids(cfg) -> list[str]:
    from pipeline.data.manifest import read_manifest

    return [c.id for c in read_manifest(cfg.manifest_path)]


@pytest.mark.parametrize("damaged", DAMAGE_PARAMS, indirect=True)
def test_status_shows_damaged(damaged, request):
    from stages.cli import app

    cfg, store, rows = damaged
    damage = next(d for d in DAMAGES if d.name == request.node.callspec.id)
    ok = False
    try:
        res = CliRunner().invoke(app, [*damage.status, "--preset", "demo", *_sets_args(cfg)])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        ex = next(r for r in out["stages"] if r["stage"] == "extract")
        assert ex["status"] == "damaged", f"extract shows {ex['status']!r} for a damaged store: {ex}"
        assert any(w in ex["reason"] for w in ("ecpa extract", "rebuild", "rerun")), f"no repair named: {ex}"
        ok = True
    finally:
        _note(request.node.callspec.id, "status", ok)


@pytest.mark.parametrize("damaged", DAMAGE_PARAMS, indirect=True)
def test_training_refuses_damaged_cache(damaged, request):
    from pipeline.errors import CacheMismatchError, UserError
    from pipeline.train import stage as train

    cfg, store, rows = damaged
    ok = False
    try:
        cfg.train.epochs = 1
        expected = CacheMismatchError if rows else UserError
        with pytest.raises(expected) as err:
            train.run(cfg)
        msg = str(err.value)
        ids = _ids(cfg)
        assert "ecpa extract" in msg, f"the message does not name the repair: {msg}"
        if 0 < len(rows) < FAULT_CLIPS:
            assert all(ids[r] in msg for r in rows), f"the message does not name the damaged clips: {msg}"
        ok = True
    finally:
        _note(request.node.callspec.id, "train", ok)


@pytest.mark.parametrize("damaged", DAMAGE_PARAMS, indirect=True)
def test_extract_verify_repairs_only_damaged_clips(damaged, fault_reference, request, tmp_path):
    from stages.cli import app

    cfg, store, rows = damaged
    damage = next(d for d in DAMAGES if d.name == request.node.callspec.id)
    ok = False
    try:
        log = tmp_path / "repair.log"
        with logged_writes(log):
            res = CliRunner().invoke(app, [*damage.repair, "--preset", "demo", *_sets_args(cfg)])
        assert res.exit_code == 0, res.output
        computed = sorted(set(read_log(log).started))
        assert computed == sorted(rows), f"recomputed rows {computed}, expected exactly the damaged {rows}"
        diffs = differing_clips(store, fault_reference.arrays)
        assert diffs == {}, f"after the repair the store differs from the reference: {diffs}"
        from pipeline.chain.plan import prepare_and_plan as plan

        assert plan(cfg, upto="extract")["extract"].status() == "fresh"
        ok = True
    finally:
        _note(request.node.callspec.id, "repair", ok)


def _sets_args(cfg) -> list[str]:
    """--set arguments that rebuild `cfg` from the demo preset (data root and cache of this trial)."""
    from tests.faults._harness import BASE_SETS

    sets = [f"data.root={cfg.data.root}", f"data.cache_root={cfg.data.cache_root}", *BASE_SETS]
    return [a for s in sets for a in ("--set", s)]

