"""Sampling loops over a diffusers pipeline's parts (UNet, scheduler, VAE, text encoder).

Unlike ``pipe(...)``, these loops expose every step to the caller (``on_step(i, t, latents)`` may
return new latents), which is what every editing method of the course needs.  Batch layouts are
those of diffusers' pipelines, so attention controllers can find the conditional branch:

- text-to-image / SDEdit with classifier-free guidance: ``[uncond, cond]``
- InstructPix2Pix: ``[text+image, image only, none]`` with
  ``eps = eps_0 + s_T (eps_TI - eps_I) + s_I (eps_I - eps_0)`` (Brooks et al. 2023, Eq. 3).

Every random draw takes an explicit ``torch.Generator``: same seed, same image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .images import fit, model_resolution, pil_to_tensor, tensor_to_pil

SCHEDULERS = ("ddim", "dpm++")


@dataclass
class Result:
    """Images (PIL), final latents, and (if asked) the latent after every step."""

    images: list
    latents: torch.Tensor
    trajectory: list[torch.Tensor] = field(default_factory=list)

    @property
    def image(self):
        return self.images[0]


def make_scheduler(pipe, name: str = "ddim"):
    """A fresh scheduler of the pipeline's noise schedule: DDIM or DPM-Solver++ (diffusers)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(pipe.scheduler.config)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    raise ValueError(f"unknown scheduler {name!r}; choose from {SCHEDULERS}")


def _device_dtype(pipe):
    return pipe.unet.device, pipe.unet.dtype


@torch.no_grad()
def encode_prompt(pipe, prompts) -> torch.Tensor:
    """Text encoder hidden states (batch, tokens, dim) for a prompt or a list of prompts."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    device, dtype = _device_dtype(pipe)
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    n_tokens = [len(pipe.tokenizer(p).input_ids) for p in prompts]
    too_long = [p for p, n in zip(prompts, n_tokens) if n > pipe.tokenizer.model_max_length]
    if too_long:
        raise ValueError(f"prompt {too_long[0]!r} is longer than the text encoder's {pipe.tokenizer.model_max_length} tokens")
    return pipe.text_encoder(ids.to(pipe.text_encoder.device))[0].to(device, dtype)


@torch.no_grad()
def encode_image(pipe, image, scaled: bool = True, generator=None) -> torch.Tensor:
    """VAE latent of an image fitted to the model's resolution.  ``scaled=False`` gives the
    unscaled mode, the form InstructPix2Pix conditions on."""
    device, dtype = _device_dtype(pipe)
    images = image if isinstance(image, (list, tuple)) else [image]
    res = model_resolution(pipe)
    x = torch.cat([pil_to_tensor(fit(im, res)) for im in images]).to(pipe.vae.device, pipe.vae.dtype)
    dist = pipe.vae.encode(x).latent_dist
    if not scaled:
        return dist.mode().to(device, dtype)
    z = dist.mean if generator is None else dist.sample(generator)
    return (z * pipe.vae.config.scaling_factor).to(device, dtype)


@torch.no_grad()
def decode(pipe, latents) -> list:
    """Latents -> PIL images."""
    x = pipe.vae.decode(latents.to(pipe.vae.device, pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
    out = tensor_to_pil(x)
    return out if isinstance(out, list) else [out]


def latent_shape(pipe, batch: int) -> tuple:
    c = pipe.unet.config.out_channels
    s = pipe.unet.config.sample_size
    return (batch, c, s, s)


def initial_noise(pipe, batch: int, generator: torch.Generator | None) -> torch.Tensor:
    device, dtype = _device_dtype(pipe)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(latent_shape(pipe, batch), generator=generator, device=gen_device).to(device, dtype)


def _check_generator(generator):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator (e.g. rt.generator(0)), got {type(generator).__name__}")


@torch.no_grad()
def denoise(pipe, latents, cond, uncond=None, guidance=7.5, steps: int = 50, scheduler: str = "ddim",
            start: int = 0, on_step=None, keep_trajectory: bool = False, image_latents=None,
            image_guidance: float = 1.5):
    """The core loop: denoise `latents` from step index `start` of a `steps`-step schedule.

    - classifier-free guidance when `uncond` is given: ``eps_u + g (eps_c - eps_u)``;
      `guidance` may be a float or a per-item tensor.
    - InstructPix2Pix dual guidance when `image_latents` is given (UNSCALED source latents).
    - ``on_step(i, t, latents)`` runs after each step and may return replacement latents.
    """
    if not 0 <= start < steps:
        raise ValueError(f"start must be in [0, {steps}), got {start}")
    sched = make_scheduler(pipe, scheduler)
    sched.set_timesteps(steps, device=latents.device)
    traj = [latents] if keep_trajectory else []
    g = torch.as_tensor(guidance, dtype=latents.dtype, device=latents.device).reshape(-1, 1, 1, 1)
    for i, t in enumerate(sched.timesteps):
        if i < start:
            continue
        if image_latents is not None:
            zeros = torch.zeros_like(image_latents)
            unet_in = torch.cat([torch.cat([latents] * 3), torch.cat([image_latents, image_latents, zeros])], 1)
            unet_in = sched.scale_model_input(unet_in, t)
            states = torch.cat([cond, uncond, uncond])
            eps_ti, eps_i, eps_0 = pipe.unet(unet_in, t, encoder_hidden_states=states).sample.chunk(3)
            eps = eps_0 + g * (eps_ti - eps_i) + image_guidance * (eps_i - eps_0)
        elif uncond is not None:
            unet_in = sched.scale_model_input(torch.cat([latents] * 2), t)
            eps_u, eps_c = pipe.unet(unet_in, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            eps = eps_u + g * (eps_c - eps_u)
        else:
            eps = pipe.unet(sched.scale_model_input(latents, t), t, encoder_hidden_states=cond).sample
        latents = sched.step(eps, t, latents).prev_sample
        if on_step is not None:
            replaced = on_step(i, t, latents)
            if replaced is not None:
                latents = replaced
        if keep_trajectory:
            traj.append(latents)
    return latents, traj


def text_to_image(pipe, prompts, guidance: float = 7.5, steps: int = 50, generator=None, latents=None,
                  scheduler: str = "ddim", on_step=None, keep_trajectory: bool = False) -> Result:
    """Text-to-image with classifier-free guidance (Ho & Salimans 2022)."""
    _check_generator(generator)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    cond, uncond = encode_prompt(pipe, prompts), encode_prompt(pipe, [""] * len(prompts))
    latents = initial_noise(pipe, len(prompts), generator) if latents is None else latents
    sched = make_scheduler(pipe, scheduler)
    latents = latents * sched.init_noise_sigma
    z, traj = denoise(pipe, latents, cond, uncond, guidance, steps, scheduler, on_step=on_step,
                      keep_trajectory=keep_trajectory)
    return Result(decode(pipe, z), z, traj)


def noise_to_strength(pipe, z0, strength: float, steps: int, generator, scheduler: str = "ddim"):
    """Noise a clean latent to the timestep where a `strength` fraction of the schedule remains
    (SDEdit, Meng et al. 2022).  Returns (noisy latent, index of the first step to run)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    sched = make_scheduler(pipe, scheduler)
    sched.set_timesteps(steps, device=z0.device)
    start = steps - int(round(strength * steps))
    start = min(start, steps - 1)
    t = sched.timesteps[start]
    noise = initial_noise(pipe, z0.shape[0], generator)
    return sched.add_noise(z0, noise, t.reshape(1)), start


def sdedit(pipe, image, prompt, strength: float = 0.6, guidance: float = 7.5, steps: int = 50,
           generator=None, scheduler: str = "ddim", on_step=None) -> Result:
    """SDEdit: noise the image to `strength`, then denoise it with the prompt."""
    _check_generator(generator)
    z0 = encode_image(pipe, image)
    prompts = [prompt] * z0.shape[0] if isinstance(prompt, str) else list(prompt)
    zt, start = noise_to_strength(pipe, z0, strength, steps, generator, scheduler)
    z, _ = denoise(pipe, zt, encode_prompt(pipe, prompts), encode_prompt(pipe, [""] * len(prompts)),
                   guidance, steps, scheduler, start=start, on_step=on_step)
    return Result(decode(pipe, z), z)


def instruct_pix2pix(pipe, image, instruction, text_guidance: float = 7.5, image_guidance: float = 1.5,
                     steps: int = 50, generator=None, scheduler: str = "ddim", on_step=None) -> Result:
    """InstructPix2Pix editing with its dual classifier-free guidance (s_T, s_I)."""
    _check_generator(generator)
    if pipe.unet.config.in_channels != 2 * pipe.unet.config.out_channels:
        raise ValueError("this pipeline's UNet does not take an input image (InstructPix2Pix UNets have "
                         f"{2 * pipe.unet.config.out_channels} input channels, this one "
                         f"{pipe.unet.config.in_channels}); load the 'ip2p' model")
    image_latents = encode_image(pipe, image, scaled=False)
    instructions = [instruction] * image_latents.shape[0] if isinstance(instruction, str) else list(instruction)
    cond, uncond = encode_prompt(pipe, instructions), encode_prompt(pipe, [""] * len(instructions))
    sched = make_scheduler(pipe, scheduler)
    latents = initial_noise(pipe, len(instructions), generator) * sched.init_noise_sigma
    z, _ = denoise(pipe, latents, cond, uncond, text_guidance, steps, scheduler, on_step=on_step,
                   image_latents=image_latents, image_guidance=image_guidance)
    return Result(decode(pipe, z), z)


@torch.no_grad()
def ddim_invert(pipe, image, prompt: str = "", steps: int = 50, guidance: float = 1.0) -> list[torch.Tensor]:
    """DDIM inversion (Song et al. 2021; Mokady et al. 2023 Sec. 3): run the deterministic DDIM
    update backwards with diffusers' ``DDIMInverseScheduler``.  Returns the trajectory
    ``[z_0, z_1, ..., z_T]`` (clean latent first), aligned with the forward steps so that
    ``trajectory[steps - i]`` is the latent *before* forward step ``i``."""
    from diffusers import DDIMInverseScheduler

    z = encode_image(pipe, image)
    inv = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inv.set_timesteps(steps, device=z.device)
    cond = encode_prompt(pipe, [prompt] * z.shape[0])
    uncond = encode_prompt(pipe, [""] * z.shape[0]) if guidance != 1.0 else None
    traj = [z]
    for t in inv.timesteps:
        if uncond is not None:
            eps_u, eps_c = pipe.unet(torch.cat([z] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        else:
            eps = pipe.unet(z, t, encoder_hidden_states=cond).sample
        z = inv.step(eps, t, z).prev_sample
        traj.append(z)
    return traj


def reconstruct(pipe, trajectory, prompt: str = "", steps: int | None = None, guidance: float = 1.0,
                direct: bool = False) -> Result:
    """Denoise the inverted latent z_T back to an image with the same prompt.

    ``direct=True`` is Direct Inversion (Ju et al. 2024, "PnP Inversion"): after each step the
    latent is put back on the inversion trajectory (the stored per-step offset is added), so
    reconstruction is exact up to the VAE, and in a dual-branch edit the source branch stays on it.
    """
    steps = steps or len(trajectory) - 1
    if len(trajectory) != steps + 1:
        raise ValueError(f"the trajectory has {len(trajectory) - 1} steps, not {steps}")
    n = trajectory[0].shape[0]
    cond = encode_prompt(pipe, [prompt] * n)
    uncond = encode_prompt(pipe, [""] * n) if guidance != 1.0 else None
    on_step = (lambda i, t, z: trajectory[steps - i - 1]) if direct else None
    z, _ = denoise(pipe, trajectory[-1], cond, uncond, guidance, steps, "ddim", on_step=on_step)
    return Result(decode(pipe, z), z)


def psnr(a, b) -> float:
    """PSNR (dB) between two images (for reconstruction checks)."""
    from .images import to_numpy

    x, y = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    mse = ((x - y) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))
