"""iEdit at inference (Sec. 3.5): SDEdit with strength 0.6-0.8, and iEdit-M, which at every DDIM
step puts the noised source latent back outside the mask (Eq. 13); registered as the benchmark
methods "iedit" and "iedit-m"."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
import torch.nn.functional as F

from ... import diffusion
from ...images import as_mask, fit, load_image, model_resolution
from .masks import mask_for_item


def edit(pipe, image, prompt: str, mask=None, strength: float = 0.7, guidance: float = 7.5, steps: int = 50,
         generator=None) -> diffusion.Result:
    """SDEdit-style inference (strength 0.6-0.8 in the paper); with `mask`, iEdit-M: after every
    DDIM step the latent outside the mask is replaced by the source latent noised to that step
    (Eq. 13), so the background is the source's at every noise level.  A soft mask (probabilities,
    an anti-aliased PNG, a path) is cut at 0.5 (``editnb.images.as_mask``); the result's
    ``masks["edit"]`` is the mask used and ``found["trace"]`` the per-step latents of Eq. 13."""
    diffusion.check_generator(generator)
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    z1 = diffusion.encode_image(pipe, image)
    trace, masks = None, {}
    if mask is None:
        on_step = None
    else:
        masks["edit"] = fit_mask(mask, image, model_resolution(pipe))
        m = torch.from_numpy(masks["edit"].astype(np.float32))
        m = F.interpolate(m[None, None], size=z1.shape[-2:], mode="area").to(z1)
        m = (m > 0).to(z1)  # a latent cell touched by the mask may change
        sched = diffusion.make_scheduler(pipe)
        sched.set_timesteps(steps, device=z1.device)
        noise = diffusion.initial_noise(pipe, 1, generator)
        trace = []

        def on_step(i, t, latents):
            nxt = sched.timesteps[i + 1] if i + 1 < len(sched.timesteps) else None
            z_src = z1 if nxt is None else sched.add_noise(z1, noise, nxt.reshape(1))
            out = (1 - m) * z_src + m * latents   # Eq. 13
            trace.append((out, z_src, m))
            return out

    zt, start = diffusion.noise_to_strength(pipe, z1, strength, steps, generator)
    if mask is not None:  # the same noise for the start and for every background replacement
        sched0 = diffusion.make_scheduler(pipe)
        sched0.set_timesteps(steps, device=z1.device)
        zt = sched0.add_noise(z1, noise, sched0.timesteps[start].reshape(1))
    cond = diffusion.encode_prompt(pipe, [prompt])
    uncond = diffusion.encode_prompt(pipe, [""])
    z, _ = diffusion.denoise(pipe, zt, cond, uncond, guidance, steps, start=start, on_step=on_step)
    # found["trace"]: (latent after Eq. 13, noised source, latent mask) of every step, for iEdit-M
    return diffusion.Result(diffusion.decode(pipe, z), z, masks=masks,
                            found={} if trace is None else {"trace": trace})


def fit_mask(mask, image, res: int) -> np.ndarray:
    """The edit mask at the model's resolution `res`, fitted the way ``diffusion.encode_image`` fits
    the image (shorter side to `res`, centre crop): a mask of the image's own size (a CLIPSeg mask
    of a photo of any shape) or one already at `res`.  Soft masks (CLIPSeg probabilities,
    anti-aliased PNGs) are cut at 0.5, never read as "> 0"."""
    m = as_mask(mask)
    if m.shape == (res, res):
        return m
    w, h = load_image(image).size
    if m.shape != (h, w):
        raise ValueError(f"the mask is {m.shape[0]}x{m.shape[1]} but the image is {h}x{w} (the model works at "
                         f"{res}x{res}); pass a mask of the image's size, which is fitted with the image, "
                         "or one of the model's size")
    return as_mask(fit(Image.fromarray(m.astype(np.uint8) * 255), res))


def _register():
    from ..registry import register

    @register("iedit", needs=("target_prompt",), models=("iedit",))
    def run_iedit(ctx, item, generator, steps, strength: float = 0.6, guidance: float = 7.5):
        """iEdit (Bodur et al. 2024): the fine-tuned model, SDEdit-style at strength 0.6."""
        return edit(ctx.model("iedit"), item.image, item.target_prompt, strength=strength, guidance=guidance,
                    steps=steps, generator=generator).image

    @register("iedit-m", needs=("source_prompt", "target_prompt"), models=("iedit", "clipseg"))
    def run_iedit_m(ctx, item, generator, steps, strength: float = 0.6, guidance: float = 7.5):
        """iEdit-M: iEdit with CLIPSeg's mask of the difference words and Eq. 13 at every step."""
        mask = mask_for_item(ctx.model("clipseg"), item.image, item.source_prompt, item.target_prompt)
        return edit(ctx.model("iedit"), item.image, item.target_prompt, mask=mask, strength=strength,
                    guidance=guidance, steps=steps, generator=generator).image


_register()
