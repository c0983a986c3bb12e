"""Issue 8.4: SIGKILL `ecpa-train` after its first epoch checkpoint, resume, and end with the same
weights as an uninterrupted run (CPU, bit for bit).

The uninterrupted run trains in this process on a copy of the reference cache; the killed run is the
real `ecpa-train` in a child process on another copy, killed a seeded random moment after its first
epoch's checkpoint (metrics.jsonl has a line) and before the end; the resume runs in this process. The moment
is a seeded number of checkpointed epochs plus a seeded fraction of the last epoch's own duration (its
`time_s`), so the kill lands mid-epoch however fast the machine trains (a fixed delay in seconds once missed
every remaining epoch when the step got faster).
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.faults._harness import Row, copy_cache, report, spawn, train_command, trials, wait_for

EPOCHS = 6


def _run_dir(cfg):
    from pipeline.chain.plan import prepare_and_plan as plan

    return plan(cfg, upto="train")["train"].out_dir


def _metric_epochs(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _last_epoch_s(run_dir) -> float:
    """`time_s` of the last complete line of metrics.jsonl (a line being appended is skipped)."""
    for line in reversed((run_dir / "metrics.jsonl").read_text().splitlines()):
        try:
            return float(json.loads(line)["time_s"])
        except (ValueError, KeyError):
            continue
    raise AssertionError(f"no complete line with time_s in {run_dir / 'metrics.jsonl'}")


def _weights(run_dir) -> dict:
    import torch

    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted(fault_reference):
    from pipeline.train import stage as train

    demo = fault_reference.demo
    cache = demo.work / "train_uninterrupted"
    copy_cache(fault_reference.cache_root, cache)
    cfg = demo.cfg(cache, f"train.epochs={EPOCHS}")
    rec = train.run(cfg)
    return cfg, _run_dir(cfg), rec


def kill_train_trial(ref, uninterrupted, seed: int, name: str) -> dict:
    import torch

    from pipeline.train import stage as train

    demo = ref.demo
    _, ref_dir, _ = uninterrupted
    cache = demo.work / name
    copy_cache(ref.cache_root, cache)
    cfg = demo.cfg(cache, f"train.epochs={EPOCHS}")
    run_dir = _run_dir(cfg)
    rng = np.random.default_rng(seed)
    after_epochs = int(rng.integers(1, EPOCHS - 2))     # kill once this many epochs are checkpointed
    fraction = float(rng.uniform(0.05, 0.9))            # ... plus this fraction of an epoch: mid-epoch
    child = spawn(train_command(demo, cache, f"train.epochs={EPOCHS}"), out=demo.work / f"{name}.out")
    wait_for(lambda: child.poll() is not None or _metric_epochs(run_dir) >= after_epochs, timeout=600, every=0.01)
    delay = fraction * _last_epoch_s(run_dir) if _metric_epochs(run_dir) else 0.0
    time.sleep(delay)
    hit = child.kill()
    killed_at = _metric_epochs(run_dir)
    landed = hit and not (run_dir / "stage.json").exists() and killed_at < EPOCHS
    if not hit:
        assert child.wait() == 0, child.output()[-3000:]
    rec = train.run(cfg)
    a, b = _weights(ref_dir), _weights(run_dir)
    diff = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    # a finished run's last.pt holds no optimiser state (nothing left to resume): both must have dropped it
    # alike; where both still hold one, it must be equal
    if "optimizer" in a and "optimizer" in b:
        opt_same = all(torch.equal(x, y)
                       for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())
                       for x, y in zip(sa.values(), sb.values()) if isinstance(x, torch.Tensor))
    else:
        opt_same = "optimizer" not in a and "optimizer" not in b
    return {"landed": landed, "killed_at": killed_at, "moment": f"{after_epochs}ep+{fraction:.2f}ep ({delay:.2f}s)",
            "diff": diff,
            "opt_same": opt_same, "resumed_from": rec["extra"]["resumed_from_epoch"], "epoch": b["epoch"],
            "metrics": [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]}


def test_kill_during_training_resumes_to_same_weights(fault_reference, uninterrupted):
    n = trials(1) if trials(1) <= 1 else max(1, trials(1) // 3)
    rows, failures = [], []
    for t in range(n):
        res = kill_train_trial(fault_reference, uninterrupted, seed=100 + t, name=f"train_kill{t}")
        rows.append(res)
        problems = []
        if res["diff"]:
            problems.append(f"final weights differ from the uninterrupted run in {res['diff'][:5]}")
        if not res["opt_same"]:
            problems.append("optimizer state differs")
        if res["epoch"] != EPOCHS - 1 or res["metrics"] != list(range(EPOCHS)):
            problems.append(f"epochs in metrics.jsonl {res['metrics']}, last.pt epoch {res['epoch']}")
        if res["landed"] and res["resumed_from"] != res["killed_at"]:
            problems.append(f"resumed from epoch {res['resumed_from']}, {res['killed_at']} were checkpointed")
        if problems:
            failures.append(f"trial {t} ({res['moment']}): " + "; ".join(problems))
    landed = sum(r["landed"] for r in rows)
    # an epoch lost mid-way is the training analogue of clips in flight: recomputed = epochs rerun
    report(Row("kill -9 during training", n, landed, 0, landed, landed, not failures and landed > 0,
               "final weights + optimizer equal bit for bit" if not failures else f"{len(failures)} failed",
               "; ".join(failures) or "kills at (epochs checkpointed + fraction of the next epoch): "
               + ", ".join(r["moment"] for r in rows)
               + "; 'recomputed' counts the epochs cut short"))
    assert not failures, "\n".join(failures)
    assert landed, "no kill landed between the first checkpoint and the end: the trial tested nothing"
