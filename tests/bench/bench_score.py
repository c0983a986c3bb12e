"""Benchmark: score 1,600 captions with one reference each, all four metrics (BLEU, METEOR, ROUGE-L, CIDEr).

The size of MAFW's test split. Captions are synthetic, MAFW-like sentences from a seeded generator (half
of the words shared with the reference, so every metric has work to do). Target: < 20 s.
The baseline in the same run is pycocoevalcap's own pipeline (COCOEvalCap's order: PTB tokenizer twice,
then Bleu, Meteor, Rouge, Cider), whose numbers must match ours.

    .venv/bin/python -m tests.bench.bench_score [--n 1600] [--no-baseline]
"""
from __future__ import annotations

import argparse
import random
import time

from pipeline.score.coco import ALL_METRICS, score_captions

SUBJECTS = ["a man", "a woman", "an old man", "a young woman", "a boy", "a girl", "two people", "the man"]
VERBS = ["talks to someone", "looks at the camera", "sits in a car", "walks down the street", "speaks on the phone",
         "shakes his head", "turns around", "stands in the room", "holds a cup", "cries"]
CUES = ["the raised eyebrows", "the wide eyes", "the open mouth", "the frown", "the pressed lips",
        "the lowered brows", "the raised lip corners", "the wrinkled nose", "the tears", "the clenched teeth"]
EMOTIONS = ["happily", "angrily", "sadly", "in fear", "in surprise", "with disgust", "calmly", "anxiously"]


def sentence(rng: random.Random) -> str:
    cues = rng.sample(CUES, rng.randint(1, 3))
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(EMOTIONS)}. {' and '.join(cues)}."


def make_set(n: int, seed: int = 0) -> tuple[dict[str, list[str]], dict[str, str]]:
    rng = random.Random(seed)
    gts, res = {}, {}
    for i in range(n):
        ref = sentence(rng)
        words = ref.split()
        cand = sentence(rng).split()
        # keep about half of the reference's words in place
        mixed = [w if rng.random() < 0.5 else (cand[j] if j < len(cand) else w) for j, w in enumerate(words)]
        gts[f"{i:05d}"] = [ref]
        res[f"{i:05d}"] = " ".join(mixed)
    return gts, res


def coco_baseline(gts: dict, res: dict) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    g = tok.tokenize({k: [{"caption": c} for c in v] for k, v in gts.items()})
    r = tok.tokenize({k: [{"caption": v}] for k, v in res.items()})
    out = {}
    b, _ = Bleu(4).compute_score(g, r, verbose=0)
    out.update({f"Bleu_{i + 1}": b[i] for i in range(4)})
    meteor = Meteor()
    try:
        out["METEOR"], _ = meteor.compute_score(g, r)
    finally:
        meteor.__del__()  # pycocoevalcap ends its JVM only there
    out["ROUGE_L"], _ = Rouge().compute_score(g, r)
    out["CIDEr"], _ = Cider().compute_score(g, r)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1600)
    ap.add_argument("--no-baseline", action="store_true", help="skip pycocoevalcap's own pipeline")
    args = ap.parse_args(argv)
    gts, res = make_set(args.n)
    t = time.perf_counter()
    ours = score_captions(gts, res, metrics=ALL_METRICS)
    t_ours = time.perf_counter() - t
    out = {"captions": args.n, "seconds": round(t_ours, 3), "metrics": {k: round(v, 6) for k, v in ours.items()}}
    print(f"score bench: {args.n} captions x 1 reference, BLEU-1..4 + METEOR + ROUGE-L + CIDEr")
    print(f"  pipeline.score.coco.score_captions : {t_ours:6.2f} s   (target < 20 s)")
    if not args.no_baseline:
        t = time.perf_counter()
        ref = coco_baseline(gts, res)
        t_ref = time.perf_counter() - t
        same = all(abs(ours[k] - ref[k]) <= 1e-9 * max(1.0, abs(ref[k])) for k in ALL_METRICS)
        out.update({"baseline_seconds": round(t_ref, 3), "ratio": round(t_ref / t_ours, 2), "same_numbers": same})
        print(f"  pycocoevalcap pipeline (baseline): {t_ref:6.2f} s   -> {t_ref / t_ours:.2f}x; same numbers: {same}")
        assert same, f"scores differ from pycocoevalcap's: {ours} vs {ref}"
    print("  " + "  ".join(f"{k} {v:.4f}" for k, v in ours.items()))
    return out


if __name__ == "__main__":
    main()
