"""`ecpa caption`: decode captions for caption.split with the run this config trains (the body:
pipeline.caption.stage). Parse options, prepare and plan once, run the stage, print a summary."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.caption import stage
from pipeline.chain.layout import CAPTIONS_FILE
from pipeline.chain.plan import plan, prepare
from stages import _common
from stages._common import CacheOpt, PresetOpt, SetOpt, console, out, resolve_config, user_errors


def print_caption_summary(rec: dict, out_dir: Path, n_show: int = 3) -> None:
    c, t = rec.get("counts", {}), rec.get("timings", {})
    out.print(f"[green]caption[/] {rec['key'][:16]}: {c.get('clips')} clips "
                  f"({t.get('captions_per_s')} captions/s), {c.get('skipped', 0)} skipped, "
                  f"{c.get('empty_captions', 0)} empty -> {out_dir}", highlight=False)
    _common.print_random_note(_common.random_extractors(caption_dir=out_dir))
    ex = rec.get("extra", {})
    if ex.get("max_length_from"):
        out.print(f"  max length {ex['max_length_from']}; vocabulary: {ex.get('vocabulary', 'all')}", highlight=False)
    for note in rec.get("extra", {}).get("notes", []):
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    path = Path(out_dir) / CAPTIONS_FILE
    if path.is_file():
        for r in json.loads(path.read_text())[:n_show]:
            out.print(f"  {r['image_id']}: {r['caption']!r} [{r['emotion']}]", highlight=False)


@user_errors
def command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Decode again even when a fresh output exists.")] = False,
) -> None:
    """Decode captions (and emotion predictions) for caption.split with the run this config trains."""
    cfg = resolve_config(preset, set, cache)
    plans = plan(cfg, prepare(cfg), upto="caption")
    rec = stage.run(cfg, plans, force=force, reporter=_common.reporter())
    print_caption_summary(rec, plans["caption"].out_dir)
