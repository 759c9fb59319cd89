"""Prompt-to-Prompt editing of generated or real (inverted) images."""
from __future__ import annotations

import torch

from .. import diffusion
from ..attention import attach
from ..attention.p2p import PromptToPrompt


def prompt_to_prompt(pipe, source_prompt: str, target_prompt: str, mode: str = "replace",
                     cross_replace: float = 0.8, self_replace: float = 0.4, equalizer: dict | None = None,
                     blend_words=None, guidance: float = 7.5, steps: int = 50, generator=None,
                     image=None, inversion: str = "direct") -> diffusion.Result:
    """Edit with P2P.  Without `image`, source and target are generated from the same noise.

    With `image`, the image is DDIM-inverted with the source prompt (``inversion="ddim"``) and,
    by default, the source branch is held on the inversion trajectory (``"direct"``: Direct
    Inversion, Ju et al. 2024), which keeps the source reconstruction exact under guidance.
    Returns a Result whose images are [source, target]; ``result.controller`` holds the controller
    (its ``last_mask`` is the local-blend mask).
    """
    diffusion._check_generator(generator)
    if inversion not in ("ddim", "direct"):
        raise ValueError(f"inversion must be 'ddim' or 'direct', got {inversion!r}")
    prompts = [source_prompt, target_prompt]
    ctrl = PromptToPrompt(pipe.tokenizer, prompts, steps, mode=mode, cross_replace=cross_replace,
                          self_replace=self_replace, equalizer=equalizer, blend_words=blend_words).configure(pipe.unet)
    cond, uncond = diffusion.encode_prompt(pipe, prompts), diffusion.encode_prompt(pipe, ["", ""])
    trajectory = None
    if image is None:
        z = diffusion.initial_noise(pipe, 1, generator).repeat(2, 1, 1, 1)
        z = z * diffusion.make_scheduler(pipe).init_noise_sigma
    else:
        trajectory = diffusion.ddim_invert(pipe, image, source_prompt, steps)
        z = trajectory[-1].repeat(2, 1, 1, 1)

    def on_step(i, t, latents):
        out = ctrl.local_blend(i, t, latents)
        latents = out if out is not None else latents
        if trajectory is not None and inversion == "direct":
            latents = torch.cat([trajectory[steps - i - 1], latents[1:]])
        return latents

    with attach(pipe.unet, ctrl):
        z, _ = diffusion.denoise(pipe, z, cond, uncond, guidance, steps, on_step=on_step)
    result = diffusion.Result(diffusion.decode(pipe, z), z)
    result.controller = ctrl
    return result
