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

    from pipeline.data.manifest import ensure_manifest, read_manifest, split_counts

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
    from pipeline.data.demo import generate

    cfg = resolve_config(preset, set)
    root = Path(out or cfg.data.root)
    ann = generate(root, n_clips=clips or cfg.data.demo_clips, seed=cfg.data.demo_seed if seed is None else seed,
                   video_size=cfg.data.demo_video_size)
    _common.out.print(f"[green]demo dataset[/] written: {ann}")
    from pipeline.extract.demo_fit import wanted

    if wanted(cfg) and out is None and clips is None and seed is None:
        from pipeline.extract.demo_fit import ensure_demo_extractors
        from pipeline.data.manifest import ensure_manifest

        ensure_manifest(cfg)
        ensure_demo_extractors(cfg, say=lambda t: console.print(t, highlight=False))
        print_extractor_quality(cfg)


def print_extractor_quality(cfg) -> None:
    """The demo's fitted extractors measured on its test split (from their stage.json), as one table."""
    from rich.table import Table

    from pipeline.extract.demo_fit import fit_dir, fit_key
    from pipeline.records import read_record

    rec = read_record(fit_dir(cfg))
    if rec is None or rec.get("key") != fit_key(cfg):
        return
    q = rec["extra"]["quality"]
    t = Table(title=f"demo extractors, fitted on {rec['counts'].get('train_clips')} training clips; "
                    f"quality on the {q['clips']} test clips ({fit_dir(cfg)})", title_justify="left")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("ER accuracy (clip: mean logits of the frames)", f"{100 * q['er_clip_accuracy']:.1f}% "
              f"(chance {100 * q['chance_er_accuracy']:.1f}%)")
    if "swin_clip_accuracy" in q:
        t.add_row("Video Swin clip accuracy (its fitted cls_head)", f"{100 * q['swin_clip_accuracy']:.1f}%")
    t.add_row("AU F1 x100, mean over the drawn main AUs", f"{100 * q['au_f1_mean_main']:.1f}")
    t.add_row("AU F1 x100, mean with their L/R AUs", f"{100 * q['au_f1_mean_all_drawn']:.1f}")
    if q.get("au_top3_precision") is not None:
        t.add_row("top-3 of the 41 AUs (clip confidence) that the clip draws", f"{100 * q['au_top3_precision']:.1f}%")
    from pipeline.extract.networks.anfl import AU_NAMES

    main = {a: q["au_f1"][a] for a in AU_NAMES if a in q["au_f1"] and not a.startswith(("AUL", "AUR"))}
    t.add_row("AU F1 x100 per main AU", " ".join(f"{a[2:]}:{100 * v:.0f}" for a, v in main.items()))
    _common.out.print(t)
