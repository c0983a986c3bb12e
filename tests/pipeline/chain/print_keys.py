"""Print every stage key of the demo and mafw presets (and --set variants) as JSON, with the old API (stages.plan,
commit 1dbf6b5) or the new one (pipeline.chain.plan), to show a refactor keeps the keys:

    PYTHONPATH=<checkout> python tests/pipeline/chain/print_keys.py /tmp/keys > keys.json   # run from <checkout>

The demo dataset is generated under the scratch folder (argv[1]); mafw gets a fixed fake manifest and
fingerprints (no data needed); the demo's extractor fit is skipped (its weights are keyed as missing files)."""
import json, sys
from pathlib import Path
import pipeline.data.manifest as M
import pipeline.extract.demo_fit as DF
from pipeline.config import load_config
from pipeline.data.manifest import Clip, write_manifest

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ecpa_keys")
DF.ensure_demo_extractors = lambda *a, **k: {}

def cfg_of(preset, sets):
    base = [f"data.cache_root={ROOT/'cache'}"]
    if preset == "demo":
        base += [f"data.root={ROOT/'demo-data'}"]
    return load_config(preset, base + sets)

def fake_mafw(cfg):
    clips = [Clip(f"{i:05d}", f"/nonexistent/{i:05d}.mp4", [f"a person {i}"], "anger", 0,
                  ["train", "train", "val", "test"][i % 4]) for i in range(8)]
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(clips, cfg.manifest_path)
    return clips

def keys(cfg, preset):
    fake = preset == "mafw"
    if fake:
        clips = fake_mafw(cfg)
        M.ensure_manifest = lambda c, notes=None: "m" * 64
        import pipeline.data.fingerprint as F
        F.clip_fingerprints = lambda cl, root, memo_dir=None: {c.id: "fp" + c.id for c in cl}
    import os
    if os.path.exists("stages/plan.py"):
        from stages.plan import plan
        plans = plan(cfg)
    else:
        from pipeline.chain import plan as P
        if fake:
            inputs = P.PlanInputs(manifest_hash="m" * 64, clips=clips, fingerprints={c.id: "fp" + c.id for c in clips}, weights=__import__("pipeline.chain.specs", fromlist=["x"]).weight_provenance(cfg))
        else:
            inputs = P.prepare(cfg)
        plans = P.plan(cfg, inputs)
    return {n: [p.key, str(p.out_dir)] for n, p in plans.items()}

out = {}
for preset, sets in [("demo", []), ("demo", ["model.top_k=2"]), ("demo", ["caption.beam_size=3", "score.meteor=false"]),
                     ("demo", ["extract.random_init=true"]), ("demo", ["extract.num_frames=4", "train.lr=1e-3"]),
                     ("mafw", []), ("mafw", ["model.top_k=2"]), ("mafw", ["caption.split=val"])]:
    out[f"{preset} {' '.join(sets)}"] = keys(cfg_of(preset, sets), preset)
print(json.dumps(out, indent=1))
