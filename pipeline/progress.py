"""Progress of long loops (extraction, training, decoding) for attended and unattended runs.

On a terminal a live bar is drawn; with no terminal (nohup, a batch scheduler, output sent to a file) a bar
draws nothing useful, so a plain line is emitted instead every `every_n` items or `every_s` seconds,
whichever comes first (a heartbeat thread keeps the seconds even while one long batch is in flight), and
once at the end:

    extract 120/10000 clips (3 failed) | 0.07 clips/s (14.29 s/clip) over 28m37s | ETA 1d15h13m

The rate is taken over the whole run (items done by this run / time since it started), never over a short
window: a window of a few fast clips after a slow start gave 38 clips/s while the true rate was 0.07. Below
one item per second the line gives seconds per item as well. Items done before this run (a resumed
extraction) count in done/total but not in the rate.

The library never chooses where output goes: the command passes `emit` (where plain lines go; the commands
pass it when stdout is not a terminal) and `console` (a rich Console; the bar is drawn there only when it is
a terminal). Without either, nothing is shown.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

EVERY_S = 60.0
"""Seconds between plain progress lines at most (unattended runs)."""


def duration(seconds: float) -> str:
    """12s, 4m05s, 2h03m, 1d15h13m."""
    s = int(round(max(seconds, 0.0)))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def rate_text(n: int, seconds: float, unit: str) -> str:
    """'3.20 clips/s', or below 1/s '0.07 clips/s (14.29 s/clip)'; '-' before anything is done."""
    if n <= 0 or seconds <= 0:
        return f"- {unit}s/s"
    r = n / seconds
    return f"{r:.2f} {unit}s/s" if r >= 1 else f"{r:.2f} {unit}s/s ({seconds / n:.2f} s/{unit})"


class Progress:
    """Counts items; `advance(n, status=...)` after each batch. Context manager (the last line at exit).

    what: 'extract', 'caption', 'train'; unit: 'clip', 'step'; done: items finished before this run."""

    def __init__(self, what: str, total: int, *, unit: str = "clip", done: int = 0, every_n: int = 100,
                 every_s: float = EVERY_S, emit: Callable[[str], None] | None = None, console=None,
                 clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit = what, int(total), unit
        self.done = self.start_done = int(done)
        self.every_n, self.every_s = max(int(every_n), 1), float(every_s)
        self.emit, self.clock = emit, clock
        self.status = ""
        self.t0 = self.t_last = clock()
        self.n_last = self.done
        self.lines = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._bar = None
        if console is not None and getattr(console, "is_terminal", False):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self._bar = Bar(TextColumn(f"[bold]{what}[/]"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[status]}"),
                            TimeRemainingColumn(), console=console, transient=False)
            self._task = self._bar.add_task(what, total=self.total, completed=self.done, rate="", status="")

    # ---- the numbers --------------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        return self.clock() - self.t0

    def eta(self) -> float | None:
        """Seconds left at the whole-run rate; None before the first item."""
        n = self.done - self.start_done
        if n <= 0 or self.elapsed <= 0:
            return None
        return (self.total - self.done) * self.elapsed / n

    def line(self) -> str:
        n, el = self.done - self.start_done, self.elapsed
        eta = self.eta()
        parts = [f"{self.what} {self.done}/{self.total} {self.unit}s" + (f" ({self.status})" if self.status else ""),
                 f"{rate_text(n, el, self.unit)} over {duration(el)}",
                 "done" if self.done >= self.total else f"ETA {duration(eta) if eta is not None else '?'}"]
        return " | ".join(parts)

    # ---- reporting ----------------------------------------------------------------------------------

    def advance(self, n: int = 1, status: str | None = None) -> None:
        with self._lock:
            self.done += n
            if status is not None:
                self.status = status
            if self._bar is not None:
                self._bar.update(self._task, advance=n,
                                 rate=rate_text(self.done - self.start_done, self.elapsed, self.unit), status=self.status)
            now = self.clock()
            if self.done - self.n_last >= self.every_n or now - self.t_last >= self.every_s:
                self._emit_line(now)

    def _heartbeat(self) -> None:
        """A line every `every_s` seconds though nothing advanced (a batch of slow clips in flight)."""
        while not self._stop.wait(self.every_s):
            with self._lock:
                now = self.clock()
                if now - self.t_last >= self.every_s:
                    self._emit_line(now)

    def _emit_line(self, now: float) -> None:
        if self.emit is not None:
            self.emit(self.line())
            self.lines += 1
        self.t_last, self.n_last = now, self.done

    def __enter__(self) -> "Progress":
        if self._bar is not None:
            self._bar.start()
        if self.emit is not None and math.isfinite(self.every_s) and self.clock is time.monotonic:
            self._beat = threading.Thread(target=self._heartbeat, name=f"progress-{self.what}", daemon=True)
            self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self._bar is not None:
            self._bar.stop()
        with self._lock:
            if self.done != self.n_last:     # the last line: how far it got, at what rate
                self._emit_line(self.clock())


def quiet(what: str, total: int, **kw) -> Progress:
    """A Progress that only counts (tests, library calls without a command around them)."""
    kw.pop("emit", None), kw.pop("console", None)
    return Progress(what, total, **kw)


def _silent(_text: str) -> None:
    return None


@dataclass
class Reporter:
    """Where a library call's words go. The library never prints: a command passes one of these
    (stages/_common.reporter), tests and quiet callers take the default, which shows nothing.
    Texts may carry rich markup ('[yellow]note:[/] ...'); a plain sink can strip it."""

    progress: Callable[..., Progress] = quiet
    """progress(what, total, *, enabled=True, **kw) -> a Progress (a live bar, plain lines, or counting only)."""
    line: Callable[[str], None] = _silent
    """What a run did: stage lines ('train: run (...)'), to stdout."""
    note: Callable[[str], None] = _silent
    """Diagnostics: warnings and notes, to stderr."""
    status: Callable[[str], ContextManager] = lambda _text: contextlib.nullcontext()
    """A spinner around a step without a count (scoring)."""

    def bar(self, what: str, total: int, *, enabled: bool = True, **kw) -> Progress:
        return self.progress(what, total, **kw) if enabled else quiet(what, total, **kw)
