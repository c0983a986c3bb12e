"""The `ecpa` command (one subcommand per stage, plus the chain) and `ecpa-train`.

Each stage module owns its command function; this file only wires them into one typer app.
"""
from __future__ import annotations

import typer

from stages import ablate, caption, chain, data, extract, protocols, score, show, train
from stages import export, gc, predict

app = typer.Typer(
    name="ecpa",
    help="ECPA emotional video captioning: extract (stage one) -> train (stage two) -> caption -> score.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("manifest", help="Write cache/<dataset>/manifest.jsonl from the dataset's annotation files.")(data.manifest_command)
app.command("demo-data", help="Generate the synthetic demo dataset (real H.264 clips of moving faces).")(data.demo_data_command)
app.command("extract", help="Stage one: frozen ResNet50-ER, ANFL and Video Swin features into Zarr.")(extract.command)
app.command("train", help="Stage two: train prompts, alignment losses and the transformer on a cache.")(train.command)
app.command("caption", help="Decode captions for a split with a trained run.")(caption.command)
app.command("score", help="Score captions: BLEU-4, METEOR, ROUGE-L, CIDEr, emotion accuracy.")(score.command)
app.command("run", help="Run extract -> train -> caption -> score, skipping stages whose key is unchanged.")(chain.run_command)
app.command("status", help="Show each stage's key and whether it is fresh, stale or missing.")(chain.status_command)
app.command("sweep", help="Grid over fields (e.g. model.top_k=1,2,3), sharing what does not change; plot + CSV.")(chain.sweep_command)
app.command("ablate", help="The paper's ablation rows (Tables IV-VI) on one cache, sharing the extraction; CSV + Markdown + PNG.")(ablate.command)
app.command("gc", help="List (--delete: remove) the stage outputs no current preset or given config reaches; never what a running process holds.")(gc.command)
app.command("compare", help="One table of metrics and differing config fields for several runs.")(chain.compare_command)
app.command("show", help="A PNG/HTML sheet for chosen clips: frames, caption, references, emotion, top AUs.")(show.command)
app.command("cross", help="Cross-dataset protocol: train on one cache, caption and score another.")(protocols.cross_command)
app.command("zeroshot", help="Zero-shot protocol: caption and score an MSVD/MSR-VTT cache with a trained run.")(protocols.zeroshot_command)
app.command("predict", help="Caption any video with a trained run or exported model: caption, emotion, top AUs.")(predict.command)
app.command("export", help="Write a trained run as a self-contained model folder (safetensors + checksums).")(export.command)


def train_entry() -> None:
    """`ecpa-train --cache cache/mafw [--set train.lr=1e-4 ...]`."""
    typer.run(train.command)


if __name__ == "__main__":
    app()
