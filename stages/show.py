"""`ecpa show`: a PNG contact sheet for chosen clips of a caption output.

One row per clip: a few frames decoded from the video (pipeline.extract.video), then the generated caption, the
references, the true and predicted emotion, and the top action units by ANFL confidence (the store's
`au/probs`, named by its `au_names` attribute). Written into the caption folder (`show.png`) unless
`--out` says otherwise.

    ecpa show --preset demo --clips demo_0003,demo_0010
    ecpa show --preset demo --n 6
    ecpa show --caption-dir cache/mafw/runs/<key>/captions/<key>   # e.g. a cross-dataset output
    ecpa show --preset mafw --boxes     # the stored face box on each frame, coloured by face/source

With `--boxes` the frames are the extraction's own (its sampling, resize and centre crop, evenly spaced
among its F frames) with the store's `face/boxes` drawn on them: green detected, yellow tracked, orange
interpolated, red fallback (the centre square of a clip where no face was found).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from pipeline.chain.layout import CONFIG_FILE
from pipeline.errors import UserError
from stages import _common
from stages._common import CacheOpt, PresetOpt, SetOpt, console, resolve_config, user_errors

SHOW_FILE = "show.png"
BOX_COLOURS = {"detected": "lime", "tracked": "yellow", "interpolated": "orange", "fallback": "red"}
"""Edge colour per face/source kind (pipeline.extract.store.FACE_SOURCES)."""


def _stored_frames(video: str, row: int, g, ex, k: int) -> tuple[np.ndarray | None, list, str | None]:
    """k of the extraction's frames of one clip (as it sampled and cropped them) with the stored boxes and their
    source kinds: (frames (k, crop, crop, 3), [(box, kind)], note)."""
    from pipeline.extract.store import FACE_SOURCES, SOURCE_UNSET
    from pipeline.extract.video import ClipError, decode_clip, even_subset

    boxes = np.asarray(g["face/boxes"][row])
    src = np.asarray(g["face/source"][row])
    try:
        frames = decode_clip(video, num_frames=len(boxes), size=ex.size, crop=ex.crop).frames
    except (ClipError, OSError) as e:
        return None, [], str(e)
    idx = even_subset(len(boxes), k)
    kinds = [FACE_SOURCES[int(s)] if int(s) != SOURCE_UNSET else None for s in src[idx]]
    return frames[idx], [(boxes[i], kind) for i, kind in zip(idx, kinds)], None


def _clip_frames(video: str, n: int, side: int) -> tuple[np.ndarray | None, str | None]:
    """(n, side, side, 3) uint8 frames sampled uniformly, or (None, why) when the video cannot be decoded."""
    from pipeline.extract.video import ClipError, decode_clip

    try:
        return decode_clip(video, num_frames=n, size=side, crop=side).frames, None
    except (ClipError, OSError) as e:
        return None, str(e)


def top_aus(probs: np.ndarray, names: list[str], k: int = 3) -> list[tuple[str, float]]:
    """Top-k distinct AUs by clip-level confidence (mean over the AU frames): [(name, p)]. OpenGraphAU's
    left/right AUs (AUL1, AUR1, ...) are not candidates: they repeat their main AU's node (as stage two's
    top-K), and would fill the list with one AU three times."""
    conf = np.asarray(probs, dtype=np.float64).reshape(-1, len(names)).mean(axis=0)
    candidates = np.array([i for i, n in enumerate(names) if not (n.startswith(("AUL", "AUR")) and n[3:].isdigit())])
    order = candidates[np.argsort(-conf[candidates], kind="stable")][:k]
    return [(names[i], float(conf[i])) for i in order]


def render_sheet(rows: list[dict], out: Path, frames_per_clip: int = 4) -> Path:
    """rows: {clip, frames (n,h,w,3) or None, frames_note, caption, references, emotion_true, emotion_pred,
    aus [(name, p)]} -> PNG at `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    fig, axes = plt.subplots(n, frames_per_clip + 1, figsize=(2.2 * frames_per_clip + 6.5, 2.4 * n),
                             gridspec_kw={"width_ratios": [1] * frames_per_clip + [3.2]}, squeeze=False)
    for r, row in enumerate(rows):
        frames = row.get("frames")
        for j in range(frames_per_clip):
            ax = axes[r, j]
            ax.axis("off")
            if frames is not None and j < len(frames):
                ax.imshow(frames[j])
                if row.get("boxes") and j < len(row["boxes"]) and row["boxes"][j][1] is not None:
                    from matplotlib.patches import Rectangle

                    (x0, y0, x1, y1), kind = row["boxes"][j]
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, ec=BOX_COLOURS[kind]))
                    ax.set_xlim(0, frames[j].shape[1])
                    ax.set_ylim(frames[j].shape[0], 0)
                    ax.set_title(kind, fontsize=7, color=BOX_COLOURS[kind])
            elif j == 0:
                ax.text(0.0, 0.5, "frames unavailable:\n" + "\n".join(textwrap.wrap(row.get("frames_note") or "", 28)),
                        fontsize=7, color="firebrick", va="center", transform=ax.transAxes)
        ax = axes[r, -1]
        ax.axis("off")
        true, pred = row.get("emotion_true"), row.get("emotion_pred")
        mark = "" if true is None or pred is None else ("  (correct)" if true == pred else "  (wrong)")
        lines = [f"{row['clip']}", "generated: " + (row["caption"] or "(empty)")]
        lines += [f"ref {i + 1}: {c}" for i, c in enumerate(row["references"][:3])]
        if len(row["references"]) > 3:
            lines.append(f"(+{len(row['references']) - 3} more references)")
        lines.append(f"emotion: true {true or 'unlabelled'} / predicted {pred or '-'}{mark}")
        if row.get("aus"):
            lines.append("top AUs: " + ", ".join(f"{a} {p:.2f}" for a, p in row["aus"]))
        text = "\n".join(w for line in lines for w in textwrap.wrap(line, 78, subsequent_indent="    "))
        ax.text(0.0, 1.0, text, fontsize=8, va="top", ha="left", family="monospace", transform=ax.transAxes)
    fig.tight_layout()
    from pipeline.records import save_figure

    return save_figure(fig, out, dpi=90)


def build_rows(caption_dir: Path, clip_ids: list[str] | None, n: int, frames_per_clip: int = 4,
               side: int = 160, boxes: bool = False) -> list[dict]:
    """Gather what the sheet shows for the chosen clips of a caption output (`boxes`: the extraction's frames
    with the stored face boxes, see the module docstring)."""
    from pipeline.config import load_config
    from pipeline.data.manifest import read_manifest
    from pipeline.records import read_record
    from pipeline.extract.store import open_store
    from pipeline.score.stage import read_caption_output

    results, refs = read_caption_output(caption_dir)
    by_id = {str(r["image_id"]): r for r in results}
    if clip_ids:
        unknown = [c for c in clip_ids if c not in by_id]
        if unknown:
            raise UserError(f"clip(s) {', '.join(unknown)} are not in {caption_dir / 'captions.json'} "
                            f"(it holds {len(by_id)} clips of one split, e.g. {', '.join(list(by_id)[:3])})")
        chosen = list(clip_ids)
    else:
        chosen = list(by_id)[:n]
    gts: dict[str, list[str]] = {}
    for a in refs["annotations"]:
        gts.setdefault(str(a["image_id"]), []).append(a["caption"])
    true = {str(im["id"]): im.get("emotion") for im in refs["images"]}

    cfg_path = caption_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: missing (the caption output is incomplete); rerun `ecpa caption`")
    cfg = load_config(cfg_path)
    videos = {c.id: c.video for c in read_manifest(cfg.manifest_path)}
    rec = read_record(caption_dir) or {}
    store_path = rec.get("extra", {}).get("store")
    aus_of: dict[str, list] = {}
    g, row_of = None, {}
    if store_path and Path(store_path).exists():
        g = open_store(store_path)
        names = list(g.attrs.get("au_names", []))
        ids = [str(x) for x in np.asarray(g["clip_id"][:])]
        row_of = {c: i for i, c in enumerate(ids)}
        if names:
            for cid in chosen:
                if cid in row_of:
                    aus_of[cid] = top_aus(np.asarray(g["au/probs"][row_of[cid]]), names)
    else:
        console.print(f"[yellow]show:[/] feature store {store_path} not found: no AU column", highlight=False)
        if boxes:
            raise UserError(f"--boxes: the feature store {store_path} of {caption_dir} is not there")

    rows = []
    for cid in chosen:
        frames, note, drawn = (None, "clip not in the manifest", [])
        if cid in videos and boxes and cid in row_of:
            frames, drawn, note = _stored_frames(videos[cid], row_of[cid], g, cfg.extract, frames_per_clip)
        elif cid in videos:
            frames, note = _clip_frames(videos[cid], frames_per_clip, side)
        if note:
            console.print(f"[yellow]show:[/] {cid}: frames unavailable ({note})", highlight=False)
        rows.append({"clip": cid, "frames": frames, "frames_note": note, "caption": by_id[cid]["caption"],
                     "references": gts.get(cid, []), "emotion_true": true.get(cid),
                     "emotion_pred": by_id[cid].get("emotion"), "aus": aus_of.get(cid), "boxes": drawn})
    return rows


@user_errors
def command(
    preset: PresetOpt = None,
    set: SetOpt = None,
    cache: CacheOpt = None,
    clips: Annotated[Optional[str], typer.Option("--clips", help="Comma-separated clip ids to show.")] = None,
    n: Annotated[int, typer.Option("--n", help="Without --clips: the first N clips of the caption output.")] = 6,
    caption_dir: Annotated[Optional[Path], typer.Option("--caption-dir", help="A caption output folder (e.g. of `ecpa cross`) instead of the one this config plans.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="PNG path (default: show.png in the caption folder).")] = None,
    boxes: Annotated[bool, typer.Option("--boxes", help="Draw the stored face boxes on the extraction's frames, coloured by how each was found.")] = False,
) -> None:
    """A PNG sheet for chosen clips: frames, generated caption, references, true/predicted emotion, top AUs."""
    if caption_dir is None:
        from pipeline.chain.plan import plan, read_inputs

        cfg = resolve_config(preset, set, cache)
        inputs = read_inputs(cfg)   # a sheet of existing outputs: nothing is built or written
        if inputs is None:
            raise UserError(f"no {cfg.data.name} dataset under {cfg.data.root} yet; run `ecpa run` first")
        p = plan(cfg, inputs, upto="caption")["caption"]
        if p.status() != "fresh":
            raise UserError(f"no captions for this config yet ({p.out_dir} is {p.status()}); run `ecpa caption` "
                            "with the same preset/--set first")
        caption_dir = p.out_dir
    caption_dir = Path(caption_dir)
    ids = [c.strip() for c in clips.split(",") if c.strip()] if clips else None
    if n < 1 and not ids:
        raise UserError("--n must be at least 1")
    rows = build_rows(caption_dir, ids, n, boxes=boxes)
    path = render_sheet(rows, Path(out) if out else caption_dir / SHOW_FILE)
    _common.out.print(f"[green]show[/]: {len(rows)} clips -> {path}", highlight=False)
    _common.print_random_note(_common.random_extractors(caption_dir=caption_dir))
