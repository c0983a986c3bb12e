"""pipeline.progress: plain lines every N items or T seconds, whole-run rate, s/clip below 1 clip/s, ETA."""
from __future__ import annotations

from pipeline.progress import Progress, duration, rate_text


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_lines_every_n_items_with_the_whole_run_rate():
    clock, lines = Clock(), []
    with Progress("extract", 10, every_n=4, every_s=1e9, emit=lines.append, clock=clock) as p:
        for _ in range(10):
            clock.t += 2.0                      # 0.5 clips/s, steady
            p.advance(1)
    assert len(lines) == 3                      # after 4, 8, and the last line at 10
    assert lines[0] == "extract 4/10 clips | 0.50 clips/s (2.00 s/clip) over 8s | ETA 12s"
    assert lines[-1].startswith("extract 10/10 clips | 0.50 clips/s") and lines[-1].endswith("| done")


def test_a_burst_after_a_slow_start_does_not_fake_the_rate():
    clock, lines = Clock(), []
    p = Progress("extract", 100, every_n=1000, every_s=1e9, emit=lines.append, clock=clock)
    clock.t += 100.0
    p.advance(1)                                 # one slow clip: 100 s
    clock.t += 0.1
    p.advance(6)                                 # a fast burst (a short window would say 60 clips/s)
    assert rate_text(7, 100.1, "clip").startswith("0.07 clips/s")
    assert "0.07 clips/s (14.30 s/clip)" in p.line()
    assert "ETA 22m10s" in p.line()              # 93 clips at 14.3 s


def test_lines_every_t_seconds_and_resumed_items_are_not_in_the_rate():
    clock, lines = Clock(), []
    with Progress("caption", 50, done=40, every_n=1000, every_s=30, emit=lines.append, clock=clock) as p:
        clock.t += 31
        p.advance(2)                             # 31 s since the start: a line though N is not reached
        clock.t += 1
        p.advance(1)
    assert lines[0].startswith("caption 42/50 clips | 0.06 clips/s")   # 2 clips in 31 s, not 42
    assert len(lines) == 2 and lines[1].startswith("caption 43/50")


def test_status_and_units():
    lines = []
    with Progress("train", 6, unit="step", every_n=2, emit=lines.append, clock=Clock()) as p:
        p.advance(2, status="epoch 1/3 step 2/2, mlm 1.000, lr 1.00e-04")
    assert lines[0].startswith("train 2/6 steps (epoch 1/3 step 2/2, mlm 1.000, lr 1.00e-04) | ")
    assert duration(93 * 14.3) == "22m10s" and duration(3600 * 26 + 60) == "1d02h01m" and duration(5) == "5s"


def test_no_emit_no_console_shows_nothing_but_counts():
    p = Progress("x", 3, every_n=1)
    p.advance(3)
    assert p.done == 3 and p.lines == 0


def test_heartbeat_lines_while_a_long_batch_is_in_flight():
    """Real clock: with nothing advancing for a while, a line still comes every every_s seconds."""
    import time

    lines = []
    with Progress("extract", 8, every_n=100, every_s=0.2, emit=lines.append) as p:
        p.advance(1)
        time.sleep(0.9)                      # one slow batch: no advance() for 0.9 s
        beats = len(lines)
        p.advance(7)
    assert beats >= 3, lines                 # ~every 0.2 s, each with the whole-run rate
    assert all(line.startswith("extract 1/8 clips | ") for line in lines[:beats])
    assert lines[-1].startswith("extract 8/8 clips") and lines[-1].endswith("| done")
