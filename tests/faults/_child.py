"""The process the fault tests kill: the real `ecpa` / `ecpa-train` command, instrumented.

    python -m tests.faults._child [--log FILE] [--fsize BYTES] -- ecpa extract --preset demo --set ...
    python -m tests.faults._child -- ecpa-train --cache ... --set ...

--log    append one line per store write of the extraction runner: `S <index>` before clip <index>'s
         arrays are written, `D <index>` once its done flag is set (pipeline.extract.runner.write_batch is
         wrapped; the lines are written unbuffered with O_APPEND, so a SIGKILL loses none that happened).
         This is how the tests count clips computed per run and clips computed twice.
--fsize  cap the size of any file this process writes (RLIMIT_FSIZE) with SIGXFSZ ignored, so a write
         past it fails with EFBIG the way a full disk fails with ENOSPC.

Everything after `--` is the command line; the command runs in this process (same code as the console
scripts: stages.cli.app / stages.cli.train_entry).
"""
from __future__ import annotations

import argparse
import os
import resource
import signal
import sys


def _install_log(path: str) -> None:
    import pipeline.extract.runner as extraction

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"P {os.getpid()}\n".encode())
    original = extraction.write_batch

    def logged_write_batch(g, rows, arrays):
        os.write(fd, "".join(f"S {i}\n" for i in rows).encode())
        original(g, rows, arrays)
        os.write(fd, "".join(f"D {i}\n" for i in rows).encode())

    extraction.write_batch = logged_write_batch


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: python -m tests.faults._child [--log FILE] [--fsize BYTES] -- ecpa|ecpa-train ARGS")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(prog="tests.faults._child")
    ap.add_argument("--log")
    ap.add_argument("--fsize", type=int)
    opts = ap.parse_args(argv[:cut])
    command = argv[cut + 1:]
    if opts.log:
        _install_log(opts.log)
    if opts.fsize:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (opts.fsize, opts.fsize))
    from stages import cli

    if command[0] == "ecpa":
        cli.app(args=command[1:], prog_name="ecpa")
    elif command[0] == "ecpa-train":
        sys.argv = command
        cli.train_entry()
    else:
        raise SystemExit(f"unknown command {command[0]!r} (ecpa or ecpa-train)")


if __name__ == "__main__":
    main()
