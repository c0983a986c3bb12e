"""Stage one: decode each clip once; ResNet50-ER, ANFL and Video Swin features into Zarr.

Output: cache/<dataset>/features/<extract-key>/{store.zarr, errors.jsonl, config.yaml, stage.json}.

Reads top to bottom: plan (key, folder) -> reuse if fresh -> build the extractors (stops here when a
checkpoint is missing) -> lock the folder -> open the store of this key or create it -> match its rows
to the manifest's clips by video fingerprint (new clips get rows, replaced videos are redone, removed
ones keep their rows unused) -> extract the clips not done yet (in this process, or on dask workers)
-> errors.jsonl -> record, last, listing what was added, redone and dropped.
"""
from __future__ import annotations

import errno
import functools
import shutil
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from pipeline.config import Config, save_config, section_slice
from pipeline.errors import CacheMismatchError, UserError
from pipeline.records import StageRecord, file_sha256, read_record, write_record
from stages import _common
from stages._common import CacheOpt, PresetOpt, SetOpt, console, out, resolve_config, user_errors

VERSION = "4"
"""Bump when what extraction computes changes (decoding, sampling, extractor maths, store schema).
4: the key no longer holds the videos (per-clip fingerprints in the store), face/source array, fallback boxes."""

LIST_MAX = 200
"""Clip ids listed per kind (added, redone, dropped) in the stage record; the counts are always complete."""

SEED = 0
"""Seed of random-init extractors (the same in every process, so dask workers agree)."""


def weight_provenance(cfg: Config) -> dict[str, str]:
    """sha256 of each checkpoint file, 'random-init' under --random-init, 'missing:<path>' when absent
    (the run then stops with a message saying which file goes where)."""
    ex = cfg.extract
    if ex.random_init:
        return {"er": "random-init", "au": "random-init", "swin": "random-init"}
    out = {}
    for name, rel in (("er", ex.er_weights), ("au", ex.au_weights), ("swin", ex.swin_weights)):
        path = Path(rel) if Path(rel).is_absolute() else Path(ex.weights_dir) / rel
        out[name] = file_sha256(path, memo_dir=cfg.cache_dir) if path.is_file() else f"missing:{path}"
    return out


def config_slice(cfg: Config) -> dict:
    """Frame sampling, crops, extractor names, weight sha256s, emotion classes. Not batch size,
    workers or device (knobs), and not the weight file *paths* (their contents are keyed instead)."""
    s = section_slice(cfg.extract)
    for k in ("weights_dir", "er_weights", "au_weights", "swin_weights", "demo_fit", "demo_fit_epochs"):
        s.pop(k)
    s["weights"] = weight_provenance(cfg)
    s["num_emotions"] = len(cfg.data.emotions)
    return s


def clip_summary(p) -> dict | None:
    """For `ecpa status`: the manifest clips of the extract plan `p` against its store (pipeline.extract.store.clip_states:
    fresh, stale, missing, dropped) and, from the record, the face fallback counts; None when there is no store."""
    from pipeline.extract.store import clip_states, open_store

    store = p.out_dir / "store.zarr"
    if not (store / "zarr.json").exists():
        return None
    try:
        out: dict = clip_states(open_store(store), p.fingerprints or {})
    except (CacheMismatchError, OSError, ValueError, KeyError):
        return None  # a damaged store is reported by chain.store_damage
    try:
        counts = (read_record(p.out_dir) or {}).get("counts", {})
    except Exception:  # an unreadable record is reported as damaged elsewhere
        counts = {}
    out["failed"] = counts.get("failed", 0)
    out["fallback_clips"] = counts.get("fallback_clips", 0)
    out["fallback_frames"] = counts.get("fallback_frames", 0)
    return out


def clip_summary_text(c: dict) -> str:
    text = f"clips: {c['fresh']} fresh, {c['stale']} stale, {c['missing']} missing"
    if c.get("dropped"):
        text += f", {c['dropped']} dropped"
    if c.get("failed"):
        text += f" ({c['failed']} failed)"
    if c.get("fallback_clips"):
        text += f"; face fallback: {c['fallback_clips']} clips, {c['fallback_frames']} frames"
    return text


def _warn_random_init(provenance: dict[str, str]) -> None:
    random = [k for k, v in provenance.items() if v == "random-init"]
    if random:
        console.print(
            f"[bold black on yellow] WARNING [/] [bold yellow]RANDOM WEIGHTS for {', '.join(random)}: these features "
            "are for trials and tests only, not for results (extract.random_init=true)[/]", highlight=False)


def _open_or_create_store(store_path: Path, fingerprints: dict[str, str], shapes, attrs: dict, force: bool):
    """(group, RowSync): the store of this key (validated, its rows matched to the manifest clips by
    fingerprint: pipeline.extract.store.sync_rows), or a new empty one. A new store is created under a temporary name
    and renamed, so an interruption never leaves a half-made group. When clips change, the record goes first:
    a run killed from there on leaves a store that resumes, never a record vouching for other clips."""
    from pipeline.extract.store import RowSync, create_store, open_store, sync_rows, validate_store

    if force and store_path.exists():
        shutil.rmtree(store_path)
    if store_path.exists():
        g = open_store(store_path, mode="r+")
        try:
            validate_store(g, store_path, expect=shapes)
        except CacheMismatchError as e:
            raise CacheMismatchError(f"{e}; rerun with --force to start this extraction over") from None
        ahead = sync_rows(g, fingerprints, dry_run=True)
        if ahead.added or ahead.redone:
            (store_path.parent / "stage.json").unlink(missing_ok=True)
        return g, sync_rows(g, fingerprints)
    ids = list(fingerprints)
    tmp = store_path.with_name(store_path.name + ".creating")
    if tmp.exists():
        shutil.rmtree(tmp)
    create_store(tmp, ids, shapes, attrs, [fingerprints[c] for c in ids])
    tmp.rename(store_path)
    return open_store(store_path, mode="r+"), RowSync(added=ids, redone=[], dropped=[], rows={c: i for i, c in enumerate(ids)})


def _verify_existing(store_path: Path, out_dir: Path, ids: list[str], shapes) -> dict[int, str]:
    """`--verify`: check every done clip of an existing store (chunk files present, checksums valid, done flags
    readable; a missing array is recreated), then drop the record and clear the damaged clips' done flags, so
    the run that follows extracts exactly those. Returns {row: reason}; prints the damaged clips."""
    from pipeline.extract.integrity import clip_ids_of, describe, verify_store
    from pipeline.extract.store import open_store

    if not (store_path / "zarr.json").exists():
        return {}
    g = open_store(store_path, mode="r+")
    bad = verify_store(g, store_path, shapes=shapes, clip_ids=ids)
    if not bad:
        console.print(f"[green]verify[/]: every done clip of {store_path} is intact", highlight=False)
        return bad
    # the record goes first: a run killed from here on leaves a partial store that resumes, never a record
    # vouching for clips whose flags are being cleared
    (out_dir / "stage.json").unlink(missing_ok=True)
    done = g["done"]
    for row in bad:
        done[row] = False
    console.print(f"[bold yellow]verify[/]: {describe(bad, clip_ids_of(g), limit=50)} - computing them again",
                  highlight=False, soft_wrap=True)
    return bad


DISK_FULL = {errno.ENOSPC, errno.EFBIG, *([errno.EDQUOT] if hasattr(errno, "EDQUOT") else [])}
"""errno values of a write that failed for want of space (ENOSPC), file size limit (EFBIG) or quota (EDQUOT)."""


def disk_full_error(e: BaseException) -> OSError | None:
    """The disk-full OSError behind `e` (itself, a cause/context in its chain, or a member of an exception
    group: zarr writes through asyncio, dask re-raises a worker's exception in the driver), else None."""
    seen: set[int] = set()
    stack = [e]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in DISK_FULL:
            return cur
        stack += [cur.__cause__, cur.__context__, *getattr(cur, "exceptions", ())]
    return None


def face_counts(g, rows: np.ndarray) -> dict[str, int]:
    """Frames per face/source kind over the store `rows` (done clips), and the clips with any fallback frame."""
    from pipeline.extract.store import FACE_SOURCES

    if not len(rows):
        return {"fallback_frames": 0, "fallback_clips": 0, "face_frames": {k: 0 for k in FACE_SOURCES}}
    src = np.asarray(g["face/source"].get_orthogonal_selection((np.sort(rows), slice(None))))  # (n, F) u1
    fallback = FACE_SOURCES.index("fallback")
    return {"fallback_frames": int((src == fallback).sum()), "fallback_clips": int((src == fallback).any(axis=1).sum()),
            "face_frames": {k: int((src == i).sum()) for i, k in enumerate(FACE_SOURCES)}}


def _count_done(g) -> str:
    """Done clips of an open store, for the disk-full message ('?' when there is no store or its flags cannot
    be read: the message must not fail in turn)."""
    from pipeline.extract.integrity import read_done

    if g is None:
        return "?"
    try:
        return str(int(read_done(g).sum()))
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        console.print(f"[yellow]could not count the done clips[/] ({type(e).__name__}: {e})", highlight=False)
        return "?"


def run(cfg: Config, *, force: bool = False, progress: bool = True, strict: bool = False,
        scheduler: str | None = None, workers_cluster: int | None = None, extractors=None,
        verify: bool = False) -> dict:
    """Extract the features of every manifest clip into the store of this config's extract key.

    Resumes a partial store (done clips are skipped), records failed clips in errors.jsonl, writes
    stage.json only once every clip is done or failed. `strict`: raise UserError when any clip
    failed (after writing everything). `scheduler` (a dask address) or `workers_cluster` (a local dask
    cluster of that many processes) distribute the clips. `extractors` overrides the built bundle
    (tests: call-counting wrappers). `verify`: even when the record is fresh, check every done clip of the
    store (pipeline.extract.integrity.verify_store) and extract again exactly the damaged ones.

    A full disk (ENOSPC, EFBIG, EDQUOT) ends in a UserError saying how many clips are kept; rerunning the
    same command resumes."""
    from pipeline.extract.runner import (ERRORS_NAME, ClipTask, ExtractResult, StoreLock, append_error,
                                     extract_into_store, read_errors, resolve_device, write_errors)
    from pipeline.data.manifest import read_manifest
    from pipeline.extract.networks.extractors import build_extractors
    from stages.plan import plan

    p = plan(cfg, upto="extract")["extract"]
    if p.status() == "fresh" and not force and not verify:
        return read_record(p.out_dir)
    clips = read_manifest(cfg.manifest_path)
    ids = [c.id for c in clips]
    fps = p.fingerprints
    ex = cfg.extract
    device = resolve_device(ex.device)

    t0 = time.perf_counter()
    if extractors is None:  # stops here, before anything is written, when a checkpoint is missing
        extractors = build_extractors(ex, len(cfg.data.emotions), device if scheduler is None and not workers_cluster
                                      else "cpu", seed=SEED, memo_dir=cfg.cache_dir)
    from pipeline.extract.faces import MODES

    if ex.face_detector not in MODES:
        raise UserError(f"extract.face_detector={ex.face_detector!r}; expected one of {', '.join(MODES)}")
    if ex.face_detector == "mtcnn":  # its ONNX files must be there before any clip is decoded
        from pipeline.extract.mtcnn import _nets

        _nets()
    _warn_random_init(extractors.provenance)
    shapes = extractors.shapes(ex.num_frames, ex.au_frames, ex.crop)
    t_build = time.perf_counter() - t0

    p.out_dir.mkdir(parents=True, exist_ok=True)
    store_path = p.out_dir / "store.zarr"
    errors_path = p.out_dir / ERRORS_NAME
    attrs = {"extract": p.config, "extract_key": p.key, "au_names": list(extractors.au_names),
             "emotions": list(cfg.data.emotions), "weights": dict(extractors.provenance), "stage_version": VERSION}
    g = None
    try:
        with StoreLock(p.out_dir, str(store_path)):
            if force:
                (p.out_dir / "stage.json").unlink(missing_ok=True)
                errors_path.unlink(missing_ok=True)
            elif verify:
                _verify_existing(store_path, p.out_dir, ids, shapes)
            g, sync = _open_or_create_store(store_path, fps, shapes, attrs, force)
            save_config(cfg, p.out_dir / "config.yaml")
            rows = np.array([sync.rows[c] for c in ids], dtype=np.int64)  # store row of each manifest clip
            done_before = np.asarray(g["done"][:], dtype=bool)[rows]
            tasks = [ClipTask(int(rows[i]), c.id, c.video) for i, c in enumerate(clips) if not done_before[i]]
            old_errors = read_errors(errors_path)
            result = ExtractResult()
            failing: BaseException | None = None
            try:
                if tasks and (scheduler or workers_cluster):
                    from pipeline.extract.distributed import extract_distributed

                    result = extract_distributed(str(store_path), tasks, ex, len(cfg.data.emotions), seed=SEED,
                                                 scheduler=scheduler, n_workers=workers_cluster,
                                                 progress=functools.partial(_common.progress, every_n=ex.log_every)
                                                 if progress else False)
                elif tasks:
                    with _common.progress("extract", len(ids), enabled=progress, done=int(done_before.sum()),
                                          every_n=ex.log_every) as bar:
                        counts = {"failed": 0}

                        def on_clip(kind: str, n: int) -> None:
                            if kind == "failed":
                                counts["failed"] += n
                            bar.advance(n, status=f"{counts['failed']} failed" if counts["failed"] else "")

                        extract_into_store(g, tasks, extractors, ex, device, on_clip=on_clip, result=result,
                                           on_failure=lambda f: append_error(errors_path, f))
            except BaseException as e:
                failing = e
                raise
            finally:
                # Even when interrupted: errors.jsonl holds every known failure of a clip that is not done.
                # When the loop failed (a full disk, say), a failure here must not hide that error.
                try:
                    done_now = np.asarray(g["done"][:], dtype=bool)[rows]
                    done_ids = {ids[i] for i in np.flatnonzero(done_now)}
                    known = set(ids)  # a removed clip's old failure goes with it
                    failures = write_errors(errors_path, [r for r in [*old_errors, *(f.record() for f in result.failed)]
                                                          if r.get("clip_id") in known], done_ids)
                except (OSError, ValueError, RuntimeError) as e:
                    if failing is None:
                        raise
                    console.print(f"[yellow]could not rewrite {errors_path}[/] ({type(e).__name__}: {e}); the "
                                  "failures of this run are in it as appended lines", highlight=False)
            seconds = time.perf_counter() - t0

            n_done, n_failed = int(done_now.sum()), len(failures)
            faces = face_counts(g, rows[done_now])
            counts = {"clips": len(ids), "done": n_done, "failed": n_failed, "skipped": int(done_before.sum()),
                      "extracted": result.done, "added": len(sync.added), "redone": len(sync.redone),
                      "dropped": len(sync.dropped), "warnings": len(result.warnings), "decoders": result.decoders,
                      **faces}
            summary = {**counts, "seconds": round(seconds, 3),
                       "clips_per_s": round(result.done / max(result.seconds, 1e-9), 3) if result.done else 0.0}
            if n_done + n_failed != len(ids):
                raise RuntimeError(f"extraction ended with {len(ids) - n_done - n_failed} clips neither done nor failed")
            rec = StageRecord(
                stage="extract", key=p.key, version=VERSION, config=p.config, parents=p.parents,
                timings={"total_s": round(seconds, 3), "build_s": round(t_build, 3),
                         "loop_s": round(result.seconds, 3), "decode_s": round(result.decode_seconds, 3),
                         "face_s": round(result.face_seconds, 3), "wait_s": round(result.wait_seconds, 3),
                         "compute_s": round(result.compute_seconds, 3), "write_s": round(result.write_seconds, 3)},
                counts=counts,
                extra={"store": str(store_path), "errors": str(errors_path), "weights": dict(extractors.provenance),
                       "clips_hash": p.clips_hash,
                       "changes": {k: getattr(sync, k)[:LIST_MAX] for k in ("added", "redone", "dropped")},
                       "warnings": result.warnings[:LIST_MAX],
                       "trust_pickle": list(ex.trust_pickle),
                       "full_unpickler": list(getattr(extractors, "unpickled", [])),
                       "clips_per_s": summary["clips_per_s"], "device": str(device),
                       "distributed": scheduler or (f"local:{workers_cluster}" if workers_cluster else None)},
            )
            write_record(p.out_dir, rec)
    except Exception as e:  # a full disk is the user's to fix: say so, and that resuming loses nothing
        full = disk_full_error(e)
        if full is None:
            raise
        why = full.strerror or errno.errorcode.get(full.errno, str(full.errno))
        raise UserError(f"no space left while writing {store_path} ({why}); the {_count_done(g)} clips done so far "
                        "are kept - free space and rerun the same command to resume") from e
    out = rec.to_dict()
    out["summary"] = summary
    if strict and n_failed:
        raise UserError(f"{n_failed} of {len(ids)} clips failed (--strict); reasons in {errors_path}")
    return out


@user_errors
def command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Start over: delete this key's store and extract every clip again.")] = False,
    random_init: Annotated[bool, typer.Option("--random-init", help="Random extractor weights (trials only; keyed and recorded).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit non-zero when any clip failed.")] = False,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="dask scheduler address (tcp://host:8786) to distribute the clips.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Distribute over a local dask cluster of N processes.")] = None,
    export_hdf5: Annotated[Optional[Path], typer.Option("--export-hdf5", help="Also export the store to this HDF5 file (/<array>/<clip_id>).")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check every done clip of the store (chunk files, checksums, done flags) and extract the damaged ones again.")] = False,
) -> None:
    """Stage one: decode every clip once, run ResNet50-ER, ANFL and Video Swin, write the Zarr store."""
    sets = list(set or [])
    if random_init:
        sets.append("extract.random_init=true")
    cfg = resolve_config(preset, sets, cache)
    # strictness is applied below, after the summary and the HDF5 export, so a failed clip never hides them
    rec = run(cfg, force=force, strict=False, scheduler=scheduler, workers_cluster=workers, verify=verify)
    c = rec["counts"]
    s = rec.get("summary")
    rate = f", {s['clips_per_s']:.2f} clips/s" if s and s.get("extracted") else ""
    reused = "" if s else " (reused: key unchanged)"
    out.print(f"[bold green]extract[/] {c['done']}/{c['clips']} clips done, {c['failed']} failed, "
                  f"{c.get('skipped', 0) if s else c['done']} skipped{rate}{reused} -> {rec['extra']['store']}",
                  highlight=False)
    if s:
        _common.out.print(f"clips: {c['added']} added, {c['redone']} redone (video changed), {c['dropped']} dropped "
                          "(no longer in the manifest; rows kept)", highlight=False)
    for w in (rec["extra"].get("warnings") or [])[:10] if s else []:
        console.print(f"[yellow]warning[/]: {w['video']}: {w['warning']}", highlight=False, soft_wrap=True)
    if s and c.get("warnings", 0) > 10:
        console.print(f"[yellow]warning[/]: {c['warnings'] - 10} more in {Path(rec['extra']['store']).parent / 'stage.json'}",
                      highlight=False)
    if c.get("fallback_clips"):
        console.print(f"[yellow]face fallback[/]: {c['fallback_frames']} frames in {c['fallback_clips']} clips had no "
                      "face found and use the fallback box (face/source in the store)", highlight=False)
    _common.print_random_note(_common.random_extractors(cfg))
    if c["failed"]:
        console.print(f"[yellow]{c['failed']} clips failed[/]; reasons in {rec['extra']['errors']}", highlight=False)
    if export_hdf5 is not None:
        from pipeline.extract.hdf5 import export_hdf5 as export

        n = export(rec["extra"]["store"], export_hdf5)
        out.print(f"exported {n} clips to {export_hdf5}", highlight=False)
    if strict and c["failed"]:
        raise UserError(f"{c['failed']} of {c['clips']} clips failed (--strict); reasons in {rec['extra']['errors']}")
