"""LIME's localisation readings side by side on held-out ToyWorld edits: the RoI IoU (with the exact
edit mask) of the course's reading (features and attention averaged over a short pass of their own,
``lime.LOCALISATION_STEPS`` steps) and of the official code's (one step, step 10 of 30, scaled).

    python scripts/lime_localisation_readings.py [--n 50] [--kind recolor] [--start 50000]

The edits are test scenes start .. start + n (never the chapter's examples, which start at 0).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from editnb import models
from editnb.methods import lime
from editnb.toy import world


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--kind", default="recolor", choices=world.EDIT_KINDS)
    ap.add_argument("--start", type=int, default=50_000)
    args = ap.parse_args()
    pipe = models.load("ip2p", profile="toy", device="cpu", dtype=torch.float32)
    edits = [world.edit_for("test", args.start + i, args.kind) for i in range(args.n)]
    print(f"RoI IoU with the exact mask, {args.n} held-out {args.kind} edits (test scenes {args.start}+), toy-ip2p")
    for name, options in lime.READINGS.items():
        ious = lime.roi_ious(pipe, edits, **options)
        print(f"  {name:<40} {np.mean(ious):.3f} (sd {np.std(ious):.3f})")


if __name__ == "__main__":
    main()
