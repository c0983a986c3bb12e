"""Plumbing shared by the stage commands: option types, config resolution, user-error handling."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console

from pipeline.chain.layout import CONFIG_FILE
from pipeline.config import Config, load_config, preset_names
from pipeline.errors import UserError

console = Console(stderr=True, soft_wrap=True)
"""Diagnostics (notes, warnings, errors) and the live progress bars on a terminal go to stderr."""
out = Console(soft_wrap=True)
"""What a run did and found goes to stdout: stage lines, summaries, scores, tables, `--json`, and the plain
periodic progress lines of an unattended run (stdout not a terminal), so `ecpa run > run.log` is a log."""


def progress(what: str, total: int, *, enabled: bool = True, **kw):
    """A pipeline.progress.Progress for a command: a live bar on stderr when it is a terminal, plain lines on
    stdout when stdout is not one (every `every_n` items or 60 s). `enabled=False`: counts only."""
    from pipeline.progress import Progress

    if not enabled:
        return Progress(what, total, **kw)
    emit = None if out.is_terminal else (lambda text: out.print(text, highlight=False, markup=False, soft_wrap=True))
    return Progress(what, total, emit=emit, console=console, **kw)

PresetOpt = Annotated[
    Optional[str],
    typer.Option("--preset", "-p", help="Preset name (demo, mafw, emvidcap, msvd, msrvtt) or a YAML path."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a field: section.field=value (repeatable), e.g. train.lr=1e-4."),
]
CacheOpt = Annotated[
    Optional[Path],
    typer.Option("--cache", help="Dataset cache folder, e.g. cache/mafw (sets data.cache_root and data.name)."),
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars of the stages.")]


def resolve_config(preset: str | None, sets: list[str] | None, cache: Path | None = None) -> Config:
    """Defaults < preset < --set. With only `--cache cache/<name>`, the preset is the one the cache was
    built with (`cache/<name>/config.yaml`), else the preset called <name>, else demo."""
    sets = list(sets or [])
    if cache is not None:
        cache = Path(cache)
        if preset is None:
            saved = cache / CONFIG_FILE
            if saved.is_file():
                preset = str(saved)
            elif cache.name in preset_names():
                preset = cache.name
            else:
                raise UserError(
                    f"{cache}: no config.yaml in this cache and no preset named {cache.name!r}; "
                    f"pass --preset (one of {', '.join(preset_names())})"
                )
        sets = [f"data.cache_root={cache.parent}", f"data.name={cache.name}"] + sets
    cfg = load_config(preset or "demo", sets)
    return cfg


def user_errors(fn: Callable) -> Callable:
    """Run a command; a UserError prints one red line (no traceback) and exits 2; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: finished work is kept; rerun the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


from pipeline.score.coco import JAVA_HINT, java_available  # noqa: E402,F401  (one home: the library)


def random_extractors(cfg: Config | None = None, caption_dir: Path | None = None) -> list[str]:
    """The extractors whose weights were random for the features behind `cfg` (its extract config) or behind a
    caption output (the store its record names, whose extract record lists the weights)."""
    from pipeline.chain.specs import random_weights, weight_provenance

    weights: dict = {}
    if cfg is not None:
        weights = weight_provenance(cfg)
    elif caption_dir is not None:
        from pipeline.records import DamagedRecordError, read_record

        try:
            cap = read_record(Path(caption_dir)) or {}
            store = (cap.get("extra") or {}).get("store")
            ex = read_record(Path(store).parent) if store else None
        except DamagedRecordError:
            ex = None
        weights = ((ex or {}).get("extra") or {}).get("weights") or {}
    return random_weights(weights)


def random_note(names: list[str]) -> str:
    """The line every summary carries when features came from random weights ('' when none did)."""
    if not names:
        return ""
    return (f"RANDOM WEIGHTS: the features come from random {', '.join(names)} extractor weights "
            "(extract.random_init=true); these numbers are for trials, not results")


def print_random_note(names: list[str]) -> None:
    note = random_note(names)
    if note:
        out.print(f"[bold yellow]{note}[/]", highlight=False)


def reporter(show_progress: bool = True):
    """The pipeline.progress.Reporter of a command: stage lines to stdout, notes to stderr, progress as
    `progress` above (counting only when `show_progress` is off, and then no spinners either)."""
    import contextlib

    from pipeline.progress import Reporter, quiet

    return Reporter(
        progress=progress if show_progress else quiet,
        line=lambda text: out.print(text, highlight=False, soft_wrap=True),
        note=lambda text: console.print(text, highlight=False, soft_wrap=True),
        status=(lambda text: console.status(text, spinner="dots")) if show_progress
        else (lambda _text: contextlib.nullcontext()),
    )


def echo_default(text: str) -> None:
    """Where a sweep's or an ablation's lines go by default: stdout, rich markup rendered."""
    out.print(text, highlight=False, soft_wrap=True)


def sweep_reporter(show_progress: bool, echo: Callable[[str], None] | None):
    """The Reporter of a sweep or an ablation: `reporter(show_progress)` with its lines (the stage lines and the
    sweep's own) sent to `echo` (None: dropped)."""
    rep = reporter(show_progress)
    rep.line = echo or (lambda _t: None)
    return rep
