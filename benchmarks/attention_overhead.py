"""Overhead of observing and editing attention, relative to plain sampling, in the same run.

    python benchmarks/attention_overhead.py [--steps 25] [--repeats 3] [--device cpu]

Prints wall time per image (median of repeats) and the ratio to plain sampling for: plain
sampling (diffusers' default SDPA processors), sampling with the AttentionStore recording every
map, and a Prompt-to-Prompt word swap (two prompts, so its ratio is per edited PAIR vs one image).
"""
import argparse
import statistics
import time

import torch

import editnb
from editnb import diffusion
from editnb.attention import AttentionStore, attach
from editnb.methods.p2p import prompt_to_prompt


def timed(fn, repeats):
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    rt = editnb.setup(profile="toy", device=args.device)
    pipe = rt.load("sd")
    src, tgt = "a red circle on a white background", "a blue circle on a white background"

    def plain():
        diffusion.text_to_image(pipe, src, steps=args.steps, generator=rt.generator(0))

    def stored():
        with attach(pipe.unet, AttentionStore()):
            diffusion.text_to_image(pipe, src, steps=args.steps, generator=rt.generator(0))

    def p2p():
        prompt_to_prompt(pipe, src, tgt, steps=args.steps, generator=rt.generator(0), blend_words=("circle", "circle"))

    base = timed(plain, args.repeats)
    rows = [("plain sampling", base), ("with AttentionStore", timed(stored, args.repeats)),
            ("P2P word swap + local blend (2 images)", timed(p2p, args.repeats))]
    print(f"{'configuration':<42}{'s/run':>8}{'ratio':>8}   ({args.steps} steps, {rt.device}, "
          f"{torch.get_num_threads()} threads)")
    for name, t in rows:
        print(f"{name:<42}{t:>8.3f}{t / base:>8.2f}")


if __name__ == "__main__":
    main()
