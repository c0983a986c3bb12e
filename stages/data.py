"""Dataset commands: `ecpa manifest` (annotations -> manifest.jsonl) and `ecpa demo-data`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stages import _common
from stages._common import CacheOpt, PresetOpt, SetOpt, console, resolve_config, user_errors


@user_errors
def manifest_command(preset: PresetOpt = None, set: SetOpt = None, cache: CacheOpt = None) -> None:
    """Read the dataset's annotation files into cache/<name>/manifest.jsonl; print clips and captions per split."""
    from rich.markup import escape

    from pipeline.manifest import ensure_manifest, read_manifest, split_counts

    cfg = resolve_config(preset, set, cache)
    notes: list[str] = []
    digest = ensure_manifest(cfg, notes)
    for note in notes:
        console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
    clips = read_manifest(cfg.manifest_path)
    counts = split_counts(clips)
    _common.out.print(f"[green]manifest[/] {escape(str(cfg.manifest_path))}: {len(clips)} clips, "
                      f"{sum(n for _, n in counts.values())} captions (sha256 {digest[:12]})", highlight=False)
    for split, (n_clips, n_caps) in counts.items():
        _common.out.print(f"  {split:5s} {n_clips:6d} clips {n_caps:7d} captions", highlight=False)


@user_errors
def demo_data_command(
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the demo preset's data.root).")] = None,
    clips: Annotated[Optional[int], typer.Option(help="Number of clips (default: data.demo_clips).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Generator seed (default: data.demo_seed).")] = None,
    preset: PresetOpt = None,
    set: SetOpt = None,
) -> None:
    from pipeline.demo_data import generate

    cfg = resolve_config(preset, set)
    root = Path(out or cfg.data.root)
    ann = generate(root, n_clips=clips or cfg.data.demo_clips, seed=cfg.data.demo_seed if seed is None else seed,
                   video_size=cfg.data.demo_video_size)
    _common.out.print(f"[green]demo dataset[/] written: {ann}")
