"""Dataset commands: `ecpa manifest` (annotations -> manifest.jsonl) and `ecpa demo-data`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stages import _common
from stages._common import CacheOpt, PresetOpt, SetOpt, console, resolve_config, user_errors


@user_errors
def manifest_command(preset: PresetOpt = None, set: SetOpt = None, cache: CacheOpt = None) -> None:
    from pipeline.manifest import ensure_manifest, read_manifest

    cfg = resolve_config(preset, set, cache)
    digest = ensure_manifest(cfg)
    clips = read_manifest(cfg.manifest_path)
    splits: dict[str, int] = {}
    for c in clips:
        splits[c.split] = splits.get(c.split, 0) + 1
    _common.out.print(
        f"[green]manifest[/] {cfg.manifest_path}: {len(clips)} clips "
        + ", ".join(f"{k} {v}" for k, v in sorted(splits.items()))
        + f" (sha256 {digest[:12]})"
    )


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
