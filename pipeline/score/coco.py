"""Caption scores as the captioning papers report them: pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L, CIDEr.

References: pycocoevalcap (Chen et al. 2015, "Microsoft COCO Captions: Data Collection and Evaluation
Server"); the scorers (`Bleu`, `Rouge`, `Cider`) are called as they are. Two pieces are driven here
directly, with the same jar files and flags as pycocoevalcap uses, for reasons of robustness:

- PTB tokenisation (Stanford CoreNLP 3.4.1 `PTBTokenizer -preserveLines -lowerCase`, then the COCO
  punctuation list removed): references and candidates go through ONE Java call (pycocoevalcap's
  `COCOEvalCap` starts two), and the temporary file lives in the system temp folder rather than in
  the installed package folder (which may be read-only).
- METEOR 1.5 (`-stdio -l en -norm`): one JVM for the whole set, started first so that it loads its
  paraphrase tables while the other metrics run, and closed explicitly (stdin closed, process waited
  for, killed after a timeout) so that no JVM outlives the call. pycocoevalcap's `Meteor` only closes
  its JVM in `__del__`.

Both need Java 8+ on PATH. Without Java, `score_captions` raises a `UserError` carrying
`pipeline.score.coco.JAVA_HINT` before anything runs; note that switching METEOR off does not help then,
because the PTB tokenizer is Java too.

Numbers equal pycocoevalcap's own pipeline (`tests/pipeline/test_scoring.py` checks that).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from pipeline.errors import UserError

ALL_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
"""Every metric `score_captions` can compute, in the order papers print them."""

DEFAULT_METRICS = ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr")

# The punctuation tokens pycocoevalcap's PTB wrapper drops after tokenising.
PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_METEOR_TIMEOUT_S = 600.0
"""Wall-clock limit for one METEOR exchange (the JVM loads ~300 MB of paraphrase tables first)."""


def _package_dir(sub: str) -> Path:
    # pycocoevalcap is a namespace package (no __init__.py): locate it through one of its modules.
    import pycocoevalcap.bleu.bleu as bleu_module

    return Path(bleu_module.__file__).resolve().parent.parent / sub


def java_available() -> bool:
    import shutil
    import subprocess

    java = shutil.which("java")
    if not java:
        return False
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


JAVA_HINT = (
    "METEOR and the PTB tokenizer of pycocoevalcap need Java 8+ on PATH: "
    "`sudo apt-get install -y default-jre-headless` (Debian/Ubuntu) or `conda install -c conda-forge openjdk`; "
    "or pass --set score.meteor=false to skip METEOR"
)


def _java() -> str:
    """Path of `java`, or a UserError that says how to install it."""
    java = shutil.which("java")
    if java is None or not java_available():
        raise UserError(
            "scoring needs Java: the PTB tokenizer is Java (even with score.meteor=false), and so is METEOR. "
            + JAVA_HINT
        )
    return java


# ---------------------------------------------------------------------------------------------
# PTB tokenizer
# ---------------------------------------------------------------------------------------------


def ptb_tokenize(sentences: Sequence[str], java: str | None = None) -> list[str]:
    """Tokenise sentences like pycocoevalcap's PTBTokenizer: lower case, PTB tokens, punctuation dropped.

    One Java process for all sentences; the result has one string per input sentence."""
    java = java or _java()
    jar = _package_dir("tokenizer") / "stanford-corenlp-3.4.1.jar"
    if not jar.is_file():
        raise UserError(f"pycocoevalcap's tokenizer jar is missing: {jar}; reinstall pycocoevalcap")
    lines = [s.replace("\n", " ").replace("\r", " ") for s in sentences]
    if not lines:
        return []
    with tempfile.TemporaryDirectory(prefix="ecpa_ptb_") as tmp:
        src = Path(tmp) / "sentences.txt"
        src.write_text("\n".join(lines), encoding="utf-8")
        proc = subprocess.run(
            [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", str(src)],
            capture_output=True,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"PTBTokenizer failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    out_lines = proc.stdout.decode("utf-8").split("\n")
    if len(out_lines) < len(lines):
        raise RuntimeError(f"PTBTokenizer returned {len(out_lines)} lines for {len(lines)} sentences")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATION) for line in out_lines[: len(lines)]]


_PTB_WORD = re.compile(r"n't|'[a-z]+|[a-z0-9]+|[^\sa-z0-9]")  # PTB splits clitics: gardener 's, does n't


def simple_tokenize(sentences: Sequence[str]) -> list[str]:
    """A Python stand-in for the PTB tokenizer for plain captions: lower case, punctuation split off and
    dropped, as `ptb_tokenize` does. Used where a JVM per call would dominate (per-epoch validation,
    which only ranks checkpoints); reported scores always use the real PTB tokenizer."""
    out = []
    for s in sentences:
        toks = _PTB_WORD.findall(s.lower().replace("n't", " n't"))
        out.append(" ".join(t for t in toks if t not in PTB_PUNCTUATION and t not in {'"'}))
    return out


# ---------------------------------------------------------------------------------------------
# METEOR: one JVM, closed explicitly
# ---------------------------------------------------------------------------------------------


class MeteorProcess:
    """A METEOR 1.5 JVM in `-stdio` mode, as a context manager that always ends the process.

    Protocol (the one pycocoevalcap uses): per clip send `SCORE ||| ref1 ||| ... ||| hyp` and read one
    statistics line; then send `EVAL ||| stats1 ||| stats2 ...` and read one score per clip followed by
    the corpus score."""

    def __init__(self, java: str | None = None):
        java = java or _java()
        jar_dir = _package_dir("meteor")
        if not (jar_dir / "meteor-1.5.jar").is_file():
            raise UserError(f"pycocoevalcap's METEOR jar is missing under {jar_dir}; reinstall pycocoevalcap")
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [java, "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=str(jar_dir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )

    def __enter__(self) -> "MeteorProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def _readline(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.poll()
            raise RuntimeError(f"METEOR's JVM ended unexpectedly (exit {code}): {self._stderr_tail()}")
        return line.decode("utf-8").strip()

    def _send(self, text: str) -> None:
        self.proc.stdin.write((text + "\n").encode("utf-8"))
        self.proc.stdin.flush()

    def score(self, gts: Mapping[str, list[str]], res: Mapping[str, str]) -> tuple[float, dict[str, float]]:
        """Corpus METEOR and per-clip METEOR over tokenised references/candidates (same keys)."""
        keys = list(gts)
        if not keys:
            return 0.0, {}
        # A watchdog kills the JVM when it hangs, so readline() returns and we raise instead of blocking.
        timer = threading.Timer(_METEOR_TIMEOUT_S, self.proc.kill)
        timer.start()
        lines = []
        for k in keys:
            hyp = res[k].replace("|||", "").replace("  ", " ")
            refs = [r.replace("|||", "") for r in gts[k]]
            lines.append(" ||| ".join(("SCORE", " ||| ".join(refs), hyp)))
        # A writer thread streams the SCORE lines while this thread reads the answers: no round trip per
        # clip, and no deadlock when both pipes fill up.
        write_error: list[BaseException] = []

        def writer() -> None:
            try:
                for line in lines:
                    self.proc.stdin.write((line + "\n").encode("utf-8"))
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as e:  # the JVM died; the reader reports it with its stderr
                write_error.append(e)

        feeder = threading.Thread(target=writer, daemon=True)
        try:
            feeder.start()
            stats = [self._readline() for _ in keys]
            feeder.join()
            if write_error:
                raise RuntimeError(f"writing to METEOR failed: {write_error[0]}; {self._stderr_tail()}")
            self._send("EVAL ||| " + " ||| ".join(stats))
            per_clip = {k: float(self._readline()) for k in keys}
            corpus = float(self._readline())
        finally:
            timer.cancel()
        return corpus, per_clip

    def close(self) -> None:
        """Close stdin (METEOR exits at EOF), wait, and kill after a few seconds if it has not."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass  # the JVM already went away; wait() below reaps it
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()


# ---------------------------------------------------------------------------------------------
# The public scoring calls
# ---------------------------------------------------------------------------------------------


def _check_inputs(gts: Mapping[str, list[str]], res: Mapping[str, str]) -> list[str]:
    missing_res = [k for k in gts if k not in res]
    missing_gts = [k for k in res if k not in gts]
    if missing_res or missing_gts:
        parts = []
        if missing_res:
            parts.append(f"{len(missing_res)} clip(s) have references but no caption (e.g. {missing_res[:3]})")
        if missing_gts:
            parts.append(f"{len(missing_gts)} caption(s) have no references (e.g. {missing_gts[:3]})")
        raise UserError("captions and references do not cover the same clips: " + "; ".join(parts))
    empty = [k for k, refs in gts.items() if not refs]
    if empty:
        raise UserError(f"{len(empty)} clip(s) have an empty reference list (e.g. {empty[:3]}); they cannot be scored")
    for k, v in res.items():
        if not isinstance(v, str):
            raise TypeError(f"candidate for clip {k!r} must be one string, got {type(v).__name__}")
    return [str(k) for k in gts]


def _families(metrics: Iterable[str], meteor: bool) -> set[str]:
    fams = set()
    for m in metrics:
        if m not in ALL_METRICS:
            raise UserError(f"unknown metric {m!r}; known: {', '.join(ALL_METRICS)}")
        fams.add("Bleu" if m.startswith("Bleu_") else m)
    if not meteor:
        fams.discard("METEOR")
    return fams


def score_captions_per_clip(
    gts: Mapping[str, list[str]],
    res: Mapping[str, str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    meteor: bool = True,
    ptb: bool = True,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Corpus scores and per-clip scores: ({metric: value}, {clip: {metric: value}}).

    gts: clip -> reference captions (raw text); res: clip -> one candidate caption (raw text); both
    must name the same clips. All four BLEU orders are returned whenever any BLEU is asked for.
    METEOR is skipped when `meteor` is False, even if named in `metrics`. `ptb=False` tokenises in
    Python (`simple_tokenize`; no JVM) - for checkpoint ranking only. Values are pycocoevalcap's
    (fractions in [0, 1]; CIDEr up to 10)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    keys = _check_inputs(gts, res)
    fams = _families(metrics, meteor)
    corpus: dict[str, float] = {}
    per_clip: dict[str, dict[str, float]] = {k: {} for k in keys}
    if not keys:
        return corpus, per_clip
    java = _java() if (ptb or "METEOR" in fams) else None

    # Start METEOR's JVM first: it loads its tables while the PTB tokenizer and the Python metrics run.
    meteor_proc = MeteorProcess(java) if "METEOR" in fams else None
    try:
        # One tokenizer call for references and candidates together.
        flat = [r for k in keys for r in gts[k]] + [res[k] for k in keys]
        tokens = ptb_tokenize(flat, java) if ptb else simple_tokenize(flat)
        tok_gts: dict[str, list[str]] = {}
        i = 0
        for k in keys:
            tok_gts[k] = tokens[i : i + len(gts[k])]
            i += len(gts[k])
        tok_res = {k: [tokens[i + j]] for j, k in enumerate(keys)}

        if "Bleu" in fams:
            score, scores = Bleu(4).compute_score(tok_gts, tok_res, verbose=0)
            for n in range(4):
                corpus[f"Bleu_{n + 1}"] = float(score[n])
                for k, s in zip(keys, scores[n]):
                    per_clip[k][f"Bleu_{n + 1}"] = float(s)
        if "ROUGE_L" in fams:
            score, scores = Rouge().compute_score(tok_gts, tok_res)
            corpus["ROUGE_L"] = float(score)
            for k, s in zip(keys, scores):
                per_clip[k]["ROUGE_L"] = float(s)
        if "CIDEr" in fams:
            score, scores = Cider().compute_score(tok_gts, tok_res)
            corpus["CIDEr"] = float(score)
            for k, s in zip(keys, scores):
                per_clip[k]["CIDEr"] = float(s)
        if meteor_proc is not None:
            score, scores = meteor_proc.score(tok_gts, {k: v[0] for k, v in tok_res.items()})
            corpus["METEOR"] = float(score)
            for k in keys:
                per_clip[k]["METEOR"] = scores[k]
    finally:
        if meteor_proc is not None:
            meteor_proc.close()
    order = {m: i for i, m in enumerate(ALL_METRICS)}
    corpus = dict(sorted(corpus.items(), key=lambda kv: order[kv[0]]))
    return corpus, per_clip


def score_captions(
    gts: dict[str, list[str]],
    res: dict[str, str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    meteor: bool = True,
    ptb: bool = True,
) -> dict[str, float]:
    """Corpus scores {metric: value} of candidates `res` against references `gts` (see
    `score_captions_per_clip`). Raises UserError (with the Java install hint) when Java is missing."""
    return score_captions_per_clip(gts, res, metrics=metrics, meteor=meteor, ptb=ptb)[0]


def emotion_accuracy(true: Mapping[str, int | None], pred: Mapping[str, int]) -> tuple[float | None, int]:
    """Share of clips with a known true emotion (index >= 0) whose prediction matches; (None, 0) when no
    clip has a known emotion."""
    known = [k for k, t in true.items() if t is not None and t >= 0 and k in pred]
    if not known:
        return None, 0
    hits = sum(int(pred[k]) == int(true[k]) for k in known)
    return hits / len(known), len(known)


_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def caption_words(text: str) -> int:
    """Words in a caption (runs of letters/digits; punctuation is not a word)."""
    return len(_WORD.findall(text.lower()))


def length_stats(res: dict[str, str], gts: dict[str, list[str]], ended: dict[str, bool] | None = None) -> dict:
    """Mean generated and mean reference length in words, their ratio, and the share of generated captions
    that reached the decoding limit without [SEP] (`ended` per clip, from captions.json; None when unknown).
    A model that cannot stop shows a ratio well above 1 and a large unended share."""
    gen = [caption_words(c) for c in res.values()]
    ref = [caption_words(c) for k in res for c in gts.get(k, [])]
    mean_gen = sum(gen) / len(gen) if gen else None
    mean_ref = sum(ref) / len(ref) if ref else None
    unended = None
    if ended is not None and res:
        unended = sum(1 for k in res if not ended.get(k, True)) / len(res)
    return {"mean_generated_words": mean_gen, "mean_reference_words": mean_ref,
            "length_ratio": (mean_gen / mean_ref) if mean_gen is not None and mean_ref else None,
            "unended_share": unended}
