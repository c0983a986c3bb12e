"""`ecpa export RUN -o DIR`: a trained run as a self-contained model folder (pipeline.caption.bundle).

The folder holds the weights (safetensors), the resolved config, the tokenizer and its vocabulary, the
emotion classes, the extractor settings with the sha256 of the checkpoints the run was trained on, and a
checksum manifest. Load it with `pipeline.load_captioner(DIR)` or `ecpa predict --model DIR`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.errors import UserError
from stages._common import console, user_errors


def find_run(arg: str, cache: Path | None) -> Path:
    """A training run folder, or the run whose train key starts with `arg` under `cache` (default: every
    cache/<dataset>/ folder)."""
    from pipeline.chain.compare import resolve_run
    from pipeline.records import read_record

    caches = [cache] if cache is not None else sorted(p for p in Path("cache").glob("*") if p.is_dir())
    path = resolve_run(arg, caches)
    rec = read_record(path)
    if rec is None or rec.get("stage") != "train":
        raise UserError(f"{path}: a {rec.get('stage') if rec else 'unfinished'} output, not a training run; give "
                        "cache/<dataset>/runs/<train-key> or a key prefix")
    return path


@user_errors
def command(
    run: Annotated[str, typer.Argument(help="Training run folder (cache/<ds>/runs/<key>) or a train-key prefix.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Where a key prefix is looked up (default: every cache/<dataset>).")] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best (by validation CIDEr) or last.")] = "best",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing non-empty folder.")] = False,
) -> None:
    """Export a trained run as a self-contained model folder."""
    from pipeline.caption.bundle import MANIFEST, export_bundle
    from pipeline.extract.stage import SEED

    run_dir = find_run(run, cache)
    path = export_bundle(run_dir, out, checkpoint=checkpoint, seed=SEED, force=force)
    size = sum(f.stat().st_size for f in path.iterdir())
    console.print(f"[green]export[/] {run_dir} ({checkpoint}) -> {path} ({size / 2**20:.1f} MiB, checksums in "
                  f"{MANIFEST}); load with pipeline.load_captioner({str(path)!r}) or `ecpa predict --model {path}`",
                  highlight=False, soft_wrap=True)
