"""Running the points of a sweep side by side: N child processes on one machine, or tasks on a dask cluster.

Each point is an ordinary `ecpa run` command line (built by the caller), started as a child process with its
own environment and its own log file, so a point that crashes (or is killed) takes nothing else down:

- `run_local(points, jobs=N)`: N points at once on this machine. With GPUs (CUDA_VISIBLE_DEVICES, or as many
  as torch sees), slot i of N gets GPU i mod G through CUDA_VISIBLE_DEVICES; without, every point gets
  CUDA_VISIBLE_DEVICES="" and an equal share of the CPU cores as its thread count (OMP/MKL/OpenBLAS).
- `run_dask(points, address)`: one task per point on an existing `dask.distributed` cluster. When its workers
  declare a `GPU` resource (`dask worker tcp://HOST:8786 --resources GPU=1 --nthreads 1`, started one per GPU
  with CUDA_VISIBLE_DEVICES set to that GPU), each task asks for GPU=1, so no two points share a GPU; without
  such workers the tasks take whatever worker is free. The workers need this code and the cache on the same
  paths as the machine that submits (a shared file system), as for `ecpa extract --scheduler`.

What points share (usually the extraction) is computed once: the caller runs the shared stages first, and the
stage locks (pipeline.chain.locks) make concurrent points wait for, then reuse, anything still being computed.
A point whose log ends in failure is reported with its log path; the other points go on. Points already
finished (the caller says which) are not started at all, so rerunning a sweep redoes only unfinished points.

`report` receives one line at every change: 'sweep: 2/4 done, 2 running, 0 failed'.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class Point:
    """One sweep point to run."""

    index: int
    label: str
    """'model.top_k=2' (what the progress lines and the failure message call it)."""
    argv: list[str]
    """The `ecpa run` command line of this point."""
    log: Path
    finished: bool = False
    """Already complete in the cache: not started again."""


@dataclass
class Outcome:
    """How one point ended."""

    point: Point
    state: str
    """done, failed or reused (finished before this sweep started)."""
    returncode: int | None = None
    seconds: float = 0.0
    device: str = ""
    """What it ran on: 'GPU 1', 'CPU, 4 threads', or the dask worker's address."""


@dataclass
class Tally:
    total: int
    done: int = 0
    running: int = 0
    failed: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def line(self) -> str:
        return f"sweep: {self.done}/{self.total} done, {self.running} running, {self.failed} failed"


def visible_gpus() -> list[str]:
    """The GPU ids points may use: CUDA_VISIBLE_DEVICES when set (empty: none), else those torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def slot_env(slot: int, jobs: int, gpus: list[str], cpus: int) -> tuple[dict[str, str], str]:
    """The environment overrides of run slot `slot` of `jobs`, and the device in words."""
    if gpus:
        gpu = gpus[slot % len(gpus)]
        threads = max(1, cpus // jobs)
        return {"CUDA_VISIBLE_DEVICES": gpu, **{v: str(threads) for v in THREAD_VARS}}, f"GPU {gpu}"
    threads = max(1, cpus // jobs)
    return {"CUDA_VISIBLE_DEVICES": "", **{v: str(threads) for v in THREAD_VARS}}, f"CPU, {threads} thread(s)"


def run_point(argv: list[str], env: dict[str, str], log: str) -> tuple[int, float]:
    """Run one point to its end, output into `log`: (exit code, seconds). Also the dask task."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        rc = subprocess.call(argv, env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
    return rc, time.perf_counter() - t0


def _start(points: list[Point], report: Callable[[str], None] | None) -> tuple[Tally, list[Point], Callable]:
    say = report or (lambda _t: None)
    tally = Tally(len(points))
    todo = []
    for p in points:
        if p.finished:
            tally.done += 1
            tally.outcomes.append(Outcome(p, "reused"))
        else:
            todo.append(p)
    if tally.done:
        say(f"sweep: {tally.done} point(s) already finished, {len(todo)} to run")
    return tally, todo, say


def _ended(tally: Tally, outcome: Outcome, say: Callable[[str], None]) -> None:
    tally.running -= 1
    tally.outcomes.append(outcome)
    p = outcome.point
    if outcome.state == "done":
        tally.done += 1
        say(f"point {p.index} ({p.label}) done in {outcome.seconds:.0f}s on {outcome.device}")
    else:
        tally.failed += 1
        say(f"point {p.index} ({p.label}) FAILED (exit {outcome.returncode}); its log: {p.log}")
    say(tally.line())


def run_local(points: list[Point], jobs: int, *, env: dict[str, str] | None = None,
              report: Callable[[str], None] | None = None, poll_s: float = 0.2) -> list[Outcome]:
    """Run the unfinished points, `jobs` at a time, each in its own child process (see the module doc)."""
    tally, todo, say = _start(points, report)
    gpus, cpus = visible_gpus(), cpu_count()
    free = list(range(max(1, jobs)))
    running: dict[int, tuple[subprocess.Popen, Point, float, str, object]] = {}
    try:
        while todo or running:
            while todo and free:
                p, slot = todo.pop(0), free.pop(0)
                extra, device = slot_env(slot, jobs, gpus, cpus)
                p.log.parent.mkdir(parents=True, exist_ok=True)
                fh = open(p.log, "ab")
                proc = subprocess.Popen(p.argv, env={**os.environ, **(env or {}), **extra}, stdout=fh,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                running[slot] = (proc, p, time.perf_counter(), device, fh)
                tally.running += 1
                say(f"point {p.index} ({p.label}) started on {device}; log {p.log}")
                say(tally.line())
            time.sleep(poll_s)
            for slot, (proc, p, t0, device, fh) in list(running.items()):
                if proc.poll() is None:
                    continue
                fh.close()
                del running[slot]
                free.append(slot)
                _ended(tally, Outcome(p, "done" if proc.returncode == 0 else "failed", proc.returncode,
                                      time.perf_counter() - t0, device), say)
    finally:  # interrupted: stop the children we started (their finished stages stay in the cache)
        for proc, *_rest, fh in running.values():
            proc.terminate()
            proc.wait()
            fh.close()
    return sorted(tally.outcomes, key=lambda o: o.point.index)


def run_dask(points: list[Point], address: str, *, env: dict[str, str] | None = None,
             report: Callable[[str], None] | None = None, connect_s: float = 20.0) -> list[Outcome]:
    """Run the unfinished points as tasks on the dask cluster at `address` (see the module doc)."""
    from distributed import Client, as_completed
    from distributed.scheduler import KilledWorker

    from pipeline.errors import UserError

    tally, todo, say = _start(points, report)
    try:
        client = Client(address, timeout=f"{connect_s}s")
    except OSError as e:
        raise UserError(f"--scheduler {address}: no dask scheduler answers there ({e}); start one with "
                        "`dask scheduler` and workers with `dask worker {address} --resources GPU=1`") from None
    try:
        workers = client.scheduler_info().get("workers", {})
        gpu = any((w.get("resources") or {}).get("GPU", 0) >= 1 for w in workers.values())
        say(f"dask: {len(workers)} worker(s) at {address}; "
            + ("one GPU per point (worker resource GPU)" if gpu else "no GPU resource declared: points run on CPU workers"))
        futures = {}
        for p in todo:
            fut = client.submit(run_point, p.argv, dict(env or {}), str(p.log), key=f"ecpa-point-{p.index}-{os.getpid()}-{time.time_ns()}",
                                pure=False, resources={"GPU": 1} if gpu else None)
            futures[fut] = p
            tally.running += 1
        say(tally.line())
        for fut in as_completed(list(futures)):
            p = futures[fut]
            try:
                rc, seconds = fut.result()
            except (OSError, KilledWorker) as e:  # the worker could not start the command, or died under it
                with open(p.log, "a") as fh:
                    fh.write(f"\nthe dask worker could not run the point: {e}\n")
                rc, seconds = -1, 0.0
            _ended(tally, Outcome(p, "done" if rc == 0 else "failed", rc, seconds, "dask"), say)
    finally:
        client.close()
    return sorted(tally.outcomes, key=lambda o: o.point.index)
