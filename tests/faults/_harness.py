"""Shared machinery of the fault tests: one tiny demo dataset, reference outputs, instrumented child
processes, store comparisons, and the rows of the summary table.

One demo dataset (FAULT_CLIPS clips) is generated once per session and every trial points its own
cache folder at it (`data.cache_root` is a knob, so every trial has the same extract key as the
reference run). The reference store is an uninterrupted extraction of that dataset.

Counting (see tests/faults/_child.py): the child logs `S i` before clip i's arrays are written and
`D i` after its done flag. Per extraction run r:
    computed[r]    = clips with an `S` line in run r
    finished[r]    = clips with a `D` line in run r
    recomputed     = clips with `S` lines in two or more runs (their first write never finished:
                     they were in flight at a kill)
    redone         = clips finished in one run and written again in a later one (must be none)
    lost           = clips whose done flag was set in the store at a kill and is clear, or whose
                     arrays differ from the reference, at the end (must be none)
    in flight      = extract.batch_size per kill: the clips a run holds between decode and done flag
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

FAULT_CLIPS = 12
"""Clips of the shared fault demo dataset."""
BATCH = 2
"""extract.batch_size of the trials: at most this many clips are in flight when a run dies."""

BASE_SETS = [
    # the generated demo clips read as a generic dataset: no run ever (re)generates the shared data
    "data.format=generic",
    "extract.random_init=true",  # fault trials time extraction, not the demo extractor fit
    f"data.demo_clips={FAULT_CLIPS}",
    "extract.num_frames=8",
    f"extract.batch_size={BATCH}",
    "extract.workers=0",
    "extract.er_model=resnet18",   # a cheaper random-init ER backbone: the fault paths are the same
    "model.hidden=32",
    "model.layers=1",
    "model.heads=2",
    "model.intermediate=64",
    "model.video_proj=32",
    "model.vocab_size=150",
    "train.batch_size=4",
    "train.validate=false",
    "train.log_every=1",
]
"""--set overrides of the fault trials (on the demo preset), besides data.root and data.cache_root."""

ARRAYS = ("vid/tokens", "er/feats", "er/logits", "au/feats", "au/probs", "face/boxes")

REPORT_ENV = "ECPA_FAULTS_REPORT"
"""When set, every scenario appends its summary row (JSON line) to this file (python -m tests.faults)."""
TRIALS_ENV = "ECPA_FAULTS_TRIALS"
"""Kill trials of the extraction scenario (default 3 in CI, 10+ from python -m tests.faults)."""


def trials(default: int) -> int:
    return int(os.environ.get(TRIALS_ENV, default))


# ---- the shared dataset and configs ----------------------------------------------------------

@dataclass
class FaultDemo:
    data_root: Path
    work: Path

    def sets(self, cache_root: Path | str, *extra: str) -> list[str]:
        return [f"data.root={self.data_root}", f"data.cache_root={cache_root}", *BASE_SETS, *extra]

    def cfg(self, cache_root: Path | str, *extra: str):
        from pipeline.config import load_config

        return load_config("demo", self.sets(cache_root, *extra))

    def cache(self, name: str) -> Path:
        """A fresh cache root for one trial."""
        path = self.work / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


DEMO_FRAMES = 16
"""Frames per generated clip (at 96 px): decoding stays cheap, 8 sampled frames still differ."""


def make_demo(work: Path) -> FaultDemo:
    """Generate the fault dataset once (the demo generator's clips, small and short)."""
    from pipeline.data.demo import generate

    work.mkdir(parents=True, exist_ok=True)
    demo = FaultDemo(work / "data", work)
    generate(demo.data_root, n_clips=FAULT_CLIPS, seed=0, frames=DEMO_FRAMES, size=96)
    return demo


def extract_dir(cfg) -> Path:
    from pipeline.chain.plan import prepare_and_plan as plan

    return plan(cfg, upto="extract")["extract"].out_dir


def store_path(cfg) -> Path:
    return extract_dir(cfg) / "store.zarr"


def copy_cache(src_cache_root: Path, dst_cache_root: Path) -> None:
    """Copy a whole cache root (manifest, features, runs): a trial starts from a finished reference."""
    if dst_cache_root.exists():
        shutil.rmtree(dst_cache_root)
    shutil.copytree(src_cache_root, dst_cache_root, symlinks=True)


# ---- store contents ----------------------------------------------------------------------------

def read_done(store: Path) -> np.ndarray | None:
    """The done flags of a store, None when there is no store (yet)."""
    import zarr

    if not (Path(store) / "zarr.json").exists():
        return None
    return np.asarray(zarr.open_group(str(store), mode="r")["done"][:], dtype=bool)


def read_arrays(store: Path) -> dict[str, np.ndarray]:
    import zarr

    g = zarr.open_group(str(store), mode="r")
    out = {name: np.asarray(g[name][:]) for name in ARRAYS}
    out["done"] = np.asarray(g["done"][:], dtype=bool)
    out["clip_id"] = np.array([str(x) for x in np.asarray(g["clip_id"][:])])
    return out


def differing_clips(store: Path, reference: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """array name -> store rows whose values differ from the reference (NaN == NaN)."""
    got = read_arrays(store)
    out: dict[str, list[int]] = {}
    if not np.array_equal(got["clip_id"], reference["clip_id"]):
        out["clip_id"] = list(range(len(reference["clip_id"])))
    for name in ("done", *ARRAYS):
        a, b = got[name], reference[name]
        if a.shape != b.shape:
            out[name] = list(range(len(b)))
            continue
        same = [bool(np.array_equal(a[i], b[i], equal_nan=a.dtype.kind == "f")) for i in range(len(b))]
        bad = [i for i, s in enumerate(same) if not s]
        if bad:
            out[name] = bad
    return out


def chunk_file(store: Path, array: str, row: int) -> Path:
    """The file of one clip's chunk (zarr v3 default chunk keys: c/<row>/0/0...)."""
    import zarr

    arr = zarr.open_group(str(store), mode="r")[array]
    key = "/".join(["c", str(row), *["0"] * (arr.ndim - 1)])
    return Path(store) / array / key


# ---- child processes ---------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COLUMNS"] = "200"
    return env


@dataclass
class Child:
    proc: subprocess.Popen
    out_path: Path
    log: Path | None
    started: float = field(default_factory=time.monotonic)

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> bool:
        """SIGKILL the child's process group; False when it had already exited."""
        if self.proc.poll() is not None:
            return False
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.proc.wait()
        return True

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""


def spawn(command: list[str], *, out: Path, log: Path | None = None, fsize: int | None = None) -> Child:
    """Start `command` (['ecpa', ...] or ['ecpa-train', ...]) in an instrumented child, in its own
    process group, stdout+stderr into `out`."""
    argv = [PYTHON, "-m", "tests.faults._child"]
    if log is not None:
        argv += ["--log", str(log)]
    if fsize is not None:
        argv += ["--fsize", str(fsize)]
    argv += ["--", *command]
    fh = open(out, "wb")
    try:
        proc = subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        fh.close()
    return Child(proc, out, log)


def extract_command(demo: FaultDemo, cache_root: Path, *extra: str) -> list[str]:
    cmd = ["ecpa", "extract", "--preset", "demo"]
    for s in demo.sets(cache_root, *extra):
        cmd += ["--set", s]
    return cmd


def train_command(demo: FaultDemo, cache_root: Path, *extra: str) -> list[str]:
    cmd = ["ecpa-train", "--preset", "demo"]
    for s in demo.sets(cache_root, *extra):
        cmd += ["--set", s]
    return cmd


# ---- the write log ------------------------------------------------------------------------------

@dataclass
class RunLog:
    """What one extraction run wrote: clip rows started (S) and finished (D), in order."""

    started: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)


def read_log(path: Path) -> RunLog:
    log = RunLog()
    if not Path(path).exists():
        return log
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue  # a line cut by the kill cannot happen (one write per line), but never trust it
        kind, value = parts
        if kind == "S":
            log.started.append(int(value))
        elif kind == "D":
            log.finished.append(int(value))
    return log


@contextmanager
def logged_writes(path: Path):
    """The same write log as the child's --log, for an extraction run in this process."""
    import pipeline.extract.runner as extraction

    original = extraction.write_batch
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def logged_write_batch(g, rows, arrays):
        os.write(fd, "".join(f"S {i}\n" for i in rows).encode())
        original(g, rows, arrays)
        os.write(fd, "".join(f"D {i}\n" for i in rows).encode())

    extraction.write_batch = logged_write_batch
    try:
        yield
    finally:
        extraction.write_batch = original
        os.close(fd)


def wait_for(predicate, timeout: float, every: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


# ---- the summary table -------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the summary table (one scenario)."""

    scenario: str
    trials: int
    faults: int
    """Faults injected (kills that hit a running process, bad files, damaged chunks ...)."""
    lost: int
    """Finished clips lost (done flag cleared or arrays changed) - must be 0."""
    recomputed: int
    """Clips computed again after a fault."""
    in_flight: int
    """Upper bound on the clips a fault may legitimately cost (sum over faults)."""
    ok: bool
    note: str = ""
    """A short remark for the table."""
    details: str = ""
    """Longer detail (kill moments, open checks), printed under the table."""


def report(row: Row) -> None:
    """Append the row to $ECPA_FAULTS_REPORT (python -m tests.faults collects them)."""
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(asdict(row)) + "\n")
