"""The stage-one runner: decode each clip once, feed all three frozen extractors, write the store.

    workers (processes)                      main process (device)
    decode_clip -> find_faces -> crops  ==>  batch of B clips -> Video Swin, ResNet50-ER, ANFL
    (Prepared / Failed, in clip order)       -> write arrays of clip i, then done[i] = True

- One decode per clip: the centre-cropped T frames go to Video Swin, face crops of all F = T frames
  to ResNet50-ER, face crops of F_au evenly spaced frames among them to ANFL.
- Decoding and face finding run in a `multiprocessing` pool (extract.workers; 0 = in-process),
  `imap` with a small look-ahead, so the CPU prepares the next clips while the device computes.
- A clip that fails (ClipError: missing, empty, truncated, not a video; every reason names the file)
  comes back as a `Failed` item; the run records it and goes on. A clip without a face is not a
  failure: it gets the fallback box (pipeline.extract.faces), recorded per frame in face/source.
- A clip that decodes but is suspiciously small (fewer than MIN_FRAMES frames in the file, or a short
  side under MIN_SIDE pixels) is extracted and warned about (`ExtractResult.warnings`, naming file).
- Resume: only clips with done=False are handed in; `done[i]` is written after clip i's arrays.

`extract_into_store` is the whole loop for one process; stages/extract.py drives it (single
process) and pipeline/extract/distributed.py calls it on each dask worker for a shard of clips.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from pipeline.config import ExtractConfig
from pipeline.extract.faces import crop_faces, find_faces, to_crop_coords
from pipeline.extract.video import ClipError, decode_clip, even_subset

ERRORS_NAME = "errors.jsonl"

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
    notes: list[str] = field(default_factory=list)


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
    compute_seconds: float = 0.0
    write_seconds: float = 0.0
    warnings: list[dict] = field(default_factory=list)
    """{'clip_id', 'video', 'warning'} for clips extracted with a warning (too short, too small, decoder fallback)."""

    def merge(self, other: "ExtractResult") -> None:
        self.done += other.done
        self.failed += other.failed
        self.warnings += other.warnings
        for k, v in other.decoders.items():
            self.decoders[k] = self.decoders.get(k, 0) + v
        self.decode_seconds += other.decode_seconds
        self.compute_seconds += other.compute_seconds
        self.write_seconds += other.write_seconds


# ---- preparing one clip (runs in a worker) ---------------------------------------------------------

def prepare_clip(task: ClipTask, ex: ExtractConfig) -> Prepared | Failed:
    """Decode, find faces, cut crops. Never raises for a bad clip: returns Failed with the reason."""
    t0 = time.perf_counter()
    try:
        clip = decode_clip(task.video, ex.num_frames, ex.size, ex.crop, face_size=ex.face_size)
        track = find_faces(clip, ex.face_detector, video_path=task.video)
        faces = crop_faces(clip.source, track.boxes, ex.face_size, scale=clip.scale)
    except ClipError as e:
        reason = e.reason if str(task.video) in e.reason else f"{e.reason} ({task.video})"
        return Failed(task.index, task.clip_id, task.video, reason)
    notes = list(clip.notes) + size_warnings(clip)
    return Prepared(task.index, task.clip_id, clip.frames, faces, to_crop_coords(track.boxes, clip.crop_offset),
                    track.source, clip.decoder, time.perf_counter() - t0, notes)


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


def prepared_stream(tasks: Sequence[ClipTask], ex: ExtractConfig, workers: int) -> Iterator[Prepared | Failed]:
    """Prepared clips in task order; with workers > 0 decoded by a process pool ahead of the consumer."""
    if workers <= 0 or len(tasks) <= 1:
        for t in tasks:
            yield prepare_clip(t, ex)
        return
    ctx = mp.get_context("spawn" if os.environ.get("ECPA_MP_SPAWN") else "forkserver")
    with ctx.Pool(min(workers, len(tasks)), initializer=_worker_init, initargs=(asdict(ex),)) as pool:
        yield from pool.imap(_worker_prepare, tasks, chunksize=1)


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
    for name, value in arrays.items():
        g[name][index] = value
    g["done"][index] = True


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
    with kind 'done' or 'failed' after each clip (progress bars), `on_failure(f)` with each failure as
    it happens (errors.jsonl is appended at once, so even a killed run keeps its reasons). `result` is
    filled in place when given, so a caller sees the counts of an interrupted run too."""
    workers = ex.workers if workers is None else workers
    res = ExtractResult() if result is None else result
    t_start = time.perf_counter()
    pending: list[Prepared] = []
    task_of = {t.index: t for t in tasks}

    def flush() -> None:
        if not pending:
            return
        t0 = time.perf_counter()
        arrays = run_extractors(extractors, pending, ex, device)
        t1 = time.perf_counter()
        for p, a in zip(pending, arrays):
            write_clip(g, p.index, a)
            res.done += 1
            res.decoders[p.decoder] = res.decoders.get(p.decoder, 0) + 1
            if on_clip:
                on_clip("done", 1)
        res.compute_seconds += t1 - t0
        res.write_seconds += time.perf_counter() - t1
        pending.clear()

    for item in prepared_stream(tasks, ex, workers):
        if isinstance(item, Failed):
            res.failed.append(item)
            if on_failure:
                on_failure(item)
            if on_clip:
                on_clip("failed", 1)
            continue
        res.decode_seconds += item.seconds
        res.warnings += [{"clip_id": item.clip_id, "video": str(task_of[item.index].video),
                          "warning": n} for n in item.notes]
        pending.append(item)
        if len(pending) >= ex.batch_size:
            flush()
    flush()
    res.seconds = time.perf_counter() - t_start
    return res


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


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
