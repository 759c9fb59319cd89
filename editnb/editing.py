"""Dual-branch editing: a source and a target branch denoised side by side in one batch.

The paradigm of Prompt-to-Prompt (Hertz et al. 2023) and ViMAEdit (Eq. 5-6): both branches start
from the same latent, either shared noise (a generated source) or the DDIM inversion of a real
image, and are denoised together, the source with the source prompt and the target with the
target prompt.  What makes it an *edit* plugs in at three places:

- an attention ``controller`` (e.g. :class:`editnb.attention.p2p.PromptToPrompt`) sees both
  branches in every attention layer; the batch layout is published with branches
  ``("source", "target")`` so it reads which rows are which;
- ``blend(i, t, latents)`` returns a mask after step ``i``: the target is pulled toward the source
  outside it, ``z_tgt <- z_src + m (z_tgt - z_src)`` (P2P's local blend, ViMAEdit's Eq. 6);
- ``noise(i, t, latents)`` returns a region: inside it the step samples with variance sigma_t
  (DDIM with eta = 1), elsewhere deterministically, with the same noise in both branches
  (ViMAEdit's spatially adaptive variance, Eq. 11-12).

With an image, ``inversion="direct"`` holds the source branch on the inversion trajectory after
every step (Direct Inversion, Ju et al. 2024); ``"ddim"`` lets it run free.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from . import diffusion
from .runtime import check_scale
from .attention import attach

INVERSIONS = ("ddim", "direct")
BRANCHES = ("source", "target")


def blend_toward_source(latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[z_src, z_src + m (z_tgt - z_src)]``: the target keeps its own latent only inside `mask`."""
    src = latents[:1]
    return torch.cat([src, src + mask.to(latents) * (latents[1:] - src)])


def region_noise_step(noise, generator):
    """A ``step`` for :func:`diffusion.denoise`: DDIM with eta = 1 inside the region that
    ``noise(i, t, latents)`` returns (a 0/1 or boolean map broadcastable to the latents, or None for
    none this step), eta = 0 outside; one noise draw shared by every branch (ViMAEdit Eq. 12)."""
    def step(i, t, eps, latents, sched):
        plain = sched.step(eps, t, latents).prev_sample
        region = noise(i, t, latents)
        if region is None:
            return plain
        drawn = torch.randn((1, *latents.shape[1:]), generator=generator,
                            device=generator.device if generator is not None else "cpu")
        shared = drawn.to(latents).expand_as(latents)
        noisy = sched.step(eps, t, latents, eta=1.0, variance_noise=shared).prev_sample
        return torch.where(region.to(latents.device).bool(), noisy, plain)
    return step


def dual_branch(pipe, source_prompt: str, target_prompt: str, *, image=None, inversion: str = "direct",
                scheduler: str = "ddim", guidance=7.5, steps: int = 50, generator=None, controller=None,
                blend=None, noise=None, image_embeds: list | None = None,
                negative_image_embeds: list | None = None, inversion_guidance: float = 1.0, on_step=None,
                keep_trajectory: bool = False, size=None) -> diffusion.Result:
    """Denoise ``[source, target]`` together and return a Result with images [source, target].

    - ``guidance``: a number, a pair (source, target) -- ViMAEdit guides the source with 1 and the
      target with 7.5 -- or a per-pixel map (1 or 2, 1, h, w);
    - ``image``: invert it with the source prompt (DDIM, ``inversion_guidance``) and start both
      branches from z_T; without it both start from the same noise drawn with `generator`, for an
      image of ``size`` = (height, width) pixels (default: the model's own);
    - ``image_embeds``: IP-Adapter embeddings, one (2, n, dim) tensor per adapter (row 0 source,
      row 1 target); inversion uses the source row;
    - ``controller``, ``blend``, ``noise``: the hooks of the module docstring; ``on_step`` runs last.
    ``result.masks["blend"]`` is the last blend mask (boolean, latent resolution);
    ``result.found`` holds the controller and, with an image, the inversion trajectory.
    """
    diffusion.check_generator(generator)
    check_scale(guidance, "guidance")  # before the inversion: a NaN would only show after it
    check_scale(inversion_guidance, "inversion_guidance")
    if inversion not in INVERSIONS:
        raise ValueError(f"inversion must be one of {INVERSIONS}, got {inversion!r}")
    if scheduler not in diffusion.SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose from {diffusion.SCHEDULERS}")
    if noise is not None and scheduler != "ddim":
        raise ValueError("per-branch noise replaces DDIM's variance term (ViMAEdit Eq. 12); use scheduler='ddim'")
    if image is not None and scheduler != "ddim":
        raise ValueError("the inversion trajectory follows DDIM's timesteps; edit a real image with scheduler='ddim' "
                         "(DPM-Solver++ edits generated images)")
    prompts = [source_prompt, target_prompt]
    c = diffusion.Conditioning(diffusion.encode_prompt(pipe, prompts), diffusion.encode_prompt(pipe, ["", ""]),
                               guidance, image_embeds=image_embeds, negative_image_embeds=negative_image_embeds,
                               branches=BRANCHES)
    found, masks, trajectory = {}, {}, None
    if image is not None and size is not None:
        raise ValueError("size is for generated pairs; an edited image keeps its own size (fitted to the model's)")
    if image is None:
        z = diffusion.starting_noise(pipe, 1, generator, steps, scheduler, size=size).repeat(2, 1, 1, 1)
    else:
        source_embeds = None if image_embeds is None else [e[:1] for e in image_embeds]
        trajectory = diffusion.ddim_invert(pipe, image, source_prompt, steps, guidance=inversion_guidance,
                                           image_embeds=source_embeds)
        z = trajectory[-1].repeat(2, 1, 1, 1)
        found["inversion"] = trajectory
    hold_source = trajectory is not None and inversion == "direct"

    def after_step(i, t, latents):
        if blend is not None:
            m = blend(i, t, latents)
            if m is not None:
                latents = blend_toward_source(latents, m)
                masks["blend"] = (m.reshape(-1, *m.shape[-2:])[0] > 0.5).cpu().numpy()
        if hold_source:
            latents = torch.cat([trajectory[steps - i - 1], latents[1:]])
        if on_step is not None:
            replaced = on_step(i, t, latents)
            latents = latents if replaced is None else replaced
        return latents

    step = None if noise is None else region_noise_step(noise, generator)
    with attach(pipe.unet, controller) if controller is not None else nullcontext():
        z, traj = diffusion.denoise(pipe, z, c, steps=steps, scheduler=scheduler, on_step=after_step, step=step,
                                    keep_trajectory=keep_trajectory)
    if controller is not None:
        found["controller"] = controller
    return diffusion.Result(diffusion.decode(pipe, z), z, traj, masks=masks, found=found)
