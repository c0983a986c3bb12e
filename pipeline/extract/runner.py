"""The stage-one runner: decode each clip once, feed all three frozen extractors, write the store.

    workers (processes)                      main process (device)                 writer thread
    decode_clip -> find_faces -> crops  ==>  batch of B clips -> Video Swin,   ==>  arrays of the batch,
    (Prepared / Failed, in clip order)       ResNet50-ER, ANFL                      then their done flags

- One decode per clip: the centre-cropped T frames go to Video Swin, face crops of all F = T frames
  to ResNet50-ER, face crops of F_au evenly spaced frames among them to ANFL.
- Decoding and face finding run in a `multiprocessing` pool (extract.workers: -1 = one per usable core,
  0 = in-process). The look-ahead is bounded (`lookahead`): at most that many clips are submitted and not
  yet taken by the loop, so however slow the models are, at most lookahead + batch decoded clips are held.
- Batch size by device (`batch_size_for`): extract.batch_size=0 picks 4 on a CPU, 8 or 16 on a GPU.
- Store writes run on a thread of their own (`StoreWriter`) behind a bounded queue, one zarr call per
  array per batch; the loop computes the next batch meanwhile. A write error stops the writer and is
  raised in the loop's thread as StoreWriteError naming the clips (the OSError is its cause).
- A clip that fails (ClipError: missing, empty, truncated, not a video; every reason names the file)
  comes back as a `Failed` item; the run records it and goes on. A clip without a face is not a
  failure: it gets the fallback box (pipeline.extract.faces), recorded per frame in face/source.
- A clip that decodes but is suspiciously small (fewer than MIN_FRAMES frames in the file, or a short
  side under MIN_SIDE pixels) is extracted and warned about (`ExtractResult.warnings`, naming file).
- Resume: only clips with done=False are handed in; `done[i]` is written after clip i's arrays.

`extract_into_store` is the whole loop for one process; pipeline/extract/stage.py drives it (single
process) and pipeline/extract/distributed.py calls it on each dask worker for a shard of clips.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from pipeline.config import ExtractConfig
from pipeline.extract.faces import crop_faces, find_faces, to_crop_coords
from pipeline.extract.video import ClipError, decode_clip, even_subset

from pipeline.chain.layout import ERRORS_NAME  # noqa: E402  (one home: the cache layout)

MIN_FRAMES = 8
"""Fewer frames than this in the file: warned (the 32 sampled frames are then mostly repeats)."""
MIN_SIDE = 112
"""A short side under this many pixels: warned (face crops are then upscaled more than 2x to 224)."""


@dataclass
class ClipTask:
    """What a worker needs to prepare one clip (picklable)."""

    index: int
    """Row in the store."""
    clip_id: str
    video: str


@dataclass
class Prepared:
    index: int
    clip_id: str
    video: np.ndarray
    """(T, crop, crop, 3) uint8: Video Swin input."""
    faces: np.ndarray
    """(F, S, S, 3) uint8 face crops (F = T)."""
    boxes: np.ndarray
    """(F, 4) float32 face boxes in centre-crop pixels."""
    sources: np.ndarray
    """(F,) uint8 face/source codes (pipeline.extract.store.FACE_SOURCES)."""
    decoder: str
    seconds: float
    """Decode + faces, in the worker."""
    notes: list[str] = field(default_factory=list)
    decode_seconds: float = 0.0
    """Of `seconds`: decoding and resizing the frames."""
    face_seconds: float = 0.0
    """Of `seconds`: finding the faces and cutting the crops."""


@dataclass
class Failed:
    index: int
    clip_id: str
    video: str
    reason: str

    def record(self) -> dict:
        return {"clip_id": self.clip_id, "video": self.video, "reason": self.reason}


@dataclass
class ExtractResult:
    done: int = 0
    failed: list[Failed] = field(default_factory=list)
    decoders: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    decode_seconds: float = 0.0
    """Worker time decoding frames (summed over clips: with W workers it overlaps the rest)."""
    face_seconds: float = 0.0
    """Worker time finding faces and cutting crops (summed over clips)."""
    compute_seconds: float = 0.0
    """Loop time in the three extractors (device work, copies to the host included)."""
    write_seconds: float = 0.0
    """Writer-thread time in store writes (overlaps the loop)."""
    wait_seconds: float = 0.0
    """Loop time waiting for decoded clips (decoding is the limit when this is large) or for a full write queue."""
    warnings: list[dict] = field(default_factory=list)
    """{'clip_id', 'video', 'warning'} for clips extracted with a warning (too short, too small, decoder fallback)."""

    def merge(self, other: "ExtractResult") -> None:
        self.done += other.done
        self.failed += other.failed
        self.warnings += other.warnings
        for k, v in other.decoders.items():
            self.decoders[k] = self.decoders.get(k, 0) + v
        self.decode_seconds += other.decode_seconds
        self.face_seconds += other.face_seconds
        self.wait_seconds += other.wait_seconds
        self.compute_seconds += other.compute_seconds
        self.write_seconds += other.write_seconds


# ---- preparing one clip (runs in a worker) ---------------------------------------------------------

def prepare_clip(task: ClipTask, ex: ExtractConfig) -> Prepared | Failed:
    """Decode, find faces, cut crops. Never raises for a bad clip: returns Failed with the reason."""
    t0 = time.perf_counter()
    try:
        clip = decode_clip(task.video, ex.num_frames, ex.size, ex.crop, face_size=ex.face_size)
        t1 = time.perf_counter()
        track = find_faces(clip, ex.face_detector, video_path=task.video)
        faces = crop_faces(clip.source, track.boxes, ex.face_size, scale=clip.scale)
    except ClipError as e:
        reason = e.reason if str(task.video) in e.reason else f"{e.reason} ({task.video})"
        return Failed(task.index, task.clip_id, task.video, reason)
    t2 = time.perf_counter()
    notes = list(clip.notes) + size_warnings(clip)
    return Prepared(task.index, task.clip_id, clip.frames, faces, to_crop_coords(track.boxes, clip.crop_offset),
                    track.source, clip.decoder, t2 - t0, notes, decode_seconds=t1 - t0, face_seconds=t2 - t1)


def size_warnings(clip) -> list[str]:
    """Why a decoded clip looks too short or too small to give useful features (MIN_FRAMES, MIN_SIDE)."""
    out = []
    if clip.num_source_frames < MIN_FRAMES:
        out.append(f"only {clip.num_source_frames} frame(s) in the file (fewer than {MIN_FRAMES}): "
                   "the sampled frames repeat")
    h, w = clip.source.shape[1:3]
    if min(h, w) < MIN_SIDE:
        out.append(f"frames of {w}x{h} pixels (short side under {MIN_SIDE}): faces are upscaled a lot")
    return out


_WORKER_EX: ExtractConfig | None = None


def _worker_init(ex_dict: dict) -> None:
    global _WORKER_EX
    import torch

    torch.set_num_threads(1)  # resizing in many workers must not oversubscribe the cores
    _WORKER_EX = ExtractConfig(**ex_dict)


def _worker_prepare(task: ClipTask) -> Prepared | Failed:
    assert _WORKER_EX is not None
    return prepare_clip(task, _WORKER_EX)


# ---- how many processes, how far ahead, how many clips per batch ----------------------------------

def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or a job's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def decode_workers(requested: int) -> int:
    """extract.workers as a process count: -1 = one per usable core, 0 = decode in the loop's process."""
    if requested < -1:
        from pipeline.errors import UserError

        raise UserError(f"extract.workers={requested}; expected -1 (one per core), 0 (in-process) or a count")
    return usable_cores() if requested == -1 else requested


def lookahead(workers: int, batch_size: int) -> int:
    """Clips submitted to the pool and not yet taken by the loop: enough for every worker to hold two and
    for a whole next batch to be decoding while the device computes one."""
    return max(2 * workers, batch_size, 1)


AUTO_BATCH = {"cpu": 4, "cuda_small": 8, "cuda": 16}
"""extract.batch_size=0: clips per forward batch by device (a GPU under 40 GiB gets cuda_small)."""


def batch_size_for(ex: ExtractConfig, device) -> int:
    """extract.batch_size, or by device when it is 0: larger on a GPU, where a batch of 4 clips leaves the
    device idle between launches; on a CPU a larger batch only holds more frames in memory."""
    if ex.batch_size < 0:
        from pipeline.errors import UserError

        raise UserError(f"extract.batch_size={ex.batch_size}; expected 0 (by device) or a count of clips")
    if ex.batch_size:
        return ex.batch_size
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return AUTO_BATCH["cpu"]
    total = torch.cuda.get_device_properties(device).total_memory
    return AUTO_BATCH["cuda"] if total >= 40 * 2**30 else AUTO_BATCH["cuda_small"]


WORKER_PRELOAD = ["torch", "av", "decord", "cv2", "pipeline.extract.runner"]
"""Modules the forkserver imports once, so each pool's workers start as forks of a process that has them
(without this every worker imports torch itself: seconds per pool, more on a loaded machine). A module that
is not installed is skipped by multiprocessing."""


def _pool_context():
    if os.environ.get("ECPA_MP_SPAWN"):
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_PRELOAD)  # takes effect when this process's forkserver starts
    return ctx


def prepared_stream(tasks: Sequence[ClipTask], ex: ExtractConfig, workers: int,
                    ahead: int | None = None) -> Iterator[Prepared | Failed]:
    """Prepared clips in task order. With workers > 0 (-1: one per core) a process pool decodes up to `ahead`
    clips (default `lookahead`) beyond the one the consumer was last given: a slow consumer never makes
    decoded clips pile up (Pool.imap would queue every clip's result)."""
    workers = decode_workers(workers)
    if workers <= 0 or len(tasks) <= 1:
        for t in tasks:
            yield prepare_clip(t, ex)
        return
    ahead = ahead or lookahead(workers, ex.batch_size)
    ctx = _pool_context()
    todo = iter(tasks)
    with ctx.Pool(min(workers, len(tasks)), initializer=_worker_init, initargs=(asdict(ex),)) as pool:
        in_flight = deque(pool.apply_async(_worker_prepare, (t,)) for t in itertools.islice(todo, ahead))
        while in_flight:
            item = in_flight.popleft().get()
            nxt = next(todo, None)
            if nxt is not None:  # one out, one in: never more than `ahead` results held by the pool
                in_flight.append(pool.apply_async(_worker_prepare, (nxt,)))
            yield item
            del item  # the consumer holds its own reference; ours must not outlive it while we wait


# ---- the extractor forward passes -----------------------------------------------------------------

def run_extractors(extractors, batch: list[Prepared], ex: ExtractConfig, device) -> list[dict[str, np.ndarray]]:
    """Forward one batch of prepared clips; per clip the arrays the store holds (numpy, store dtypes)."""
    import torch

    b = len(batch)
    f = batch[0].faces.shape[0]
    au_idx = even_subset(f, ex.au_frames)
    video = torch.from_numpy(np.stack([p.video for p in batch])).to(device)        # B, T, H, W, 3 uint8
    video = video.permute(0, 4, 1, 2, 3).float().div_(255.0)                         # B, 3, T, H, W
    faces = torch.from_numpy(np.stack([p.faces for p in batch])).to(device)        # B, F, S, S, 3
    faces = faces.permute(0, 1, 4, 2, 3).float().div_(255.0)                         # B, F, 3, S, S
    s = faces.shape[-1]
    with torch.inference_mode():  # the extractors apply autocast per extract.precision themselves
        tokens = extractors.video(video)                                             # B, L, C
        er_feats, er_logits = extractors.er(faces.reshape(b * f, 3, s, s))           # B*F, 2048 / E
        au_faces = faces[:, torch.as_tensor(au_idx, device=faces.device)]
        au_feats, au_probs = extractors.au(au_faces.reshape(b * len(au_idx), 3, s, s))  # B*Fa, A, D / A
    out = []
    tokens = tokens.float().cpu().numpy()
    er_feats = er_feats.float().reshape(b, f, -1).cpu().numpy()
    er_logits = er_logits.float().reshape(b, f, -1).cpu().numpy()
    au_feats = au_feats.float().reshape(b, len(au_idx), *au_feats.shape[1:]).cpu().numpy()
    au_probs = au_probs.float().reshape(b, len(au_idx), -1).cpu().numpy()
    for i, p in enumerate(batch):
        out.append({
            "vid/tokens": tokens[i].astype(np.float16),
            "er/feats": er_feats[i].astype(np.float16),
            "er/logits": er_logits[i].astype(np.float32),
            "au/feats": au_feats[i].astype(np.float16),
            "au/probs": au_probs[i].astype(np.float32),
            "face/boxes": p.boxes.astype(np.float32),
            "face/source": p.sources.astype(np.uint8),
        })
    return out


def write_clip(g, index: int, arrays: dict[str, np.ndarray]) -> None:
    """Arrays of one clip, then done[index] = True (the order resume relies on)."""
    write_batch(g, [index], [arrays])


def write_batch(g, rows: Sequence[int], arrays: Sequence[dict[str, np.ndarray]]) -> None:
    """Arrays of a batch of clips (one zarr call per array: its chunks go out concurrently), then their done
    flags, after every array of every clip in the batch (the order resume relies on)."""
    rows = np.asarray(rows, dtype=np.int64)
    contiguous = bool(np.all(np.diff(rows) == 1))
    for name in arrays[0]:
        value = np.stack([a[name] for a in arrays])
        if contiguous:
            g[name][int(rows[0]): int(rows[-1]) + 1] = value
        else:
            g[name].oindex[rows] = value
    g["done"].oindex[rows] = True


@dataclass
class Written:
    """A clip on its way to the store: what the loop hands the writer (features only, no frames)."""

    index: int
    clip_id: str
    decoder: str
    arrays: dict[str, np.ndarray]


class StoreWriteError(RuntimeError):
    """A store write failed in the writer thread; raised in the loop's thread, naming the clips. The original
    exception (an OSError for a full disk) is its __cause__."""

    def __init__(self, clip_ids: list[str], error: BaseException):
        self.clip_ids = clip_ids
        super().__init__(f"writing clip(s) {', '.join(clip_ids)} to the feature store failed: "
                         f"{type(error).__name__}: {error}")


class StoreWriter:
    """Writes batches of clips into the store on a thread of its own, behind a queue of at most `depth`
    batches (a full queue blocks the loop: memory stays bounded when writes are the slow part).

    `put(batch)` queues one batch; `finished()` returns the batches written since the last call (the loop
    counts them and reports progress, in its own thread); `close()` writes what is queued and joins, or with
    `abandon=True` (the loop is failing) drops what is queued and joins. Once a write fails the writer
    stops, and the next `put`, `finished` or `close` raises StoreWriteError naming the batch's clips."""

    def __init__(self, g, depth: int = 2):
        self.g = g
        self.seconds = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._error: StoreWriteError | None = None
        self._thread = threading.Thread(target=self._run, name="ecpa-store-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            t0 = time.perf_counter()
            try:
                write_batch(self.g, [w.index for w in batch], [w.arrays for w in batch])
            except BaseException as e:  # noqa: BLE001 - handed to the loop's thread, which raises it
                err = StoreWriteError([w.clip_id for w in batch], e)
                err.__cause__ = e
                self._error = err
                return
            self.seconds += time.perf_counter() - t0
            self._done.put(batch)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, batch: list[Written]) -> None:
        while True:
            self._raise()
            if not self._thread.is_alive():
                raise RuntimeError("the store writer thread has stopped")
            try:
                self._queue.put(batch, timeout=0.05)
                return
            except queue.Full:
                continue

    def finished(self, check: bool = True) -> list[list[Written]]:
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                break
        if check:
            self._raise()
        return out

    def close(self, abandon: bool = False) -> None:
        if abandon:  # drop queued batches: their clips are not done and a resumed run computes them again
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.05)
                break
            except queue.Full:
                continue
        self._thread.join()
        if not abandon:
            self._raise()


# ---- the loop ----------------------------------------------------------------------------------

def extract_into_store(
    g,
    tasks: Sequence[ClipTask],
    extractors,
    ex: ExtractConfig,
    device,
    *,
    workers: int | None = None,
    on_clip: Callable[[str, int], None] | None = None,
    on_failure: Callable[[Failed], None] | None = None,
    result: ExtractResult | None = None,
) -> ExtractResult:
    """Prepare, forward and write `tasks` into the open store group `g`. `on_clip(kind, n)` is called
    with kind 'done' or 'failed' after each clip (progress bars; 'done' once its done flag is written),
    `on_failure(f)` with each failure as it happens (errors.jsonl is appended at once, so even a killed run
    keeps its reasons). `result` is filled in place when given, so a caller sees the counts of an
    interrupted run too. Both callbacks run in the caller's thread. Returns only once every write ended."""
    workers = decode_workers(ex.workers if workers is None else workers)
    batch_size = batch_size_for(ex, device)
    res = ExtractResult() if result is None else result
    t_start = time.perf_counter()
    pending: list[Prepared] = []
    task_of = {t.index: t for t in tasks}
    writer = StoreWriter(g)

    def count(batches: list[list[Written]]) -> None:
        for batch in batches:
            for w in batch:
                res.done += 1
                res.decoders[w.decoder] = res.decoders.get(w.decoder, 0) + 1
            if on_clip:
                on_clip("done", len(batch))

    def flush() -> None:
        if not pending:
            return
        t0 = time.perf_counter()
        arrays = run_extractors(extractors, pending, ex, device)
        t1 = time.perf_counter()
        writer.put([Written(p.index, p.clip_id, p.decoder, a) for p, a in zip(pending, arrays)])
        res.compute_seconds += t1 - t0
        res.wait_seconds += time.perf_counter() - t1
        pending.clear()
        count(writer.finished())

    ok = False
    stream = prepared_stream(tasks, ex, workers, ahead=lookahead(workers, batch_size))
    try:
        t_wait = time.perf_counter()
        for item in stream:
            res.wait_seconds += time.perf_counter() - t_wait
            _take(item, res, task_of, pending, on_clip, on_failure)
            if len(pending) >= batch_size:
                flush()
            t_wait = time.perf_counter()
        flush()
        ok = True
    finally:
        stream.close()  # ends the decoding pool now, not when the generator is collected
        try:
            writer.close(abandon=not ok)
        finally:  # batches written before a failure are done in the store: count them too
            count(writer.finished(check=False))
            res.write_seconds += writer.seconds
            res.seconds = time.perf_counter() - t_start
    return res


def _take(item: Prepared | Failed, res: ExtractResult, task_of: dict, pending: list, on_clip, on_failure) -> None:
    """Account one item of the stream: a failure is recorded and reported, a prepared clip joins the batch."""
    if isinstance(item, Failed):
        res.failed.append(item)
        if on_failure:
            on_failure(item)
        if on_clip:
            on_clip("failed", 1)
        return
    res.decode_seconds += item.decode_seconds
    res.face_seconds += item.face_seconds
    res.warnings += [{"clip_id": item.clip_id, "video": str(task_of[item.index].video), "warning": n}
                     for n in item.notes]
    pending.append(item)


# ---- errors.jsonl --------------------------------------------------------------------------------

def read_errors(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill mid-write: that clip is retried anyway
            import logging

            logging.getLogger(__name__).warning("%s:%d: unreadable line dropped (cut by an interruption?)", path, no)
    return out


def append_error(path: Path, failure: "Failed") -> None:
    """Append one failure line at once (consolidated by `write_errors` at the end of the run)."""
    with open(path, "a") as f:
        f.write(json.dumps(failure.record(), ensure_ascii=False) + "\n")
        f.flush()


def write_errors(path: Path, failures: Iterable[dict], done_ids: set[str]) -> list[dict]:
    """Rewrite errors.jsonl: one line per failed clip, dropping clips that are done now (a retry that
    succeeded) and duplicates (last reason wins). Returns the lines written."""
    from pipeline.records import atomic_write_text

    by_id: dict[str, dict] = {}
    for rec in failures:
        if rec["clip_id"] not in done_ids:
            by_id[rec["clip_id"]] = {"clip_id": rec["clip_id"], "video": rec["video"], "reason": rec["reason"]}
    lines = list(by_id.values())
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
    return lines


from pipeline.device import resolve_device  # noqa: E402,F401  (one home: pipeline.device)


# ---- one writer per store ------------------------------------------------------------------------

class StoreLock:
    """One writer per store: the extract output's stage lock (pipeline.chain.locks.hold_stage, pid + host +
    start time, a dead holder's lock taken over) taken without waiting, so a second `ecpa extract` of the
    same store refuses at once, naming the writer. The chain takes the same lock first (and waits); this
    one is then a re-entrant no-op. (Dask workers of one run write under the driver's lock.)"""

    def __init__(self, out_dir: Path, store: str):
        from pipeline.chain.locks import lock_path

        self.out_dir = Path(out_dir)
        self.path = lock_path(self.out_dir)
        self.store = store
        self._hold = None

    def acquire(self) -> None:
        from pipeline.chain.locks import StageBusy, hold_stage
        from pipeline.errors import UserError

        hold = hold_stage(self.out_dir, wait=False, what=f"the store {self.store}")
        try:
            hold.__enter__()
        except StageBusy as e:
            raise UserError(f"another extraction ({e.holder.text()}) is writing {self.store}; wait for it to "
                            f"finish, or delete {self.path} if that process is gone") from None
        self._hold = hold

    def release(self) -> None:
        if self._hold is not None:
            hold, self._hold = self._hold, None
            hold.__exit__(None, None, None)

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
