"""`ecpa predict VIDEO_OR_FOLDER... --run RUN | --model FOLDER`: caption any video with a trained model.

Reads top to bottom: find the model (a run folder or train-key prefix, or an exported model folder) ->
list the videos (folders expand to the videos in them) -> decode, extract (stage one's code, the run's
settings and checkpoints) and caption in batches -> print each result as it comes (or one JSON object a
line with --json). Nothing is written anywhere: features stay in memory.

A video that cannot be used (missing, not a video, no frames ...) is reported by name on stderr (and as
{"video", "error"} with --json) and the others go on; the exit status is 1 when any video failed, 2 for a
usage error (no model, bad folder).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.errors import UserError
from stages._common import console, user_errors

BATCH_SIZE = 4
"""Videos extracted and decoded together by default."""


def load(run: str | None, model: Path | None, cache: Path | None, **kw):
    """The Captioner of `--run` or `--model` (exactly one)."""
    if (run is None) == (model is None):
        raise UserError("give exactly one of --run RUN_DIR_OR_KEY (a training run) or --model FOLDER "
                        "(from `ecpa export`)")
    if model is not None:
        from pipeline.caption.bundle import load_captioner

        return load_captioner(model, **kw)
    from pipeline.caption.captioner import captioner_from_run
    from pipeline.extract.stage import SEED

    from stages.export import find_run

    return captioner_from_run(find_run(run, cache), seed=SEED, **kw)


def print_prediction(p) -> None:
    typer.echo(f"{p.video}: {p.caption}")
    if p.emotion is not None:
        typer.echo(f"  emotion: {p.emotion} ({p.emotion_prob:.2f})")
    if p.top_aus:
        typer.echo("  top AUs: " + ", ".join(f"{name} {conf:.2f}" for name, conf in p.top_aus))


@user_errors
def command(
    videos: Annotated[list[Path], typer.Argument(help="Video files and/or folders of videos.")],
    run: Annotated[Optional[str], typer.Option("--run", help="Training run folder (cache/<ds>/runs/<key>) or a train-key prefix.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Model folder written by `ecpa export`.")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Where a key prefix is looked up (default: every cache/<dataset>).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per video on stdout.")] = False,
    beam: Annotated[Optional[int], typer.Option("--beam", help="Beam size (1 = greedy; default: as the model was evaluated).")] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help="Tokens at most, [CLS] included (default: the model's).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:n].")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Videos extracted and captioned together.")] = BATCH_SIZE,
    workers: Annotated[int, typer.Option("--workers", help="Decoding processes ahead of the device (0: in this process).")] = 0,
    weights_dir: Annotated[Optional[Path], typer.Option("--weights-dir", help="Folder of the extractor checkpoints, when not where the model's config says.")] = None,
    top_aus: Annotated[Optional[int], typer.Option("--top-aus", help="AUs listed per video (default: the model's K).")] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="With --run: best or last.")] = "best",
) -> None:
    """Caption videos with a trained model: caption, predicted emotion and probability, top AUs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.caption.captioner import VideoFailure, video_paths

    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if beam is not None and beam < 1:
        raise UserError(f"--beam {beam}: must be at least 1")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device here (use --device cpu or auto)")
    paths = video_paths(videos)
    kw = dict(device=device, weights_dir=str(weights_dir) if weights_dir else None, beam_size=beam,
              max_length=max_length, top_aus=top_aus)
    if run is not None:
        kw["checkpoint"] = checkpoint
    cap = load(run, model, cache, **kw)
    if cap.setup.random_init:
        console.print("[bold yellow]note:[/] this model was trained on features of RANDOM-weight extractors (a demo or "
                      "test run); its captions are for trials only", highlight=False)

    failed = 0
    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=len(paths) < 2, transient=True) as bar:
        task = bar.add_task("predict", total=len(paths))
        for result in cap.caption_videos(paths, batch_size=batch_size, workers=workers):
            bar.advance(task)
            if isinstance(result, VideoFailure):
                failed += 1
                console.print(f"[bold red]error:[/] {result.video}: {result.reason}", highlight=False, soft_wrap=True)
                if as_json:
                    typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
            elif as_json:
                typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
            else:
                print_prediction(result)
    if failed:
        console.print(f"{len(paths) - failed} of {len(paths)} video(s) captioned; {failed} could not be used "
                      "(see above)", highlight=False)
        raise typer.Exit(1)
