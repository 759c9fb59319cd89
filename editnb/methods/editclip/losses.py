"""EditCLIP's two training objectives.

- Stage 1, the pair encoder: CLIP's symmetric contrastive loss between the edit embeddings
  E(I_i, I_e) and the instruction embeddings G(T), text tower frozen.  Pairs of a batch that
  share an instruction are all positives of each other (ToyWorld repeats instructions).
- Stage 2, the exemplar UNet: the noise loss of InstructPix2Pix with the edit condition in place
  of the text, plus lambda_2 x the input preservation loss, an LPIPS-style distance between the
  one-step estimate of x_0 (decoded) and the input image (supplement Sec. G.1, lambda_2 = 0.05).
  In the toy profile the distance is toy-LPIPS (:func:`editnb.metrics.toy_lpips`'s recipe on
  toy-clip's vision layers), written here differentiably.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LAMBDA_2 = 0.05  # supplement Sec. G.1


def contrastive_loss(edit_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                     instructions) -> torch.Tensor:
    """CLIP's loss on unit-norm embeddings (B, d); items with equal instructions are positives."""
    same = torch.tensor([[a == b for b in instructions] for a in instructions], dtype=torch.float32,
                        device=edit_embeds.device)
    target = same / same.sum(1, keepdim=True)
    logits = logit_scale.exp().clamp(max=100) * edit_embeds @ text_embeds.T
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def perceptual_distance(hidden_a, hidden_b) -> torch.Tensor:
    """LPIPS's recipe on a feature network's layers, per item: unit-normalise each token's
    channels, squared difference summed over channels, mean over tokens, sum over layers (equal
    weights).  `hidden_*` are sequences of (B, tokens, dim); the class token (index 0) is left out."""
    total = 0
    for x, y in zip(hidden_a, hidden_b):
        d = (F.normalize(x[:, 1:].float(), dim=-1) - F.normalize(y[:, 1:].float(), dim=-1)) ** 2
        total = total + d.sum(-1).mean(-1)
    return total


def predict_x0(scheduler, z_t, eps, t) -> torch.Tensor:
    """The one-step estimate x_0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t) (DDPM, epsilon prediction)."""
    a = scheduler.alphas_cumprod.to(z_t.device)[t].reshape(-1, 1, 1, 1)
    return (z_t - (1 - a).sqrt() * eps) / a.sqrt()


@dataclass
class ExemplarTerms:
    total: torch.Tensor
    noise: torch.Tensor
    preservation: torch.Tensor


def exemplar_objective(unet, vae, scheduler, features, cond, x_in, x_tgt, generator, lambda_2: float = LAMBDA_2,
                       drop_image=None) -> ExemplarTerms:
    """Noise loss + lambda_2 x input preservation for one batch.

    `cond` (B, tokens, dim) is the projected edit condition (zeros where dropped); `x_in`, `x_tgt`
    are the query input and its edited target in [-1, 1]; `features` a
    :class:`editnb.features.ClipFeatures` (its ``pixel_hidden_states`` are differentiable);
    `drop_image` (B,) bool marks rows whose input latent is dropped (classifier-free guidance).

    The perceptual term is CLIP-LPIPS on every profile: :func:`perceptual_distance` (the LPIPS recipe
    without learned heads) on `features`' vision layers, toy-clip on toy and CLIP L/14 on sd15.  The
    authors' training uses LPIPS with VGG, whose weights the course cannot fetch offline; the two
    distances have different scales, so a lambda_2 tuned for one is not the other's."""
    with torch.no_grad():
        z_tgt = vae.encode(x_tgt).latent_dist.mode() * vae.config.scaling_factor
        # InstructPix2Pix conditions on the UNSCALED mode of the input latent (diffusers' pipeline)
        z_in = vae.encode(x_in).latent_dist.mode()
    if drop_image is not None:
        z_in = z_in * (~drop_image).to(z_in)[:, None, None, None]
    noise = torch.randn(z_tgt.shape, generator=generator).to(z_tgt)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z_tgt.shape[0],), generator=generator).to(z_tgt.device)
    z_t = scheduler.add_noise(z_tgt, noise, t)
    eps = unet(torch.cat([z_t, z_in], 1), t, encoder_hidden_states=cond).sample
    noise_loss = F.mse_loss(eps, noise)
    preservation = torch.zeros((), device=z_tgt.device)
    if lambda_2:
        z0 = predict_x0(scheduler, z_t, eps, t).clamp(-20, 20)
        x0 = vae.decode(z0 / vae.config.scaling_factor).sample.clamp(-1, 1)
        preservation = perceptual_distance(features.pixel_hidden_states(x0), features.pixel_hidden_states(x_in)).mean()
    return ExemplarTerms(noise_loss + lambda_2 * preservation, noise_loss.detach(), preservation.detach())
