"""How object-bound a UNet's attention is, measured on held-out ToyWorld scenes with their exact masks.

ViMAEdit's grounding (Eq. 9) refines a cross-attention saliency with the self-attention matrix Q;
it can only sharpen the saliency when a patch's self-attention stays on its own object.  SD 1.5's
self-attention at 16x16 and 32x32 does; this module measures whether a toy UNet's does, level by
level, on forward-noised renders of test scenes (x_t ~ q(x_t | x_0) at t <= 0.5 T, so the masks are
exact, with no sampling and no oracle):

- ``self_entropy``: the mean entropy of a self-attention row as a fraction of the uniform row's
  (log of the number of keys): 1.0 is uniform attention, lower is more focused;
- ``self_own_object``: the attention mass a patch of an object gives to the patches of that same
  object, divided by that object's share of the patches (1.0: no preference; the issue's target >= 3);
- ``cross_iou``: IoU between each object's shape word's cross-attention map (mean over layers of
  the level and over the timesteps, upsampled, min-max normalised, thresholded at 0.5) and its mask.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .data import to_tensor

TIMESTEPS = (100, 250, 400)  # t <= 0.5 T of the 1000-step training schedule


def _patch_masks(scene: world.Scene, res: int) -> dict[str, np.ndarray]:
    """Each object's patches at a res x res attention level: patches at least half covered."""
    masks = world.object_masks(scene)
    out = {}
    for shape, m in masks.items():
        cover = torch.from_numpy(m.astype(np.float32))[None, None]
        cover = F.adaptive_avg_pool2d(cover, res)[0, 0].numpy()
        out[shape] = cover >= 0.5
    return out


@torch.no_grad()
def attention_stats(unet=None, vae=None, text_encoder=None, tokenizer=None, n: int = 24,
                    timesteps=TIMESTEPS, seed: int = 0) -> dict[int, dict[str, float]]:
    """{level side: {"self_entropy", "self_own_object", "cross_iou"}} for a toy UNet (default
    toy-sd's) on test scenes 0..n-1, each noised at every t in `timesteps`, conditioned on its caption."""
    from ..attention import AttentionStore, attach
    from ..attention.words import token_indices
    from ..models import load
    from .architectures import new_scheduler

    if unet is None or vae is None or text_encoder is None or tokenizer is None:
        pipe = load("sd", profile="toy", device="cpu", dtype=torch.float32)
        unet, vae = unet or pipe.unet, vae or pipe.vae
        text_encoder, tokenizer = text_encoder or pipe.text_encoder, tokenizer or pipe.tokenizer
    scheduler = new_scheduler()
    scenes = [world.scene_for("test", i) for i in range(n)]
    captions = [s.caption for s in scenes]
    x = torch.stack([to_tensor(world.render(s)) for s in scenes])
    latents = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    cond = text_encoder(ids)[0]
    gen = torch.Generator().manual_seed(seed)
    store = AttentionStore(kinds=("cross", "self"), cond_half=False, max_self_resolution=None)
    sums: dict[int, dict[str, list]] = {}
    with attach(unet, store):
        for t in timesteps:
            store.reset()
            noise = torch.randn(latents.shape, generator=gen)
            tt = torch.full((n,), t, dtype=torch.long)
            unet(scheduler.add_noise(latents, noise, tt), tt, cond)
            for name, site in store.sites.items():
                p = torch.stack([store.maps[k] for k in store.maps if k[0] == name]).mean(0)  # (n, q, k)
                level = sums.setdefault(site.resolution, {"self_entropy": [], "self_own_object": [], "cross": []})
                if site.kind == "self":
                    _self_stats(p, scenes, site.resolution, level)
                else:
                    level["cross"].append(p)
    out = {}
    for res, level in sorted(sums.items()):
        cross = torch.stack(level["cross"]).mean(0)  # (n, res*res, tokens): mean over layers and timesteps
        ious = []
        for k, scene in enumerate(scenes):
            for obj in scene.objects:
                idx = token_indices(tokenizer, captions[k], obj.shape)
                m = cross[k, :, idx].mean(-1).reshape(1, 1, res, res)
                m = F.interpolate(m, size=(world.RESOLUTION,) * 2, mode="bilinear", align_corners=False)[0, 0]
                pred = ((m - m.min()) / (m.max() - m.min() + 1e-8) > 0.5).numpy()
                true = world.object_mask(obj)
                ious.append(float((pred & true).sum() / max(1, (pred | true).sum())))
        out[res] = {"self_entropy": float(np.mean(level["self_entropy"])),
                    "self_own_object": float(np.mean(level["self_own_object"])),
                    "cross_iou": float(np.mean(ious))}
    return out


def row_entropy_fraction(p: torch.Tensor) -> torch.Tensor:
    """Entropy of each attention row (..., keys) over the entropy of a uniform row, log(keys):
    1 for uniform attention, 0 for attention on one key."""
    return -(p.clamp_min(1e-12).log() * p).sum(-1) / np.log(p.shape[-1])


def own_object_ratio(p: torch.Tensor, inside: torch.Tensor) -> float:
    """For one image's self-attention p (queries, keys) over the same patches and one object's
    patches `inside` (bool, keys): the mean attention mass an object patch gives to the object,
    over the object's share of the patches (1: no preference; keys / |object| at most)."""
    mass = p[inside][:, inside].sum(-1)
    return float(mass.mean() / (inside.sum() / p.shape[-1]))


def _self_stats(p: torch.Tensor, scenes, res: int, level: dict) -> None:
    """Add one layer's row entropy (fraction of uniform) and own-object ratio to `level`."""
    level["self_entropy"].append(float(row_entropy_fraction(p).mean()))
    ratios = [own_object_ratio(p[k], torch.from_numpy(patches.reshape(-1)))
              for k, scene in enumerate(scenes) for patches in _patch_masks(scene, res).values() if patches.any()]
    level["self_own_object"].append(float(np.mean(ratios)))
