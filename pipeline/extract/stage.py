"""Stage one: decode each clip once; ResNet50-ER, ANFL and Video Swin features into Zarr (the stage body).

Output: cache/<dataset>/features/<extract-key>/{store.zarr, errors.jsonl, config.yaml, stage.json}.

Reads top to bottom: plan (key, folder) -> reuse if fresh (pipeline.chain.run_stage) -> build the extractors
(stops here when a checkpoint is missing) -> lock the folder -> open the store of this key or create it -> match its rows
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

import numpy as np

from pipeline.chain.layout import ERRORS_NAME, RECORD_NAME, store_path as store_path_of
from pipeline.chain.specs import EXTRACT_VERSION as VERSION  # noqa: F401  (the version lives with the specs)
from pipeline.config import Config
from pipeline.errors import CacheMismatchError, UserError
from pipeline.progress import Reporter

LIST_MAX = 200
"""Clip ids listed per kind (added, redone, dropped) in the stage record; the counts are always complete."""

SEED = 0
"""Seed of random-init extractors (the same in every process, so dask workers agree)."""


def _warn_random_init(provenance: dict[str, str], note) -> None:
    random = [k for k, v in provenance.items() if v == "random-init"]
    if random:
        note(
            f"[bold black on yellow] WARNING [/] [bold yellow]RANDOM WEIGHTS for {', '.join(random)}: these features "
            "are for trials and tests only, not for results (extract.random_init=true)[/]")


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
            (store_path.parent / RECORD_NAME).unlink(missing_ok=True)
        return g, sync_rows(g, fingerprints)
    ids = list(fingerprints)
    tmp = store_path.with_name(store_path.name + ".creating")
    if tmp.exists():
        shutil.rmtree(tmp)
    create_store(tmp, ids, shapes, attrs, [fingerprints[c] for c in ids])
    tmp.rename(store_path)
    return open_store(store_path, mode="r+"), RowSync(added=ids, redone=[], dropped=[], rows={c: i for i, c in enumerate(ids)})


def _verify_existing(store_path: Path, out_dir: Path, ids: list[str], shapes, note) -> dict[int, str]:
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
        note(f"[green]verify[/]: every done clip of {store_path} is intact")
        return bad
    # the record goes first: a run killed from here on leaves a partial store that resumes, never a record
    # vouching for clips whose flags are being cleared
    (out_dir / RECORD_NAME).unlink(missing_ok=True)
    done = g["done"]
    for row in bad:
        done[row] = False
    note(f"[bold yellow]verify[/]: {describe(bad, clip_ids_of(g), limit=50)} - computing them again")
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


def _count_done(g, note) -> str:
    """Done clips of an open store, for the disk-full message ('?' when there is no store or its flags cannot
    be read: the message must not fail in turn)."""
    from pipeline.extract.integrity import read_done

    if g is None:
        return "?"
    try:
        return str(int(read_done(g).sum()))
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        note(f"[yellow]could not count the done clips[/] ({type(e).__name__}: {e})")
        return "?"


def _plans(cfg: Config) -> dict:
    """The plan of a call without one (tests, library use): prepare the inputs, plan up to extract."""
    from pipeline.chain.plan import plan, prepare

    return plan(cfg, prepare(cfg), upto="extract")


def _build(cfg: Config, extractors, distributed: bool, note):
    """(extractors, device, shapes, build seconds): the frozen networks, built before anything is written, so a
    missing checkpoint or a wrong face detector stops the run with nothing touched."""
    from pipeline.device import resolve_device
    from pipeline.extract.faces import MODES
    from pipeline.extract.networks.extractors import build_extractors

    ex = cfg.extract
    device = resolve_device(ex.device, what="extract.device")
    t0 = time.perf_counter()
    if extractors is None:
        extractors = build_extractors(ex, len(cfg.data.emotions), "cpu" if distributed else device, seed=SEED,
                                      memo_dir=cfg.cache_dir)
    if ex.face_detector not in MODES:
        raise UserError(f"extract.face_detector={ex.face_detector!r}; expected one of {', '.join(MODES)}")
    if ex.face_detector == "mtcnn":  # its ONNX files must be there before any clip is decoded
        from pipeline.extract.mtcnn import _nets

        _nets()
    _warn_random_init(extractors.provenance, note)
    return extractors, device, extractors.shapes(ex.num_frames, ex.au_frames, ex.crop), time.perf_counter() - t0


def _extract_tasks(cfg: Config, g, store_path: Path, tasks: list, ids: list, done_before, extractors, device,
                   errors_path: Path, result, reporter: Reporter, scheduler, workers_cluster) -> None:
    """Run the clips not done yet, in this process or on dask workers, filling `result`."""
    from pipeline.extract.runner import append_error, extract_into_store

    ex = cfg.extract
    if tasks and (scheduler or workers_cluster):
        from pipeline.extract.distributed import extract_distributed

        merged = extract_distributed(str(store_path), tasks, ex, len(cfg.data.emotions), seed=SEED,
                                     scheduler=scheduler, n_workers=workers_cluster,
                                     progress=functools.partial(reporter.progress, every_n=ex.log_every))
        result.__dict__.update(merged.__dict__)
    elif tasks:
        with reporter.bar("extract", len(ids), done=int(done_before.sum()), every_n=ex.log_every) as bar:
            counts = {"failed": 0}

            def on_clip(kind: str, n: int) -> None:
                if kind == "failed":
                    counts["failed"] += n
                bar.advance(n, status=f"{counts['failed']} failed" if counts["failed"] else "")

            extract_into_store(g, tasks, extractors, ex, device, on_clip=on_clip, result=result,
                               on_failure=lambda f: append_error(errors_path, f))


def _settle_errors(g, rows, ids, errors_path: Path, old_errors, result, failing, note):
    """(done flags of the manifest clips, failures): errors.jsonl rewritten to hold every known failure of a clip
    that is not done, even when interrupted; when the loop failed, a failure here never hides that error."""
    from pipeline.extract.runner import write_errors

    done_now, failures = None, []
    try:
        done_now = np.asarray(g["done"][:], dtype=bool)[rows]
        done_ids = {ids[i] for i in np.flatnonzero(done_now)}
        known = set(ids)  # a removed clip's old failure goes with it
        failures = write_errors(errors_path, [r for r in [*old_errors, *(f.record() for f in result.failed)]
                                              if r.get("clip_id") in known], done_ids)
    except (OSError, ValueError, RuntimeError) as e:
        if failing is None:
            raise
        note(f"[yellow]could not rewrite {errors_path}[/] ({type(e).__name__}: {e}); the "
             "failures of this run are in it as appended lines")
    return done_now, failures


def _record_parts(cfg: Config, p, g, store_path, errors_path, rows, ids, done_before, done_now, failures, sync,
                  result, built, seconds: float, scheduler, workers_cluster) -> dict:
    """timings, counts, extra (and the summary the command prints) of a finished extraction."""
    extractors, device, _shapes, t_build = built
    n_done, n_failed = int(done_now.sum()), len(failures)
    counts = {"clips": len(ids), "done": n_done, "failed": n_failed, "skipped": int(done_before.sum()),
              "extracted": result.done, "added": len(sync.added), "redone": len(sync.redone),
              "dropped": len(sync.dropped), "warnings": len(result.warnings), "decoders": result.decoders,
              **face_counts(g, rows[done_now])}
    summary = {**counts, "seconds": round(seconds, 3),
               "clips_per_s": round(result.done / max(result.seconds, 1e-9), 3) if result.done else 0.0}
    if n_done + n_failed != len(ids):
        raise RuntimeError(f"extraction ended with {len(ids) - n_done - n_failed} clips neither done nor failed")
    return {
        "timings": {"total_s": round(seconds, 3), "build_s": round(t_build, 3),
                    "loop_s": round(result.seconds, 3), "decode_s": round(result.decode_seconds, 3),
                    "face_s": round(result.face_seconds, 3), "wait_s": round(result.wait_seconds, 3),
                    "compute_s": round(result.compute_seconds, 3), "write_s": round(result.write_seconds, 3)},
        "counts": counts,
        "extra": {"store": str(store_path), "errors": str(errors_path), "weights": dict(extractors.provenance),
                  "clips_hash": p.clips_hash,
                  "changes": {k: getattr(sync, k)[:LIST_MAX] for k in ("added", "redone", "dropped")},
                  "warnings": result.warnings[:LIST_MAX],
                  "trust_pickle": list(cfg.extract.trust_pickle),
                  "full_unpickler": list(getattr(extractors, "unpickled", [])),
                  "clips_per_s": summary["clips_per_s"], "device": str(device),
                  "distributed": scheduler or (f"local:{workers_cluster}" if workers_cluster else None)},
        "summary": summary,
    }


def _work(cfg: Config, p, built, *, force: bool, verify: bool, reporter: Reporter, scheduler, workers_cluster,
          t0: float) -> dict:
    """Under the store lock: open (or create) the store of this key, extract what is not done, settle errors.jsonl,
    and return the record parts. A full disk ends in a UserError saying how many clips are kept."""
    from pipeline.data.manifest import read_manifest
    from pipeline.extract.runner import ClipTask, ExtractResult, StoreLock, read_errors

    extractors, device, shapes, _ = built
    clips = read_manifest(cfg.manifest_path)
    ids = [c.id for c in clips]
    store_path, errors_path = store_path_of(p.out_dir), p.out_dir / ERRORS_NAME
    attrs = {"extract": p.config, "extract_key": p.key, "au_names": list(extractors.au_names),
             "emotions": list(cfg.data.emotions), "weights": dict(extractors.provenance), "stage_version": VERSION}
    g = None
    try:
        with StoreLock(p.out_dir, str(store_path)):
            if force:
                errors_path.unlink(missing_ok=True)
            elif verify:
                _verify_existing(store_path, p.out_dir, ids, shapes, reporter.note)
            g, sync = _open_or_create_store(store_path, p.fingerprints, shapes, attrs, force)
            rows = np.array([sync.rows[c] for c in ids], dtype=np.int64)  # store row of each manifest clip
            done_before = np.asarray(g["done"][:], dtype=bool)[rows]
            tasks = [ClipTask(int(rows[i]), c.id, c.video) for i, c in enumerate(clips) if not done_before[i]]
            old_errors, result, failing = read_errors(errors_path), ExtractResult(), None
            try:
                _extract_tasks(cfg, g, store_path, tasks, ids, done_before, extractors, device, errors_path, result,
                               reporter, scheduler, workers_cluster)
            except BaseException as e:
                failing = e
                raise
            finally:
                done_now, failures = _settle_errors(g, rows, ids, errors_path, old_errors, result, failing,
                                                    reporter.note)
            return _record_parts(cfg, p, g, store_path, errors_path, rows, ids, done_before, done_now, failures,
                                 sync, result, built, time.perf_counter() - t0, scheduler, workers_cluster)
    except Exception as e:  # not swallowed: only a full disk becomes the user's message; all else re-raises
        full = disk_full_error(e)
        if full is None:
            raise
        why = full.strerror or errno.errorcode.get(full.errno, str(full.errno))
        raise UserError(f"no space left while writing {store_path} ({why}); the {_count_done(g, reporter.note)} "
                        "clips done so far are kept - free space and rerun the same command to resume") from e


def run(cfg: Config, plans: dict | None = None, *, force: bool = False, reporter: Reporter | None = None,
        strict: bool = False, scheduler: str | None = None, workers_cluster: int | None = None, extractors=None,
        verify: bool = False, lock=None) -> dict:
    """Extract the features of every manifest clip into the store of this config's extract key.

    Resumes a partial store (done clips are skipped), records failed clips in errors.jsonl, writes
    stage.json only once every clip is done or failed. `plans`: the command's plan (pipeline.chain.plan;
    planned here when not given). `strict`: raise UserError when any clip failed (after writing everything).
    `scheduler` (a dask address) or `workers_cluster` (a local dask cluster of that many processes) distribute
    the clips. `extractors` overrides the built bundle (tests: call-counting wrappers). `verify`: even when the
    record is fresh, check every done clip of the store (pipeline.extract.integrity.verify_store) and extract
    again exactly the damaged ones. A full disk (ENOSPC, EFBIG, EDQUOT) ends in a UserError saying how many
    clips are kept; rerunning the same command resumes."""
    from pipeline.chain.run_stage import no_lock, run_stage
    from pipeline.records import read_record

    reporter = reporter or Reporter()
    p = (plans or _plans(cfg))["extract"]
    if p.status() == "fresh" and not force and not verify:
        return read_record(p.out_dir)
    t0 = time.perf_counter()
    built = _build(cfg, extractors, bool(scheduler or workers_cluster), reporter.note)
    rec = run_stage(p, lambda: _work(cfg, p, built, force=force, verify=verify, reporter=reporter,
                                     scheduler=scheduler, workers_cluster=workers_cluster, t0=t0),
                    cfg=cfg, force=True, lock=lock or no_lock)   # its lock is the store lock in _work (refuses a second writer)
    n_failed = rec["counts"]["failed"]
    if strict and n_failed:
        raise UserError(f"{n_failed} of {rec['counts']['clips']} clips failed (--strict); reasons in "
                        f"{rec['extra']['errors']}")
    return rec
