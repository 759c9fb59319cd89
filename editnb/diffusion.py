"""Sampling loops over a diffusers pipeline's parts (UNet, scheduler, VAE, text encoder).

Unlike ``pipe(...)``, these loops expose every step to the caller (``on_step(i, t, latents)`` may
return new latents), which is what every editing method of the course needs.  What conditions the
UNet is one :class:`Conditioning` (text states, IP-Adapter image embeddings, InstructPix2Pix image
latents, guidance as a scalar, per item or per pixel).  Batch rows are laid out as diffusers'
pipelines lay them out, and every loop publishes that layout (:mod:`editnb.layout`) so that
attention controllers read which rows are which:

- text-to-image / SDEdit with classifier-free guidance: guidance branches ``("uncond", "cond")``,
  ``eps = eps_u + g (eps_c - eps_u)`` (Ho & Salimans 2022);
- InstructPix2Pix: ``("cond", "image", "uncond")`` (text+image, image only, none) with
  ``eps = eps_0 + s_T (eps_TI - eps_I) + s_I (eps_I - eps_0)`` (Brooks et al. 2023, Eq. 3).

Every random draw takes an explicit ``torch.Generator``: same seed, same image.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from . import layout as _layout
from . import pixels
from .images import fit, latent_hw, model_resolution, pil_to_tensor, tensor_to_pil, vae_factor
from .runtime import check_number, check_prompts, check_scale, check_steps
from .layout import BatchLayout
from .models import tokenize

SCHEDULERS = ("ddim", "dpm++")


@dataclass
class Result:
    """What every method returns: images (PIL), final latents, (if asked) the latent after every
    step, masks (name -> boolean array, e.g. the region an edit was confined to) and what the method
    found on the way (name -> anything: a RoI, clusters, attention maps, its controller)."""

    images: list
    latents: torch.Tensor
    trajectory: list[torch.Tensor] = field(default_factory=list)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    found: dict = field(default_factory=dict)

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


def execution_device(pipe) -> torch.device:
    """Where the pipeline computes: diffusers' execution device, which stays right under model CPU
    offload (the modules then sit on the CPU between calls); the UNet's device otherwise."""
    return getattr(pipe, "_execution_device", None) or pipe.unet.device


def device_dtype(pipe) -> tuple[torch.device, torch.dtype]:
    return execution_device(pipe), pipe.unet.dtype


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator (e.g. rt.generator(0)), got {type(generator).__name__}")



@torch.no_grad()
def encode_prompt(pipe, prompts) -> torch.Tensor:
    """Text encoder hidden states (batch, tokens, dim) for a prompt or a list of prompts."""
    prompts = check_prompts(prompts)
    device, dtype = device_dtype(pipe)
    ids = tokenize(pipe.tokenizer, prompts)
    n_tokens = [len(pipe.tokenizer(p).input_ids) for p in prompts]
    too_long = [p for p, n in zip(prompts, n_tokens) if n > pipe.tokenizer.model_max_length]
    if too_long:
        raise ValueError(f"prompt {too_long[0]!r} is longer than the text encoder's {pipe.tokenizer.model_max_length} tokens")
    return pipe.text_encoder(ids.to(device))[0].to(device, dtype)


@torch.no_grad()
def encode_image(pipe, image, scaled: bool = True, generator=None) -> torch.Tensor:
    """VAE latent of an image fitted to the model's resolution.  ``scaled=False`` gives the
    unscaled mode, the form InstructPix2Pix conditions on."""
    device, dtype = device_dtype(pipe)
    images = image if isinstance(image, (list, tuple)) else [image]
    res = model_resolution(pipe)
    x = torch.cat([pil_to_tensor(fit(im, res)) for im in images]).to(device, pipe.vae.dtype)
    dist = pipe.vae.encode(x).latent_dist
    if not scaled:
        return dist.mode().to(device, dtype)
    z = dist.mean if generator is None else dist.sample(generator)
    return (z * pipe.vae.config.scaling_factor).to(device, dtype)


@torch.no_grad()
def decode(pipe, latents) -> list:
    """Latents -> PIL images."""
    x = latents.to(execution_device(pipe), pipe.vae.dtype) / pipe.vae.config.scaling_factor
    # the VAE may overshoot [-1, 1]; clip as diffusers' image processor does
    out = tensor_to_pil(pipe.vae.decode(x).sample.clamp(-1, 1))
    return out if isinstance(out, list) else [out]


def latent_shape(pipe, batch: int, size=None) -> tuple:
    """(batch, channels, h, w) of the latents: the UNet's own ``sample_size`` (an int, or (h, w)), or
    the latents of an image of `size` = (height, width) pixels, each a multiple of the VAE's factor
    (8 for SD 1.5: 512x768 gives 64x96 latents)."""
    c = pipe.unet.config.out_channels
    if size is None:
        return (batch, c, *latent_hw(pipe.unet))
    factor = vae_factor(pipe.vae)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 and v % factor == 0 for v in size)):
        raise ValueError(f"size must be (height, width) in pixels, each a positive multiple of {factor} (this VAE's "
                         f"factor), got {size!r}; e.g. size=({8 * factor * 8}, {12 * factor * 8})")
    return (batch, c, size[0] // factor, size[1] // factor)


def initial_noise(pipe, batch: int, generator: torch.Generator | None, size=None) -> torch.Tensor:
    """Standard normal latents (of an image of `size` pixels, default the model's own), drawn on the
    generator's device (same seed, same noise on any execution device) and moved to the execution device."""
    device, dtype = device_dtype(pipe)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(latent_shape(pipe, batch, size), generator=generator, device=gen_device).to(device, dtype)


def starting_noise(pipe, batch: int, generator, steps: int, scheduler: str = "ddim", latents=None,
                   size=None) -> torch.Tensor:
    """The latents a sampler that starts from pure noise begins with (`latents`, or fresh noise),
    scaled by the scheduler's initial sigma.  Refuses a schedule whose first timestep is not a noisy
    one: SD 1.5's DDIM spacing is "leading" (``steps=N`` runs t = 1 + k*1000/N for k = N-1, ..., 0),
    so ``steps=1`` runs only t = 1 and would decode the noise itself."""
    steps = check_steps(steps)
    sched = make_scheduler(pipe, scheduler)
    sched.set_timesteps(steps)
    first, total = int(sched.timesteps[0]), sched.config.num_train_timesteps
    if first < total // 2:
        raise ValueError(f"steps={steps} starts sampling at t={first} of {total} ({scheduler}'s timestep spacing: "
                         f"steps=N runs t = {sched.config.get('steps_offset', 0)} + k*{total}/N), so pure noise would "
                         "come back barely denoised; use steps >= 2 (25 to 50 for a finished image)")
    latents = initial_noise(pipe, batch, generator, size) if latents is None else latents
    return latents * sched.init_noise_sigma


def guidance_tensor(value, latents: torch.Tensor, name: str = "guidance") -> torch.Tensor:
    """A guidance scale as a tensor that broadcasts over `latents` (B, c, h, w): a number, one per
    item (B,), or a map such as (1, 1, h, w) or (B, 1, h, w) (per-pixel guidance)."""
    g = torch.as_tensor(value, dtype=latents.dtype, device=latents.device)
    if g.ndim <= 1:
        g = g.reshape(-1, 1, 1, 1)
    try:
        if g.ndim != 4:
            raise RuntimeError
        torch.broadcast_shapes(g.shape, latents.shape)
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(g.shape)} does not broadcast over latents {tuple(latents.shape)}; "
                         "give a number, one value per item (B,), or a map (1 or B, 1, h, w)") from None
    return g


@dataclass
class Conditioning:
    """Everything that conditions the UNet for a batch of B latents.

    - ``cond``: the prompts' text states (B, tokens, dim); ``uncond``: the empty prompt's, which
      switches on classifier-free guidance;
    - ``guidance`` (s_T): a number, one per item (B,), or a per-pixel map (1 or B, 1, h, w);
    - ``image_latents``: InstructPix2Pix's UNSCALED source latents, with ``image_guidance`` (s_I);
    - ``image_embeds``: IP-Adapter image embeddings, one tensor (B, n, dim) per loaded adapter, for
      the text-conditioned rows; the other rows get ``negative_image_embeds`` (zeros by default,
      as diffusers' pipelines do);
    - ``branches``: the names of the B edit branches, for the published layout (default "0", "1", ...).
    """

    cond: torch.Tensor
    uncond: torch.Tensor | None = None
    guidance: float | torch.Tensor = 7.5
    image_latents: torch.Tensor | None = None
    image_guidance: float | torch.Tensor = 1.5
    image_embeds: list[torch.Tensor] | None = None
    negative_image_embeds: list[torch.Tensor] | None = None
    branches: tuple[str, ...] | None = None

    def __post_init__(self):
        n = self.cond.shape[0]
        check_scale(self.guidance, "guidance (the text guidance s_T)")  # before any UNet call
        check_scale(self.image_guidance, "image_guidance (s_I)")
        if self.uncond is not None and self.uncond.shape != self.cond.shape:
            raise ValueError(f"uncond states {tuple(self.uncond.shape)} must match cond {tuple(self.cond.shape)}")
        if self.image_latents is not None and self.uncond is None:
            raise ValueError("InstructPix2Pix guidance needs the empty prompt's states: pass uncond")
        if self.image_embeds is not None:
            if isinstance(self.image_embeds, torch.Tensor):
                raise ValueError("image_embeds is a list with one tensor (B, n, dim) per IP-Adapter: pass [embeds]")
            negative = self.negative_image_embeds or [torch.zeros_like(e) for e in self.image_embeds]
            if len(negative) != len(self.image_embeds) or any(
                    e.shape[0] != n or ne.shape != e.shape for e, ne in zip(self.image_embeds, negative)):
                raise ValueError(f"image_embeds (and negative_image_embeds) need one tensor per adapter with {n} "
                                 f"rows, got {[tuple(e.shape) for e in self.image_embeds]}")
            self.negative_image_embeds = list(negative)
        self.branches = tuple(self.branches) if self.branches else BatchLayout.plain(n).branches
        if len(self.branches) != n:
            raise ValueError(f"{len(self.branches)} branch names {self.branches} for a batch of {n}")

    @property
    def layout(self) -> BatchLayout:
        """The rows of the UNet batch this conditioning builds, guidance branch major."""
        if self.image_latents is not None:
            guidance = ("cond", "image", "uncond")
        else:
            guidance = ("uncond", "cond") if self.uncond is not None else ("cond",)
        return BatchLayout(guidance, self.branches)

    def unet_inputs(self, latents: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The UNet's sample (latents repeated per guidance branch, with InstructPix2Pix's image
        latents along the channels) and its keyword arguments, in the rows of :attr:`layout`."""
        rows = self.layout.guidance
        x = torch.cat([latents] * len(rows)) if len(rows) > 1 else latents
        if self.image_latents is not None:
            zeros = torch.zeros_like(self.image_latents)
            x = torch.cat([x, torch.cat([zeros if g == "uncond" else self.image_latents for g in rows])], 1)
        text = {"cond": self.cond, "uncond": self.uncond, "image": self.uncond}
        kwargs = {"encoder_hidden_states": torch.cat([text[g] for g in rows]) if len(rows) > 1 else self.cond}
        if self.image_embeds is not None:
            kwargs["added_cond_kwargs"] = {"image_embeds": [
                torch.cat([e if g == "cond" else ne for g in rows])
                for e, ne in zip(self.image_embeds, self.negative_image_embeds)]}
        return x, kwargs

    def combine(self, eps: dict, latents: torch.Tensor) -> torch.Tensor:
        """The guided noise prediction from the per-branch predictions ``eps[guidance branch]``."""
        if "image" in eps:  # Brooks et al. 2023, Eq. 3
            g, s_i = guidance_tensor(self.guidance, latents), guidance_tensor(self.image_guidance, latents, "image_guidance")
            return eps["uncond"] + g * (eps["cond"] - eps["image"]) + s_i * (eps["image"] - eps["uncond"])
        if "uncond" in eps:
            return eps["uncond"] + guidance_tensor(self.guidance, latents) * (eps["cond"] - eps["uncond"])
        return eps["cond"]


def predict_noise(pipe, sched, latents, t, conditioning: Conditioning) -> torch.Tensor:
    """One UNet call on the batch the conditioning lays out, combined into the guided noise."""
    # only the noisy latents are scaled, not InstructPix2Pix's image channels (as in diffusers)
    x, kwargs = conditioning.unet_inputs(sched.scale_model_input(latents, t))
    out = pipe.unet(x, t, **kwargs).sample.chunk(len(conditioning.layout.guidance))
    return conditioning.combine(dict(zip(conditioning.layout.guidance, out)), latents)


@contextmanager
def publishing(unet, batch_layout: BatchLayout):
    """Publish `batch_layout` for `unet` while a loop runs; the previous one is restored after."""
    previous = _layout.published(unet)
    _layout.publish(unet, batch_layout)
    try:
        yield batch_layout
    finally:
        _layout.publish(unet, previous)


def check_unet_input(pipe, c: Conditioning) -> None:
    """The UNet must take what the conditioning gives it: latents alone (text-to-image), or latents
    and InstructPix2Pix's image latents; the wrong pipeline fails here, not deep in a convolution."""
    config = pipe.unet.config
    given = config.out_channels * (2 if c.image_latents is not None else 1)
    if config.in_channels != given:
        if c.image_latents is None:
            raise ValueError(f"this pipeline's UNet takes {config.in_channels} input channels, an InstructPix2Pix UNet "
                             f"(latents + image); this method samples from text alone and needs a text-to-image "
                             f"pipeline ({config.out_channels} channels): load 'sd', or use instruct_pix2pix / lime")
        raise ValueError(f"this pipeline's UNet takes {config.in_channels} input channels; InstructPix2Pix needs "
                         f"{given} (latents + image): load the 'ip2p' model")


@torch.no_grad()
def denoise(pipe, latents, cond, uncond=None, guidance=7.5, steps: int = 50, scheduler: str = "ddim",
            start: int = 0, on_step=None, keep_trajectory: bool = False, image_latents=None,
            image_guidance: float = 1.5, step=None):
    """The core loop: denoise `latents` from step index `start` of a `steps`-step schedule.

    - `cond` is a :class:`Conditioning`, or the prompts' text states with `uncond`, `guidance`,
      `image_latents` and `image_guidance` given here (they build one; with a Conditioning they
      must be left out);
    - ``step(i, t, eps, latents, sched)`` replaces the scheduler update (default
      ``sched.step(eps, t, latents).prev_sample``), for samplers that change the update itself;
    - ``on_step(i, t, latents)`` runs after each step and may return replacement latents.
    Publishes the batch layout on ``pipe.unet`` while it runs.  Returns (latents, trajectory).
    """
    if isinstance(cond, Conditioning):
        if uncond is not None or image_latents is not None:
            raise ValueError("pass uncond and image_latents inside the Conditioning, not beside it")
        c = cond
    else:
        c = Conditioning(cond, uncond, guidance, image_latents=image_latents, image_guidance=image_guidance)
    steps = check_steps(steps)
    check_unet_input(pipe, c)
    if not 0 <= start < steps:
        raise ValueError(f"start must be in [0, {steps}), got {start}")
    sched = make_scheduler(pipe, scheduler)
    sched.set_timesteps(steps, device=latents.device)
    traj = [latents] if keep_trajectory else []
    with publishing(pipe.unet, c.layout):
        for i, t in enumerate(sched.timesteps):
            if i < start:
                continue
            eps = predict_noise(pipe, sched, latents, t, c)
            latents = sched.step(eps, t, latents).prev_sample if step is None else step(i, t, eps, latents, sched)
            if on_step is not None:
                replaced = on_step(i, t, latents)
                if replaced is not None:
                    latents = replaced
            if keep_trajectory:
                traj.append(latents)
    return latents, traj


def text_to_image(pipe, prompts, guidance: float = 7.5, steps: int = 50, generator=None, latents=None,
                  scheduler: str = "ddim", on_step=None, keep_trajectory: bool = False,
                  image_embeds: list | None = None, size=None) -> Result:
    """Text-to-image with classifier-free guidance (Ho & Salimans 2022).  `image_embeds`: IP-Adapter
    image embeddings (one (B, n, dim) tensor per adapter) when the pipeline has one loaded; `size`:
    (height, width) in pixels, default the model's own (or the shape of `latents`)."""
    check_generator(generator)
    prompts = check_prompts(prompts)
    c = Conditioning(encode_prompt(pipe, prompts), encode_prompt(pipe, [""] * len(prompts)), guidance,
                     image_embeds=image_embeds)
    latents = starting_noise(pipe, len(prompts), generator, steps, scheduler, latents, size)
    z, traj = denoise(pipe, latents, c, steps=steps, scheduler=scheduler, on_step=on_step,
                      keep_trajectory=keep_trajectory)
    return Result(decode(pipe, z), z, traj)


def strength_steps(strength: float, steps: int) -> int:
    """How many of `steps` denoising steps SDEdit runs at `strength`: round(strength * steps), as
    diffusers' img2img pipelines count them.  With SD 1.5's "leading" DDIM spacing those steps start
    at t = 1 + (run - 1) * 1000 / steps, so a single step starts at t = 1 and changes nothing."""
    return int(round(strength * steps))


def noise_to_strength(pipe, z0, strength: float, steps: int, generator, scheduler: str = "ddim"):
    """Noise a clean latent to the timestep where a `strength` fraction of the schedule remains
    (SDEdit, Meng et al. 2022).  Returns (noisy latent, index of the first step to run)."""
    steps = check_steps(steps)
    if not 0.0 < check_number(strength, "strength", "0.6") <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    run = strength_steps(strength, steps)
    if run < 2:  # "leading" spacing: the last step is t = 1, so one step noises nothing and changes nothing
        raise ValueError(f"strength={strength} of steps={steps} runs {run} denoising step(s), which start at t <= 1 of "
                         "the schedule, so the image would come back unchanged; raise steps to at least "
                         f"{math.ceil(1.5 / strength)} (e.g. steps=50)")
    sched = make_scheduler(pipe, scheduler)
    sched.set_timesteps(steps, device=z0.device)
    start = steps - run
    t = sched.timesteps[start]
    noise = initial_noise(pipe, z0.shape[0], generator)
    return sched.add_noise(z0, noise, t.reshape(1)), start


def sdedit(pipe, image, prompt, strength: float = 0.6, guidance: float = 7.5, steps: int = 50,
           generator=None, scheduler: str = "ddim", on_step=None) -> Result:
    """SDEdit: noise the image to `strength`, then denoise it with the prompt."""
    check_generator(generator)
    z0 = encode_image(pipe, image)
    prompts = check_prompts(prompt, n=z0.shape[0])
    zt, start = noise_to_strength(pipe, z0, strength, steps, generator, scheduler)
    z, _ = denoise(pipe, zt, encode_prompt(pipe, prompts), encode_prompt(pipe, [""] * len(prompts)),
                   guidance, steps, scheduler, start=start, on_step=on_step)
    return Result(decode(pipe, z), z)


def instruct_pix2pix(pipe, image, instruction, text_guidance: float = 7.5, image_guidance: float = 1.5,
                     steps: int = 50, generator=None, scheduler: str = "ddim", on_step=None) -> Result:
    """InstructPix2Pix editing with its dual classifier-free guidance (s_T, s_I)."""
    check_generator(generator)
    if pipe.unet.config.in_channels != 2 * pipe.unet.config.out_channels:
        raise ValueError("this pipeline's UNet does not take an input image (InstructPix2Pix UNets have "
                         f"{2 * pipe.unet.config.out_channels} input channels, this one "
                         f"{pipe.unet.config.in_channels}); load the 'ip2p' model")
    image_latents = encode_image(pipe, image, scaled=False)
    instructions = check_prompts(instruction, n=image_latents.shape[0], what="instruction")
    c = Conditioning(encode_prompt(pipe, instructions), encode_prompt(pipe, [""] * len(instructions)),
                     text_guidance, image_latents=image_latents, image_guidance=image_guidance)
    latents = starting_noise(pipe, len(instructions), generator, steps, scheduler)
    z, _ = denoise(pipe, latents, c, steps=steps, scheduler=scheduler, on_step=on_step)
    return Result(decode(pipe, z), z)


def _text_conditioning(pipe, prompt: str, n: int, guidance: float, image_embeds=None) -> Conditioning:
    """The prompt's conditioning for inversion and reconstruction: guidance 1 needs no empty prompt."""
    uncond = encode_prompt(pipe, [""] * n) if guidance != 1.0 else None
    return Conditioning(encode_prompt(pipe, [prompt] * n), uncond, guidance, image_embeds=image_embeds)


@torch.no_grad()
def ddim_invert(pipe, image, prompt: str = "", steps: int = 50, guidance: float = 1.0,
                image_embeds: list | None = None) -> list[torch.Tensor]:
    """DDIM inversion (Song et al. 2021; Mokady et al. 2023 Sec. 3): run the deterministic DDIM
    update backwards with diffusers' ``DDIMInverseScheduler``, guided as :func:`denoise` guides.
    Returns the trajectory ``[z_0, z_1, ..., z_T]`` (clean latent first), aligned with the forward
    steps so that ``trajectory[steps - i]`` is the latent *before* forward step ``i``."""
    from diffusers import DDIMInverseScheduler

    steps = check_steps(steps)
    z = encode_image(pipe, image)
    inv = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inv.set_timesteps(steps, device=z.device)
    c = _text_conditioning(pipe, prompt, z.shape[0], guidance, image_embeds)
    check_unet_input(pipe, c)
    traj = [z]
    with publishing(pipe.unet, c.layout):
        for t in inv.timesteps:
            z = inv.step(predict_noise(pipe, inv, z, t, c), t, z).prev_sample
            traj.append(z)
    return traj


def direct_inversion(trajectory, steps: int):
    """Direct Inversion (Ju et al. 2024, "PnP Inversion") as an ``on_step`` hook: after forward
    step ``i`` the latent goes back onto the inversion trajectory, ``trajectory[steps - i - 1]``."""
    return lambda i, t, z: trajectory[steps - i - 1]


def reconstruct(pipe, trajectory, prompt: str = "", steps: int | None = None, guidance: float = 1.0,
                direct: bool = False, keep_trajectory: bool = False) -> Result:
    """Denoise the inverted latent z_T back to an image with the same prompt.

    ``direct=True`` is Direct Inversion (Ju et al. 2024, "PnP Inversion"): after each step the
    latent is put back on the inversion trajectory (the stored per-step offset is added), so
    reconstruction is exact up to the VAE, and in a dual-branch edit the source branch stays on it.
    ``keep_trajectory``: ``Result.trajectory`` is [z_T, latent after step 1, ..., z_0], the inversion's
    `trajectory` reversed when nothing drifts (the drift per step is their difference).
    """
    steps = steps or len(trajectory) - 1
    if len(trajectory) != steps + 1:
        raise ValueError(f"the trajectory has {len(trajectory) - 1} steps, not {steps}")
    c = _text_conditioning(pipe, prompt, trajectory[0].shape[0], guidance)
    on_step = direct_inversion(trajectory, steps) if direct else None
    z, path = denoise(pipe, trajectory[-1], c, steps=steps, scheduler="ddim", on_step=on_step,
                      keep_trajectory=keep_trajectory)
    return Result(decode(pipe, z), z, trajectory=path)


def psnr(a, b) -> float:
    """PSNR (dB) between two images (PIL, arrays or tensors; for reconstruction checks)."""
    from .images import to_numpy

    return pixels.psnr(to_numpy(a), to_numpy(b))
