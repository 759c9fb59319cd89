"""A few steps of iEdit's fine-tuning (Eq. 12, Sec. 4.1) on any pipeline's UNet: what the sd15
chapter runs to show the SD 1.5 loop (iEdit released no weights), and what ``IEditTask`` does at
scale on toy-sd through the course's trainer."""
from __future__ import annotations

import copy

import torch

from ... import diffusion
from .losses import objective, trainable_groups


def finetune_steps(pipe, clip, batch, steps: int = 2, lr: float = 1e-5, generator=None) -> list[float]:
    """Fine-tune a float32 COPY of ``pipe.unet`` for `steps` steps on one batch of ``PairedSet.batch``
    (x_1, x_2, M_1, M_2, y_2, y_2^diff) and return the Eq. 12 loss of each step.  As the paper
    fits SD on 16 GB GPUs, the input blocks train on even steps and the middle block on odd ones;
    the pipeline itself is left as it was (its UNet may be shared, fp16 or offloaded).  The copies
    are float32 because AdamW's updates vanish in fp16 weights."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    device = diffusion.execution_device(pipe)
    unet = copy.deepcopy(pipe.unet).to(device).float().train()
    unet.requires_grad_(False)
    groups = trainable_groups(unet)
    opt = torch.optim.AdamW([p for g in groups for p in g], lr=lr)
    x1, x2, m1, m2, prompts, differences = batch
    vae = copy.deepcopy(pipe.vae).to(device).float().requires_grad_(False)  # frozen, float32
    x1, x2, m1, m2 = (t.to(device) for t in (x1, x2, m1, m2))
    with torch.no_grad():
        text = diffusion.encode_prompt(pipe, prompts).float()
    scheduler = diffusion.make_scheduler(pipe)

    losses = []
    for step in range(steps):
        active = groups[step % 2]
        for group in groups:
            for p in group:
                p.requires_grad_(group is active)
        terms = objective(unet, vae, scheduler, clip, text, prompts, differences, x1, x2, m1, m2, generator=generator)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        opt.step()
        losses.append(float(terms.total.detach()))
    return losses
