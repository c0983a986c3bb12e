"""The paper's ablation table (ECPA Tables IV-VI) as one CSV + Markdown table + PNG.

Each row is a named ablation of `pipeline.train.loop.ABLATIONS` run as an ordinary chain (so rows share the
extraction and any stage whose key they share). This module orders the rows, runs them (`run_rows`) and
writes `ablation.csv` (through `pipeline.chain.sweep.write_csv`, one row per ablation), `ablation.json`,
`ablation.md` and `ablation.png`; `stages/ablate.py` resolves each row's config, calls `run_rows` and prints.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from pipeline.errors import UserError
from pipeline.records import atomic_write_text
from pipeline.chain.sweep import SweepPoint, metric_order, plotted_metrics, write_csv

if TYPE_CHECKING:
    from pipeline.config import Config
    from pipeline.progress import Reporter

TABLE_ROWS: list[tuple[str, str, str]] = [
    ("IV", "baseline", "SwinBERT baseline"),
    ("IV", "vep", "+ VEP"),
    ("IV", "vep_tep", "+ VEP + TEP"),
    ("IV", "ecpa", "ECPA (+ ECA)"),
    ("V", "no_er_align", "w/o ER-sentence alignment"),
    ("V", "no_au_align", "w/o AU-word alignment"),
    ("VI", "er_global", "ER-sentence: global similarity"),
    ("VI", "er_sim_ce", "ER-sentence: similarity-based CE"),
    ("VI", "au_ce", "AU-word: cross-entropy"),
    ("VI", "au_contrastive", "AU-word: normal contrastive"),
]
"""(paper table, ablation name, row label) in the order the table prints them."""

DEFAULT_ROWS = [name for _, name, _ in TABLE_ROWS]
REFERENCE = "ecpa"
"""The row every other row's difference is taken against."""


def resolve_rows(rows: list[str] | None) -> list[str]:
    """The ablations to run, in table order; unknown names are refused with the known ones."""
    from pipeline.train.loop import ABLATIONS

    if not rows:
        return list(DEFAULT_ROWS)
    unknown = [r for r in rows if r not in ABLATIONS]
    if unknown:
        raise UserError(f"ablate: unknown row(s) {', '.join(unknown)} (one of {', '.join(ABLATIONS)})")
    order = {name: i for i, name in enumerate([*DEFAULT_ROWS, *ABLATIONS])}
    return sorted(dict.fromkeys(rows), key=lambda r: order[r])


def _label(name: str) -> tuple[str, str]:
    for table, n, label in TABLE_ROWS:
        if n == name:
            return table, label
    return "-", name


def untrained_emotion(name: str) -> bool:
    """Rows without L_ER: nothing trains the emotion readout, so their emotion accuracy means nothing."""
    from pipeline.train.loop import ablation_sets

    return "train.align_er=false" in ablation_sets(name)


def markdown_table(points: list[SweepPoint], title: str = "") -> str:
    """One line per ablation: table, row, `--ablation`, the plotted metrics x100, and CIDEr minus ECPA's.
    Emotion accuracy of a row without L_ER is marked '(no L_ER)': its readout is untrained."""
    present = metric_order({m for p in points for m in p.metrics})
    panels = plotted_metrics(present)
    ref = next((p for p in points if p.values["ablation"] == REFERENCE), None)
    cider = next((k for d, k in panels if d == "CIDEr"), None)
    head = ["table", "row", "`--ablation`", *[f"{d} x100" for d, _ in panels]]
    if ref is not None and cider is not None:
        head.append("CIDEr vs ECPA")
    lines = ([f"{title}", ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        name = p.values["ablation"]
        table, label = _label(name)
        cells = [table, label, f"`{name}`"]
        for display, k in panels:
            cell = f"{100 * p.metrics[k]:.2f}" if k in p.metrics else "-"
            if display == "Emotion acc." and k in p.metrics and untrained_emotion(name):
                cell += " (no L_ER)"
            cells.append(cell)
        if ref is not None and cider is not None:
            delta = p.metrics.get(cider, float("nan")) - ref.metrics.get(cider, float("nan"))
            cells.append("-" if name == REFERENCE else f"{100 * delta:+.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_ablation(path: Path, points: list[SweepPoint], title: str = "") -> Path:
    """One panel per metric (x100), one bar per ablation, ECPA's bar and level marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = plotted_metrics({m for p in points for m in p.metrics})
    if not panels:
        raise UserError("ablate plot: no plotted metric (BLEU-4, METEOR, ROUGE-L, CIDEr, emotion acc.) in the scores")
    names = [p.values["ablation"] for p in points]
    colours = ["tab:red" if n == REFERENCE else {"IV": "tab:blue", "V": "tab:orange", "VI": "tab:green"}.get(_label(n)[0], "grey")
               for n in names]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 4.2), squeeze=False)
    for ax, (display, key) in zip(axes[0], panels):
        vals = [100 * p.metrics.get(key, float("nan")) for p in points]
        ax.bar(range(len(points)), vals, color=colours)
        if REFERENCE in names:
            ax.axhline(vals[names.index(REFERENCE)], color="tab:red", linewidth=0.8, linestyle="--")
        finite = [v for v in vals if v == v]
        if finite:
            lo, hi = min(finite), max(finite)
            ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 1)), hi + 0.1 * (hi - lo + 1))
        ax.set_xticks(range(len(points)), names, rotation=60, ha="right", fontsize=7)
        ax.set_title(display)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("x100")
    if title:
        fig.suptitle(title + "  (blue: Table IV, orange: V, green: VI, red: ECPA)", fontsize=9)
    fig.tight_layout()
    from pipeline.records import save_figure

    return save_figure(fig, path, dpi=120)


def write_outputs(out_dir: Path, points: list[SweepPoint], meta: dict, title: str = "") -> dict[str, Path]:
    """ablation.csv / .json / .md / .png in `out_dir`."""
    import json

    out_dir = Path(out_dir)
    csv_path = write_csv(out_dir / "ablation.csv", ["ablation"], points)
    json_path = out_dir / "ablation.json"
    atomic_write_text(json_path, json.dumps({**meta, "rows": [
        {"ablation": p.values["ablation"], "table": _label(p.values["ablation"])[0], "keys": p.keys,
         "metrics": p.metrics, "actions": p.actions} for p in points]}, indent=2, default=str) + "\n")
    md_path = out_dir / "ablation.md"
    atomic_write_text(md_path, markdown_table(points, title))
    png_path = plot_ablation(out_dir / "ablation.png", points, title)
    return {"csv": csv_path, "json": json_path, "md": md_path, "png": png_path}


def run_rows(names: list[str], cfgs: list["Config"], out_dir: Path, *, sets: Sequence[str] = (),
             reporter: "Reporter | None" = None) -> list[SweepPoint]:
    """Run each ablation row as a chain, one after another, and rewrite the table files (`write_outputs`) after
    every row, so an interrupted run keeps what finished. `names`: the rows in table order (`resolve_rows`);
    `cfgs`: each row's config, already resolved by the caller (`sets`: the overrides common to every row, as
    given, recorded in ablation.json). 'ablation 2/4: ...' and the stage lines go to `reporter.line`."""
    from rich.markup import escape

    from pipeline.chain.plan import prepare
    from pipeline.chain.run import run_chain
    from pipeline.progress import Reporter

    if len(cfgs) != len(names):
        raise ValueError(f"run_rows: {len(cfgs)} configs for {len(names)} rows")
    if not names:
        return []
    reporter = reporter or Reporter()
    base = cfgs[0]
    meta = {"preset": base.preset, "sets": list(sets), "rows": names}
    title = f"{base.preset}: ablations (Tables IV-VI), {base.caption.split} split"
    done: list[SweepPoint] = []
    for i, (row, cfg) in enumerate(zip(names, cfgs), 1):
        reporter.line(f"[bold]ablation {i}/{len(names)}[/]: {escape(row)}")
        res = run_chain(cfg, prepare(cfg), reporter=reporter)
        done.append(SweepPoint({"ablation": row}, res.keys, res.scores, {o.name: o.action for o in res.outcomes}))
        write_outputs(out_dir, done, meta, title)
    return done
