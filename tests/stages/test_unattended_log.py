"""An unattended run (issue 18): `ecpa run > run.log 2> run.err` with no terminal leaves plain periodic
progress lines (extraction, training, decoding) and the summaries in run.log, the diagnostics in run.err."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO, TINY_DEMO_SETS


def test_run_to_files_logs_periodic_progress_lines(tmp_path):
    sets = [f"data.root={tmp_path / 'data'}", f"data.cache_root={tmp_path / 'cache'}", *TINY_DEMO_SETS,
            "extract.log_every=5", "extract.batch_size=2", "train.log_every=1", "caption.log_every=1", "caption.batch_size=2"]
    args = [sys.executable, "-m", "stages.cli", "run", "--preset", "demo", "--upto", "caption",
            *sum((["--set", s] for s in sets), [])]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    env.pop("FORCE_COLOR", None), env.pop("TTY_COMPATIBLE", None)
    with open(tmp_path / "run.log", "w") as log, open(tmp_path / "run.err", "w") as err:
        rc = subprocess.run(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=err,
                            timeout=900).returncode
    log, err = (tmp_path / "run.log").read_text(), (tmp_path / "run.err").read_text()
    assert rc == 0, err[-3000:]
    assert "\x1b[" not in log, "plain text in a log file: no terminal escapes"

    extract = re.findall(r"^extract (\d+)/24 clips \| [\d.]+ clips/s.* over \S+ \| (?:ETA \S+|done)$", log, re.M)
    assert len(extract) >= 4 and extract[-1] == "24", log        # every 5 clips, and the last line
    train = re.findall(r"^train (\d+)/(\d+) steps \(epoch (\d)/2 step \d+/\d+, mlm [\d.]+ .*lr [\d.]+e[+-]\d+\) "
                       r"\| [\d.]+ steps/s.* \| (?:ETA \S+|done)$", log, re.M)
    assert len(train) >= 4 and {t[2] for t in train} == {"1", "2"}, log   # a line per step, both epochs
    assert train[-1][0] == train[-1][1]
    caption = re.findall(r"^caption (\d+)/(\d+) clips \| ", log, re.M)
    assert len(caption) >= 2 and caption[-1][0] == caption[-1][1], log
    # the stage lines and the summary are results: stdout; the random-weights warning is a diagnostic: stderr,
    # and the summary names the random-weight extractors too
    assert re.search(r"^train: run ", log, re.M) and "chain done" in log
    assert "RANDOM WEIGHTS for er, au, swin" in err and "RANDOM WEIGHTS for" not in log
    assert "RANDOM WEIGHTS: the features come from random er, au, swin" in log
    assert not re.search(r"^(extract|train|caption) \d+/\d+ ", err, re.M)
