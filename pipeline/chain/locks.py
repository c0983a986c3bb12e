"""Locks on stage outputs, so that processes sharing one cache compute each output once.

`hold_stage(out_dir, key)` makes this process the only one computing `out_dir`: a lock file beside the
output, `<parent>/.<name>.lock`, created atomically (written under a temporary name, then `os.link`ed to the
lock name, which fails when the name exists) and holding who took it:

    {"pid": 4321, "host": "gpu-07", "start": "123456789", "since": 1764690000.0, "key": "ab12...", "what": "..."}

`start` is the holder's process start time as the kernel counts it (field 22 of /proc/<pid>/stat, clock ticks
since boot; psutil's create_time elsewhere), so a pid reused by another process is not taken for the holder.

A process that finds the lock held:
- by a live process (same host: the pid exists with the same start time; another host: always assumed
  alive, since it cannot be checked from here) waits, reporting who holds it, and then takes the lock; the
  caller re-checks whether the output is now complete (and reuses it) before computing anything. With
  `wait=False` it raises a UserError naming the holder instead.
- by a dead process (same host, pid gone or start time different) takes it over. Take-overs are serialised
  by an `fcntl.flock` on `<parent>/.locks.guard` (released by the kernel when its process dies), so of two
  waiters that both see a dead holder exactly one replaces its file; the other then sees a live holder.

The lock is re-entrant within one process (the chain holds the extraction's lock while the extract stage
takes it again), and it is released on the way out, however the body ends. A SIGKILL leaves the file behind;
the next process takes it over as above.

`in_use(cache_dir, paths)` is the other half of cache safety: a running chain announces the outputs it
will read or write (`<cache>/.in-use/<host>-<pid>.json`), so `ecpa gc` never removes an input that a running
chain has not locked yet or has already released (the extraction between its end and the training's start).
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from pipeline.errors import UserError

POLL_S = 0.5
"""Seconds between looks at a held lock while waiting."""
REPORT_EVERY_S = 60.0
"""While waiting, who holds the lock is reported at the start and then every this many seconds."""
GUARD_NAME = ".locks.guard"
IN_USE_DIR = ".in-use"

_held: dict[str, int] = {}
"""Lock paths this process holds -> nesting depth (re-entrant holds)."""


# ---- who is alive -----------------------------------------------------------------------------------

def process_start(pid: int) -> str | None:
    """The start time of process `pid` as a string the kernel keeps fixed for its life; None when no such
    process exists."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2:].split()[19]  # field 22: starttime (the name in (...) may hold spaces)
    except FileNotFoundError:
        return None
    except OSError:
        pass
    import psutil  # not Linux: psutil's creation time

    try:
        return f"{psutil.Process(pid).create_time():.3f}"
    except psutil.NoSuchProcess:
        return None


@dataclass
class Holder:
    """Who holds a lock (or an in-use lease), as its file records it."""

    pid: int
    host: str
    start: str
    since: float
    key: str = ""
    what: str = ""

    @classmethod
    def me(cls, key: str = "", what: str = "") -> "Holder":
        return cls(os.getpid(), socket.gethostname(), process_start(os.getpid()) or "", time.time(), key, what)

    def alive(self) -> bool:
        """False only when provably gone: on this host, with no process of that pid and start time."""
        if self.host != socket.gethostname():
            return True
        return process_start(self.pid) == self.start

    def text(self) -> str:
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        age = time.time() - self.since
        return f"pid {self.pid}{where}, since {time.strftime('%H:%M:%S', time.localtime(self.since))} ({age:.0f}s ago)"

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in a lock or lease file; None when the file is gone or unreadable."""
    try:
        d = json.loads(Path(path).read_text())
        return Holder(int(d["pid"]), str(d["host"]), str(d["start"]), float(d["since"]),
                      str(d.get("key", "")), str(d.get("what", "")))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


# ---- stage locks --------------------------------------------------------------------------------------

def lock_path(out_dir: Path) -> Path:
    """The lock file of a stage output: beside it, so taking the lock never creates the output's folder
    (a folder without its record reads as an unfinished output)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.lock"


def held_by(out_dir: Path) -> Holder | None:
    """The live holder of `out_dir`'s lock, None when it is free or its holder is dead."""
    h = read_holder(lock_path(out_dir))
    return h if h is not None and h.alive() else None


@contextmanager
def _guard(parent: Path) -> Iterator[None]:
    import fcntl

    fd = os.open(parent / GUARD_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def _try_take(path: Path, me: Holder) -> Holder | None:
    """Take the lock at `path` if it is free or its holder is dead. None when taken, else the live holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _guard(path.parent):
        current = read_holder(path)
        if current is not None and current.alive():
            return current
        if path.exists():  # dead holder, or an unreadable file (only a crash between link and write could leave one)
            path.unlink()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(me.to_json())
            os.link(tmp, path)  # atomic: fails if the name exists
        finally:
            os.unlink(tmp)
    return None


class StageBusy(UserError):
    """A stage output held by a live process, met with `wait=False`: names the holder."""

    def __init__(self, holder: Holder, path: Path, message: str):
        self.holder, self.path = holder, path
        super().__init__(message)


@dataclass
class Hold:
    """What `hold_stage` yields: the lock file and whether this process had to wait for another one."""

    path: Path
    waited: bool = False
    took_over: Holder | None = None
    """The dead holder whose lock was taken over, if any."""


@contextmanager
def hold_stage(out_dir: Path, key: str = "", *, wait: bool = True, what: str = "",
               report: Callable[[str], None] | None = None, poll_s: float = POLL_S) -> Iterator[Hold]:
    """Hold the lock of the stage output `out_dir` for the body. Waits while a live process holds it
    (`report` is told who, at the start and every REPORT_EVERY_S), or with `wait=False` raises UserError naming
    the holder. A dead holder's lock is taken over. After a wait the output may be complete: re-check it."""
    path = lock_path(out_dir)
    name = str(path)
    if _held.get(name):
        _held[name] += 1
        try:
            yield Hold(path)
        finally:
            _held[name] -= 1
        return
    hold = Hold(path)
    hold.took_over = _dead_holder(path)
    me = Holder.me(key, what or str(out_dir))
    last_report = -float("inf")
    while (holder := _try_take(path, me)) is not None:
        label = what or str(out_dir)
        if not wait:
            raise StageBusy(holder, path, f"{label} is being computed by another process ({holder.text()}); run "
                            f"again without --no-wait to wait for it. If that process ran on another host and is "
                            f"gone for good, delete {path}")
        if report is not None and time.monotonic() - last_report >= REPORT_EVERY_S:
            report(f"waiting for {label}: held by {holder.text()}")
            last_report = time.monotonic()
        hold.waited = True
        hold.took_over = None
        time.sleep(poll_s)
        hold.took_over = _dead_holder(path)
    _held[name] = 1
    try:
        yield hold
    finally:
        _held.pop(name, None)
        if read_holder(path) == me:  # never remove a lock someone took over from us (clock jump, manual delete)
            path.unlink(missing_ok=True)


def _dead_holder(path: Path) -> Holder | None:
    h = read_holder(path)
    return h if h is not None and not h.alive() else None


def live_locks(root: Path) -> dict[Path, Holder]:
    """Every stage output under `root` (itself included) whose lock a live process holds: output -> holder."""
    root = Path(root)
    found = {}
    for lock in [lock_path(root), *root.rglob(".*.lock")] if root.exists() else [lock_path(root)]:
        h = read_holder(lock)
        if h is not None and h.alive():
            found[lock.parent / lock.name[1:-len(".lock")]] = h
    return found


# ---- in-use leases -----------------------------------------------------------------------------------

@contextmanager
def in_use(cache_dir: Path, paths: list[Path]) -> Iterator[Path]:
    """Announce, for the body, that this process reads or writes `paths` (stage outputs of `cache_dir`)."""
    folder = Path(cache_dir) / IN_USE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    me = Holder.me(what=json.dumps([str(Path(p)) for p in paths]))
    lease = folder / f"{me.host}-{me.pid}-{time.monotonic_ns()}.json"
    tmp = lease.with_suffix(".tmp")
    tmp.write_text(me.to_json())
    tmp.replace(lease)
    try:
        yield lease
    finally:
        lease.unlink(missing_ok=True)


def paths_in_use(cache_dir: Path) -> dict[Path, Holder]:
    """Every path announced by a live process in `cache_dir` -> its holder (dead leases are removed)."""
    out: dict[Path, Holder] = {}
    folder = Path(cache_dir) / IN_USE_DIR
    for lease in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        h = read_holder(lease)
        if h is None:
            continue
        if not h.alive():
            lease.unlink(missing_ok=True)
            continue
        for p in json.loads(h.what):
            out[Path(p)] = h
    return out
