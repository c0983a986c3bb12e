"""`ecpa extract`: stage one on one config (the body: pipeline.extract.stage). Parse options, prepare and plan
once, run the stage, print what it did."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.chain.layout import RECORD_NAME
from pipeline.chain.plan import plan, prepare
from pipeline.errors import UserError
from pipeline.extract import stage
from stages import _common
from stages._common import CacheOpt, PresetOpt, SetOpt, console, out, resolve_config, user_errors


def print_extract_summary(rec: dict) -> None:
    c = rec["counts"]
    s = rec.get("summary")
    rate = f", {s['clips_per_s']:.2f} clips/s" if s and s.get("extracted") else ""
    reused = "" if s else " (reused: key unchanged)"
    out.print(f"[bold green]extract[/] {c['done']}/{c['clips']} clips done, {c['failed']} failed, "
              f"{c.get('skipped', 0) if s else c['done']} skipped{rate}{reused} -> {rec['extra']['store']}",
              highlight=False)
    if s:
        out.print(f"clips: {c['added']} added, {c['redone']} redone (video changed), {c['dropped']} dropped "
                  "(no longer in the manifest; rows kept)", highlight=False)
    for w in (rec["extra"].get("warnings") or [])[:10] if s else []:
        console.print(f"[yellow]warning[/]: {w['video']}: {w['warning']}", highlight=False, soft_wrap=True)
    if s and c.get("warnings", 0) > 10:
        console.print(f"[yellow]warning[/]: {c['warnings'] - 10} more in "
                      f"{Path(rec['extra']['store']).parent / RECORD_NAME}", highlight=False)
    if c.get("fallback_clips"):
        console.print(f"[yellow]face fallback[/]: {c['fallback_frames']} frames in {c['fallback_clips']} clips had no "
                      "face found and use the fallback box (face/source in the store)", highlight=False)


@user_errors
def command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Start over: delete this key's store and extract every clip again.")] = False,
    random_init: Annotated[bool, typer.Option("--random-init", help="Random extractor weights (trials only; keyed and recorded).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit non-zero when any clip failed.")] = False,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="dask scheduler address (tcp://host:8786) to distribute the clips.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Distribute over a local dask cluster of N processes.")] = None,
    export_hdf5: Annotated[Optional[Path], typer.Option("--export-hdf5", help="Also export the store to this HDF5 file (/<array>/<clip_id>).")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check every done clip of the store (chunk files, checksums, done flags) and extract the damaged ones again.")] = False,
) -> None:
    """Stage one: decode every clip once, run ResNet50-ER, ANFL and Video Swin, write the Zarr store."""
    sets = list(set or [])
    if random_init:
        sets.append("extract.random_init=true")
    cfg = resolve_config(preset, sets, cache)
    plans = plan(cfg, prepare(cfg), upto="extract")
    # strictness is applied below, after the summary and the HDF5 export, so a failed clip never hides them
    rec = stage.run(cfg, plans, force=force, reporter=_common.reporter(), strict=False, scheduler=scheduler,
                    workers_cluster=workers, verify=verify)
    print_extract_summary(rec)
    c = rec["counts"]
    _common.print_random_note(_common.random_extractors(cfg))
    if c["failed"]:
        console.print(f"[yellow]{c['failed']} clips failed[/]; reasons in {rec['extra']['errors']}", highlight=False)
    if export_hdf5 is not None:
        from pipeline.extract.hdf5 import export_hdf5 as export

        n = export(rec["extra"]["store"], export_hdf5)
        out.print(f"exported {n} clips to {export_hdf5}", highlight=False)
    if strict and c["failed"]:
        raise UserError(f"{c['failed']} of {c['clips']} clips failed (--strict); reasons in {rec['extra']['errors']}")
