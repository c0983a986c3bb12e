"""Emotion-aware caption metrics of emotional video captioning: Acc_sw, Acc_c, BFS, CFS.

Introduced with EmVidCap (Wang, Tang, Li, Cheng, "Emotion Expression with Fact Transfer for Video
Description", IEEE TMM 2021) and reported on EmVidCap by EPAN (Song et al., ACM MM 2023) and the work
that follows it. They read a caption's emotion words through an emotion lexicon:

    lexicon   a folder with one text file per emotion category (the category is the file's stem),
              one word per line (EmVidCap's: 34 categories, Plutchik's wheel)
    words     a caption lower-cased and split into words at anything that is not a letter
    E(c)      categories of the lexicon words in caption c (a set: a category counts once per caption)
    R(v)      reference emotions of clip v: the categories found in any of its reference captions

With N captions:

    N_r  = sum_c |E(c) & R(v)|        N_w = sum_c |E(c) - R(v)|       phi = #{c : E(c) empty}
    Acc_sw = N_r / (N_r + N_w + phi)
    N_r1 = #{c : E(c) & R(v) non-empty}                 N_h = #{those with E(c) - R(v) non-empty too}
    Acc_c  = exp(N_h / (N_h - N_r1 + 1e-4)) * N_r1 / N
    BFS    = 0.8 * (0.1*B1 + 0.2*B2 + 0.3*B3 + 0.4*B4) + 0.1 * (Acc_sw + Acc_c)
    CFS    = 0.8 * CIDEr + 0.1 * (Acc_sw + Acc_c)

Fractions in [0, 1] like the COCO metrics of `pipeline.score.coco` (reports print them x100). A word listed
under several categories belongs to the first category in sorted file-name order (as EmotionEval
reads the folder). Acc_c is undefined when every caption with a right emotion also has a wrong one
(N_h = N_r1 > 0: the exponent is N_h * 10^4); it is then reported as None with the reason, and so are
BFS and CFS, never as a number the formula did not give.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.errors import UserError

EMOTION_METRICS = ["Acc_sw", "Acc_c", "BFS", "CFS"]
"""Metric names as scores.json, `ecpa compare` and the sweep CSV carry them."""

ALPHA = 1e-4
"""The 10^-4 in Acc_c's exponent (keeps N_h = N_r1 = 0 finite)."""

_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (any script); everything else separates words


def words(text: str) -> list[str]:
    """`text` lower-cased and split into words at anything that is not a letter."""
    return _WORD.findall(text.lower())


@dataclass
class EmotionLexicon:
    """Emotion category -> words, read from a folder of `<category>.txt` files."""

    categories: list[str]
    """Category names (file stems), sorted."""
    category_of: dict[str, str]
    """word -> its category."""
    sha256: str
    """Content hash over the files' names and bytes (what a score key records)."""
    duplicates: dict[str, list[str]] = field(default_factory=dict)
    """word -> every category listing it, for words listed more than once (the first one wins)."""

    def categories_in(self, text: str) -> set[str]:
        """E(text): the categories of the lexicon words in `text`."""
        return {self.category_of[w] for w in words(text) if w in self.category_of}


def lexicon_files(folder: Path | str) -> list[Path]:
    """The category files of a lexicon folder, sorted; UserError when there is no such folder or no file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"score.emotion_lexicon: {folder} is not a folder (expected one <category>.txt file per "
                        "emotion category, one word per line)")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".txt" and p.is_file())
    if not files:
        raise UserError(f"score.emotion_lexicon: {folder} holds no .txt files (expected one <category>.txt file "
                        "per emotion category, one word per line)")
    return files


def lexicon_hash(folder: Path | str) -> str:
    """sha256 over the lexicon's file names and contents (a moved lexicon keeps it, an edited one changes it)."""
    h = hashlib.sha256()
    for p in lexicon_files(folder):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def load_lexicon(folder: Path | str) -> EmotionLexicon:
    """Read a lexicon folder. A line that is not one word of letters stops with file, line and the problem
    (such a word could never match: captions are split at non-letters)."""
    files = lexicon_files(folder)
    category_of: dict[str, str] = {}
    listed: dict[str, list[str]] = {}
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e})") from None
        for no, line in enumerate(lines, 1):
            text = line.strip()
            if not text:
                continue
            found = words(text)
            if found != [text.lower()]:
                raise UserError(f"{path}:{no}: {text!r} is not one word of letters; a lexicon line holds one "
                                "word (captions are split into words at anything that is not a letter)")
            word = found[0]
            cats = listed.setdefault(word, [])
            if path.stem not in cats:
                cats.append(path.stem)
            category_of.setdefault(word, path.stem)
    return EmotionLexicon(categories=[p.stem for p in files], category_of=category_of,
                          sha256=lexicon_hash(folder), duplicates={w: c for w, c in listed.items() if len(c) > 1})


@dataclass
class EmotionCounts:
    """The counts the metrics are made of."""

    n: int
    """N: captions."""
    n_r: int
    """N_r: (caption, category) pairs whose category is among the clip's reference emotions."""
    n_w: int
    """N_w: (caption, category) pairs whose category is not."""
    phi: int
    """phi: captions without an emotion word."""
    n_r1: int
    """N_r1: captions with at least one right category."""
    n_h: int
    """N_h: captions with a right and a wrong category."""


def count_emotions(captions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                   lexicon: EmotionLexicon) -> EmotionCounts:
    """Counts over the clips of `captions` (clip -> generated caption), each judged against the reference
    emotions of `references[clip]` (its reference captions)."""
    missing = [k for k in captions if k not in references]
    if missing:
        raise UserError(f"emotion metrics: {len(missing)} captioned clip(s) have no references "
                        f"(e.g. {', '.join(map(str, missing[:5]))})")
    n = n_r = n_w = phi = n_r1 = n_h = 0
    for clip, caption in captions.items():
        ref = set().union(*(lexicon.categories_in(r) for r in references[clip]))
        got = lexicon.categories_in(caption)
        right, wrong = len(got & ref), len(got - ref)
        n += 1
        n_r += right
        n_w += wrong
        phi += not got
        n_r1 += right > 0
        n_h += right > 0 and wrong > 0
    return EmotionCounts(n=n, n_r=n_r, n_w=n_w, phi=phi, n_r1=n_r1, n_h=n_h)


def acc_sw(c: EmotionCounts) -> float | None:
    """Acc_sw = N_r / (N_r + N_w + phi); None without captions."""
    den = c.n_r + c.n_w + c.phi
    return c.n_r / den if den else None


def acc_c(c: EmotionCounts) -> float | None:
    """Acc_c = exp(N_h / (N_h - N_r1 + 1e-4)) * N_r1 / N; None without captions or where the exponent
    overflows (N_h = N_r1 > 0, see the module docstring)."""
    if c.n == 0:
        return None
    exponent = c.n_h / (c.n_h - c.n_r1 + ALPHA)
    if exponent > 700:  # only N_h == N_r1 > 0 gets here (otherwise the denominator is <= -1 + 1e-4)
        return None
    return math.exp(exponent) * c.n_r1 / c.n


def bfs(bleu: Sequence[float], acc_sw_: float, acc_c_: float) -> float:
    """BFS = 0.8 * (0.1*B1 + 0.2*B2 + 0.3*B3 + 0.4*B4) + 0.1 * (Acc_sw + Acc_c)."""
    b1, b2, b3, b4 = bleu
    return 0.8 * (0.1 * b1 + 0.2 * b2 + 0.3 * b3 + 0.4 * b4) + 0.1 * (acc_sw_ + acc_c_)


def cfs(cider: float, acc_sw_: float, acc_c_: float) -> float:
    """CFS = 0.8 * CIDEr + 0.1 * (Acc_sw + Acc_c)."""
    return 0.8 * cider + 0.1 * (acc_sw_ + acc_c_)


def emotion_metrics(captions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                    lexicon: EmotionLexicon, coco: Mapping[str, float]) -> tuple[dict[str, float | None], dict, list[str]]:
    """(metrics {Acc_sw, Acc_c, BFS, CFS}, counts, notes). `coco` holds the corpus BLEU-1..4 and CIDEr of the
    same captions (`pipeline.score.coco` names: Bleu_1..Bleu_4, CIDEr). A value the formula does not define is
    None and a note says why."""
    c = count_emotions(captions, references, lexicon)
    sw, cc = acc_sw(c), acc_c(c)
    notes = []
    if c.n and cc is None:
        notes.append(f"Acc_c (and BFS, CFS) undefined: all {c.n_r1} caption(s) with a right emotion word also "
                     f"carry a wrong one (N_h = N_r1), where exp(N_h / (N_h - N_r1 + 1e-4)) overflows")
    both = sw is not None and cc is not None
    metrics = {
        "Acc_sw": sw,
        "Acc_c": cc,
        "BFS": bfs([coco[f"Bleu_{i}"] for i in range(1, 5)], sw, cc) if both else None,
        "CFS": cfs(coco["CIDEr"], sw, cc) if both else None,
    }
    counts = {"N": c.n, "N_r": c.n_r, "N_w": c.n_w, "phi": c.phi, "N_r1": c.n_r1, "N_h": c.n_h}
    return metrics, counts, notes
