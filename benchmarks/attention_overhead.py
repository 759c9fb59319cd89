"""Cost of observing and editing attention, side by side with the same sampling uncontrolled.

    python benchmarks/attention_overhead.py [--steps 25] [--repeats 3] [--threads 1]
    python benchmarks/attention_overhead.py --sd15-shaped --device cuda --resolution 512 --dtype fp16

Prints seconds per run (median of repeats), the ratio to its reference and peak memory for:
plain sampling; the same with an AttentionStore recording cross-attention only, and cross +
self-attention up to 32x32 (the store's default); the two Prompt-to-Prompt branches sampled from
shared noise without control; Prompt-to-Prompt (word swap + local blend) on them.  Targets
(issue 17): store, cross only <= 1.10x plain; P2P <= 1.15x the two branches.
"""
import harness
import torch

from editnb import diffusion
from editnb.attention import AttentionStore, attach
from editnb.methods.p2p import prompt_to_prompt

SOURCE, TARGET = "a red circle on a white background", "a blue circle on a white background"


def main():
    args = harness.options(__doc__, steps=25)
    rt, dtype = harness.runtime(args)
    pipe = harness.sd15_shaped("sd", rt.device, dtype, args.resolution) if args.sd15_shaped else rt.load("sd")

    def sample(prompts, controller=None):
        noise = diffusion.initial_noise(pipe, 1, rt.generator(0)).repeat(len(prompts), 1, 1, 1)
        if controller is None:
            return diffusion.text_to_image(pipe, prompts, steps=args.steps, latents=noise)
        with attach(pipe.unet, controller):
            return diffusion.text_to_image(pipe, prompts, steps=args.steps, latents=noise)

    configs = [
        ("plain sampling", lambda: sample([SOURCE]), None),
        ("AttentionStore, cross only", lambda: sample([SOURCE], AttentionStore(kinds=("cross",))), "plain sampling"),
        ("AttentionStore, cross only, kept on the device",
         lambda: sample([SOURCE], AttentionStore(kinds=("cross",), device=None)), "plain sampling"),
        ("AttentionStore, cross + self <= 32x32", lambda: sample([SOURCE], AttentionStore()), "plain sampling"),
        ("two P2P branches, no control", lambda: sample([SOURCE, TARGET]), None),
        ("P2P word swap + local blend", lambda: prompt_to_prompt(pipe, SOURCE, TARGET, steps=args.steps,
                                                                  generator=rt.generator(0),
                                                                  blend_words=("circle", "circle")),
         "two P2P branches, no control"),
    ]
    rows = []
    with torch.no_grad():
        for name, fn, ref in configs:
            rows.append((name, *harness.measure(fn, args.repeats, rt.device), ref))
    harness.table(harness.describe(args, rt, dtype), rows, rt.device)


if __name__ == "__main__":
    main()
