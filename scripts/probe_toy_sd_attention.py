"""The toy-sd attention study: which UNet makes self-attention follow objects?

ViMAEdit's grounding (Eq. 9) refines the cross-attention saliency with the self-attention at P2; on
the shipped toy-sd that self-attention is close to uniform, so grounding cannot beat cross-attention
alone.  This script trains each candidate on the same short schedule (from scratch, or continuing the
shipped toy-sd for the "longer schedule" candidate) and measures its attention where ViMAEdit reads
it (:mod:`editnb.toy.attention_stats`: row entropy and own-object attention per level, word IoU) on
held-out scenes.  It is resumable: each run checkpoints under ``.editnb-train/attention-probe/NAME/``
and the figures accumulate in ``.editnb-train/attention-probe/results.json``.

    python scripts/probe_toy_sd_attention.py [--steps 300] [--batch-size 32] [--only NAME ...]
    python scripts/probe_toy_sd_attention.py --ideal-q    # the gain an ideal Q would give (no training)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from editnb.models import models_dir
from editnb.toy.attention_stats import attention_stats
from editnb.toy.train import train

ROOT = Path(".editnb-train/attention-probe")
#: name -> (train() settings); "shipped shape" is the reference every other is read against
CANDIDATES = {
    "shipped shape": {},
    "three levels": {"options": {"levels": 3}},
    "one head": {"options": {"heads": 1}},
    "two layers": {"options": {"layers": 2}},
    "longer schedule": {"init": "toy-sd", "lr": 2e-4},
    # the shipped toy-sd continued with SDTask's attention objectives, training only the named modules
    "object attention, every self-attention": {
        "init": "toy-sd", "lr": 3e-4, "options": {"object_attention": 1.0, "attention_sigma": 6.0, "train_only": ["*.attn1"]}},
    "object and word attention": {
        "init": "toy-sd", "lr": 3e-4,
        "options": {"object_attention": 1.0, "word_attention": 1.0, "attention_sigma": 6.0,
                    "train_only": ["*.attn1", "*.attn2.to_k"]}},
    "object attention, decoder 16x16": {
        "init": "toy-sd", "lr": 3e-4,
        "options": {"object_attention": 1.0, "attention_sigma": 6.0, "train_only": ["up_blocks.1.*.attn1"]}},
    # (the three above averaged the objective over rows; from here on, by segment)
    "own segment, decoder 16x16": {
        "init": "toy-sd", "lr": 1e-3, "options": {"object_attention": 1.0, "train_only": ["up_blocks.1.*.attn1"]}},
}


def probe(name: str, steps: int, batch_size: int, n: int) -> dict:
    from diffusers import StableDiffusionPipeline
    from editnb.methods.vimaedit.grounding import grounding_resolutions

    settings = dict(CANDIDATES[name])
    if "init" in settings:
        settings["init"] = str(models_dir() / settings["init"])
    folder = ROOT / name.replace(" ", "-")
    t0 = time.time()
    summary = train("sd", steps=steps, batch_size=batch_size, work_dir=folder, out_dir=folder / "out",
                    checkpoint_minutes=3, workers=0, **settings)
    pipe = StableDiffusionPipeline.from_pretrained(folder / "out", torch_dtype=torch.float32)
    stats = attention_stats(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, n=n)
    p1, p2 = grounding_resolutions(pipe.unet)
    grounding = grounding_with(pipe.unet)
    return {"grounding": grounding, "steps": steps, "batch_size": batch_size, "seconds_per_step": summary["train_seconds"] / steps,
            "final_loss": summary["final_loss"], "P1": p1, "P2": p2, "levels": {str(r): v for r, v in stats.items()},
            "wall_seconds": round(time.time() - t0)}


def grounding_with(unet, n: int = 15) -> dict:
    """`editnb toy eval --only grounding` (ViMAEdit's groundings on held-out object edits) with this
    UNet in place of toy-sd's under the shipped IP-Adapter."""
    from editnb.toy import evaluate

    pipe = evaluate._load("ip-adapter")
    missing, unexpected = pipe.unet.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected and all("_ip" in k or "image_proj" in k for k in missing), (missing, unexpected)
    load = evaluate._load
    evaluate._load = lambda name: pipe if name == "ip-adapter" else load(name)
    try:
        return evaluate.vimaedit_grounding(n)
    finally:
        evaluate._load = load


def ideal_q_grounding(edits: int = 6, steps: int = 25) -> None:
    """What Eq. 9 could gain on the shipped toy-sd: its own cross-attention s_0, and Q replaced by the
    ideal rows of :func:`editnb.toy.tasks.object_attention_target` on the source scene's exact masks
    (uniform within the own segment, or also falling off with distance); final-mask IoU and the share
    of the grounded steps above cross-attention alone, on held-out object edits."""
    import numpy as np
    from editnb.methods.vimaedit import grounding, trace_grounding
    from editnb.methods.vimaedit.edit import present_blend_words
    from editnb.toy import evaluate, world
    from editnb.toy.tasks import object_attention_target, segmentation

    pipe = evaluate._load("ip-adapter")
    cases = [world.edit_for("test", 100 + i, kind) for i in range(edits) for kind in ("reshape", "recolor")]
    recorded, ideal = grounding.StepAttention.step_maps, {}

    def step_maps(self, step):
        maps = recorded(self, step)
        if maps is None or ideal.get("Q") is None:
            return maps
        return maps[0], ideal["Q"].expand(maps[1].shape[0], -1, -1).to(maps[1])

    grounding.StepAttention.step_maps = step_maps
    try:
        for name, sigma in (("the model's own Q", False), ("Q uniform within the own segment", None),
                            ("Q within the own segment, sigma 6 px", 6.0)):
            ious = {"cross-attention": [], "iterative": []}
            for k, e in enumerate(cases):
                side = grounding.grounding_resolutions(pipe.unet)[1]
                ideal["Q"] = None if sigma is False else object_attention_target(
                    torch.from_numpy(segmentation(e.source))[None], side, sigma)[0]
                blend = present_blend_words(pipe.tokenizer, e.source_caption, e.target_caption, e.blend_words)
                for mode in ious:
                    ious[mode].append(trace_grounding(pipe, e.source_caption, e.target_caption, e.source_image(), blend,
                                                      true_mask=e.mask(), grounding=mode, steps=steps,
                                                      generator=torch.Generator().manual_seed(k)).ious)
            ca, it = np.array(ious["cross-attention"]), np.array(ious["iterative"])
            print(f"{name:38s} CA {ca[:, -1].mean():.3f}  iterative {it[:, -1].mean():.3f}  "
                  f"steps above {(it.mean(0) > ca.mean(0)).mean():.2f}  ({len(cases)} edits)", flush=True)
    finally:
        grounding.StepAttention.step_maps = recorded


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n", type=int, default=24, help="held-out scenes to measure on")
    parser.add_argument("--only", nargs="*", choices=list(CANDIDATES))
    parser.add_argument("--ideal-q", action="store_true", help="measure the grounding with an ideal Q, then stop")
    args = parser.parse_args()
    if args.ideal_q:
        return ideal_q_grounding()
    ROOT.mkdir(parents=True, exist_ok=True)
    results_path = ROOT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if "shipped toy-sd" not in results:  # the target's starting point: 3900 steps at batch 128
        from editnb.models import load
        from editnb.methods.vimaedit.grounding import grounding_resolutions

        pipe = load("sd", profile="toy", device="cpu", dtype=torch.float32)
        stats = attention_stats(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, n=args.n)
        results["shipped toy-sd"] = {"seconds_per_step": float("nan"), "P1": grounding_resolutions(pipe.unet)[0],
                                     "P2": grounding_resolutions(pipe.unet)[1],
                                     "levels": {str(r): v for r, v in stats.items()}}
    for name in ["shipped toy-sd", *(args.only or CANDIDATES)]:
        key = name if name == "shipped toy-sd" else f"{name} @ {args.steps} x {args.batch_size}"
        if key not in results:
            results[key] = probe(name, args.steps, args.batch_size, args.n)
        results_path.write_text(json.dumps(results, indent=1))
        r = results[key]
        cells = "  ".join(f"{side}x{side}: H {v['self_entropy']:.3f} own {v['self_own_object']:.2f} IoU {v['cross_iou']:.2f}"
                          for side, v in sorted(r["levels"].items(), key=lambda kv: -int(kv[0])))
        g = r.get("grounding")
        ground = f"  grounding CA {g['grounding_iou_ca']:.3f} it {g['grounding_iou_iterative']:.3f} above {g['grounding_steps_above']:.2f}" if g else ""
        print(f"{key:38s} {r['seconds_per_step']:.2f} s/step  P1={r['P1']} P2={r['P2']}  {cells}{ground}", flush=True)


if __name__ == "__main__":
    main()
