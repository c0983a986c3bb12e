"""The benchmark table: rows (figure, baseline measured in the same run, ratio, target, holds), the machine
they were measured on, and the Markdown / JSON writers behind `make bench` (tests/bench/__main__.py).

Ratio convention: how many times better than the baseline the figure is, whatever the unit, so a ratio
above 1 is always an improvement: baseline/figure for times and sizes (lower is better), figure/baseline
for rates (higher is better). A target is one of: the ratio at least x ("at_least", also "within 10%" =
ratio >= 1/1.1), the figure at most a limit ("under"), the figure true ("is_true"), or "report" (no target).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Target:
    kind: str                     # "ratio" | "under" | "true" | "report"
    value: float | None = None    # minimum ratio ("ratio") or maximum figure ("under")
    text: str = ""


def at_least(x: float) -> Target:
    """The figure must be at least `x` times better than its baseline."""
    return Target("ratio", float(x), f">= {x:g}x")


def within(frac: float) -> Target:
    """The figure may be at most `frac` worse than its baseline (ratio >= 1/(1+frac))."""
    return Target("ratio", 1.0 / (1.0 + frac), f"within {frac:.0%} of baseline")


def under(limit: float, unit: str) -> Target:
    return Target("under", float(limit), f"< {limit:g} {unit}".rstrip())


IS_TRUE = Target("true", None, "yes")
REPORT = Target("report", None, "report")


@dataclass
class Row:
    what: str
    figure: float | bool | None
    unit: str = ""
    baseline: float | None = None
    baseline_what: str = ""
    higher_is_better: bool = False
    target: Target = REPORT
    bench: str = ""
    detail: str = ""              # extra words shown after the figure (e.g. files created)
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        """Times better than the baseline (see the module docstring); None without a usable baseline."""
        f, b = self.figure, self.baseline
        if self.error or b is None or f is None or isinstance(f, bool):
            return None
        if not (math.isfinite(f) and math.isfinite(b)) or b < 0 or f < 0:
            return None
        num, den = (f, b) if self.higher_is_better else (b, f)
        if den == 0:
            return math.inf if num > 0 else None
        return num / den

    @property
    def holds(self) -> str:
        """'yes' / 'no' against the target, 'n/a' for report-only rows, 'error' when it could not be measured."""
        if self.error:
            return "error"
        t = self.target
        if t.kind == "report":
            return "n/a"
        if t.kind == "true":
            return "yes" if self.figure is True else "no"
        if t.kind == "under":
            ok = self.figure is not None and not isinstance(self.figure, bool) and self.figure < t.value
            return "yes" if ok else "no"
        if t.kind == "ratio":
            r = self.ratio
            return "yes" if r is not None and r >= t.value - 1e-12 else "no"
        raise ValueError(f"unknown target kind {t.kind!r}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["target"] = self.target.text
        d["target_kind"], d["target_value"] = self.target.kind, self.target.value
        r = self.ratio
        d["ratio"] = None if r is None else (r if math.isfinite(r) else "inf")
        d["holds"] = self.holds
        return d


def error_row(bench: str, what: str, message: str) -> Row:
    return Row(what=what, figure=None, bench=bench, error=message)


# ------------------------------------------------------------------------------------------- formatting
def fmt_num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    s = f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.2f}" if a >= 0.1 else f"{x:.3g}"
    return f"{s} {unit}".rstrip()


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    if not math.isfinite(r):
        return "inf"
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[Row]) -> str:
    head = "| what | figure | baseline | ratio | target | holds |\n|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        if r.error:
            fig = f"**error**: {r.error}"
            base = "-"
        else:
            fig = fmt_num(r.figure, r.unit) + (f" ({r.detail})" if r.detail else "")
            base = "-" if r.baseline is None else fmt_num(r.baseline, r.unit) + (
                f" ({r.baseline_what})" if r.baseline_what else "")
        lines.append("| " + " | ".join(_cell(c) for c in (r.what, fig, base, fmt_ratio(r.ratio), r.target.text,
                                                           r.holds)) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- machine
def machine_info() -> dict:
    """CPU model, cores (online and usable by this process), torch version, OS, load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return info


def machine_line(m: dict) -> str:
    gpu = f"; GPU {m['cuda']}" if m.get("cuda") else "; no GPU"
    load = ""
    if "load_avg_1m" in m:
        load = f"; load average {m['load_avg_1m']}"
        if "load_avg_1m_end" in m:
            load += f" at start, {m['load_avg_1m_end']} at end"
    threads = f"; {m['bench_threads']} torch thread(s) per benchmark" if m.get("bench_threads") else ""
    return (f"{m['cpu']}, {m['cores_usable']} of {m['cores']} cores usable{gpu}{threads}; torch {m['torch']}; "
            f"Python {m['python']}; {m['os']}{load}")


@dataclass
class Results:
    rows: list[Row]
    machine: dict
    date: str = field(default_factory=lambda: _dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    command: str = ""
    benchmarks: list[dict] = field(default_factory=list)   # name, argv, seconds, error, result

    def markdown(self) -> str:
        out = ["# Benchmark results", "",
               f"- Command: `{self.command}`" if self.command else "",
               f"- Machine: {machine_line(self.machine)}",
               f"- Date: {self.date}",
               "- Ratio = times better than the baseline measured in the same run (>1 is better).", "",
               markdown_table(self.rows), "", "## Benchmarks run", "",
               "| benchmark | arguments | seconds | status |", "|---|---|---|---|"]
        for b in self.benchmarks:
            status = "ok" if not b.get("error") else "error: " + str(b["error"]).strip().splitlines()[-1]
            out.append("| " + " | ".join(_cell(c) for c in (
                b["name"], " ".join(b.get("argv", [])) or "(defaults)", fmt_num(b.get("seconds")), status)) + " |")
        return "\n".join(x for x in out if x is not None) + "\n"

    def as_json(self) -> dict:
        return {"date": self.date, "command": self.command, "machine": self.machine,
                "rows": [r.as_dict() for r in self.rows], "benchmarks": self.benchmarks}

    def write(self, out_dir: Path, stem: str = "results") -> tuple[Path, Path]:
        """<out_dir>/<stem>.md and .json (bench/results.*), each written to a temp name then renamed."""
        from pipeline.records import atomic_write_text

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
        atomic_write_text(md, self.markdown())
        atomic_write_text(js, json.dumps(self.as_json(), indent=2, default=_json_default) + "\n")
        return md, js


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
