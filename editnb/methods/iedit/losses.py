"""iEdit's training objective (Sec. 3.3-3.4): L_paired (Eq. 2-4), L_global with x-hat from Eq. 6-7,
the (1 - t/T) and t/T weights, L_mask (Eq. 8-9), L_perc (Eq. 10), L_loc (Eq. 11), the full
objective (Eq. 12), and L_LDM (Eq. 1, the source's own noise) for the ablation rows of Table 2.
``clip`` is an :class:`editnb.features.ClipFeatures`, whose ``distance`` and
``pixel_hidden_states`` are differentiable in the image.

The noise losses take ``reduction="none"`` for one value per batch item: Eq. 12 weights every
item by ITS OWN t (each item of a batch draws its own noise level)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...features import ClipFeatures


def _alpha(scheduler, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha_t (cumulative product, as in Song et al.'s notation used by the paper), broadcast."""
    return scheduler.alphas_cumprod.to(like.device)[t].to(like.dtype).reshape(-1, 1, 1, 1)


def noisy_source(scheduler, z1, t, eps1):
    """Eq. 2: z_t = sqrt(alpha_t) z_1 + sqrt(1 - alpha_t) eps_1."""
    a = _alpha(scheduler, t, z1)
    return a.sqrt() * z1 + (1 - a).sqrt() * eps1


def target_noise(scheduler, z_t, z2, t):
    """Eq. 3: the noise that turns the pseudo-target z_2 into the SAME noisy latent z_t:
    eps_2 = (z_t - sqrt(alpha_t) z_2) / sqrt(1 - alpha_t)."""
    a = _alpha(scheduler, t, z_t)
    return (z_t - a.sqrt() * z2) / (1 - a).sqrt()


def predict_z0(scheduler, z_t, eps_pred, t):
    """Eq. 7: z-hat_1 = (z_t - sqrt(1 - alpha_t) eps_theta) / sqrt(alpha_t)."""
    a = _alpha(scheduler, t, z_t)
    return (z_t - (1 - a).sqrt() * eps_pred) / a.sqrt()


def _reduce(err: torch.Tensor, reduction: str) -> torch.Tensor:
    """Mean of a per-element error over everything ("mean") or per batch item ("none")."""
    if reduction == "mean":
        return err.mean()
    if reduction == "none":
        return err.flatten(1).mean(1)
    raise ValueError(f"reduction must be 'mean' (one number) or 'none' (one per batch item), got {reduction!r}")


def loss_ldm(eps_pred, eps1, reduction: str = "mean"):
    """Eq. 1 on the noisy source: || eps_1 - eps_theta(z_t, t, tau(y_2)) ||^2, the plain LDM loss
    (predict the noise actually added to the source).  Table 2's "L_LDM" rows use it in place of
    L_mask: the model learns to reconstruct the source, the CLIP losses pull it to the prompt."""
    return _reduce((eps_pred - eps1) ** 2, reduction)


def loss_paired(eps_pred, eps2, reduction: str = "mean"):
    """Eq. 4: || eps_2 - eps_theta(z_t, t, tau(y_2)) ||^2."""
    return _reduce((eps_pred - eps2) ** 2, reduction)


def loss_mask(eps_pred, eps1, eps2, m1, m2, reduction: str = "mean"):
    """Eq. 8-9: the target noise on the target mask M_2, the source noise outside the source mask
    (1 - M_1).  Masks are (B, 1, h, w) at the latent resolution, 1 on the edited region."""
    fg = _reduce((eps2 * m2 - eps_pred * m2) ** 2, reduction)
    bg = _reduce((eps1 * (1 - m1) - eps_pred * (1 - m1)) ** 2, reduction)
    return fg + bg


def time_weights(t: torch.Tensor, T: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - t/T) for the CLIP losses, t/T for the noise losses (Sec. 3.3): CLIP judges clean
    images best, noise targets are most reliable at high noise."""
    r = t.float() / T
    return 1 - r, r


def loss_global(clip: ClipFeatures, x_hat, prompts):
    """Eq. 5: D_CLIP(x-hat_1, y_2), per item."""
    return clip.distance(x_hat, prompts)


def loss_loc(clip: ClipFeatures, x_hat, m1_image, differences):
    """Eq. 11: D_CLIP(x-hat_1 * M_1, y_2^diff), per item; `m1_image` is (B, 1, H, W) in pixels."""
    return clip.distance(x_hat * m1_image, differences)


def loss_perc(clip: ClipFeatures, x_hat, x2, m1_image, m2_image):
    """Eq. 10 with toy-clip's vision layers as the feature network V ("toy-perceptual"; the paper
    uses VGG): || V(x-hat_1 * M_1) - V(x_2 * M_2) ||^2 summed over layers."""
    a = clip.pixel_hidden_states(x_hat * m1_image)
    b = clip.pixel_hidden_states(x2 * m2_image)
    return sum(((fa - fb) ** 2).mean((1, 2)) for fa, fb in zip(a, b))


@dataclass
class LossTerms:
    total: torch.Tensor
    paired: torch.Tensor
    mask: torch.Tensor
    global_: torch.Tensor
    loc: torch.Tensor
    perc: torch.Tensor
    ldm: torch.Tensor | None = None


#: the terms :func:`objective` knows; "mask", "ldm" or neither (then L_paired) is the noise term
TERMS = ("mask", "ldm", "global", "loc", "perc")
#: the full objective of Eq. 12
DEFAULT_USE = ("mask", "global", "loc", "perc")
#: the loss rows of Table 2 as ``use`` tuples (row 1 was trained on another data set,
#: LAION-caption-200K; here every row trains on the same paired set)
TABLE2_ROWS = {
    "L_global + L_pairs": ("global",),
    "L_global + L_LDM + L_loc": ("global", "ldm", "loc"),
    "L_global + L_LDM + L_loc + L_perc": ("global", "ldm", "loc", "perc"),
    "L_global + L_mask + L_loc + L_perc": DEFAULT_USE,
}


def check_use(use) -> tuple[str, ...]:
    """The loss terms of `use` (a tuple of :data:`TERMS` or a :data:`TABLE2_ROWS` name)."""
    if isinstance(use, str):
        if use not in TABLE2_ROWS:
            raise ValueError(f"unknown Table 2 row {use!r}; the rows are {list(TABLE2_ROWS)}")
        return TABLE2_ROWS[use]
    use = tuple(use)
    unknown = [u for u in use if u not in TERMS]
    if unknown:
        raise ValueError(f"unknown loss terms {unknown}; iEdit's are {TERMS}")
    if "mask" in use and "ldm" in use:
        raise ValueError("L_mask and L_LDM are alternative noise losses (Table 2); use one of 'mask' or 'ldm'")
    return use


def objective(unet, vae, scheduler, clip: ClipFeatures, text_states, prompts, differences, x1, x2,
              m1, m2, generator=None, lambda_perc: float = 0.1, use=DEFAULT_USE, t=None, eps1=None) -> LossTerms:
    """The full objective (Eq. 12) for a batch of (source x_1, pseudo-target x_2, masks M_1, M_2
    in pixels (B, 1, H, W), edit prompts y_2 (encoded in `text_states`), differences y_2^diff):

        mean over the batch of  (1 - t_i/T) (L_loc + L_global)_i + (t_i/T) L_mask,i + lambda_perc L_perc,i

    every item i weighted by its own noise level t_i.  ``use`` selects the terms (the ablations of
    Table 2, see :data:`TABLE2_ROWS`): the noise term is L_mask with "mask", L_LDM (Eq. 1, the
    source's own noise) with "ldm", else L_paired (Eq. 4).

    Training draws the timesteps t_i and the source noise eps_1 of Eq. 2 from `generator` (t
    first, then eps_1).  Pass `t` (an int for every item, or one per item) and/or `eps1` (the
    latent's shape) to fix them instead: Eq. 12 on a fixed batch at a fixed t, where the learning
    shows (a drawn t moves the value more than training does); what is not given is drawn as before."""
    use = check_use(use)
    sf = vae.config.scaling_factor
    with torch.no_grad():
        z1 = vae.encode(x1).latent_dist.mean * sf
        z2 = vae.encode(x2).latent_dist.mean * sf
    T = scheduler.config.num_train_timesteps
    # drawn on the generator's device (a CUDA generator cannot draw on the CPU), then moved
    gen_device = generator.device if generator is not None else z1.device
    if t is None:
        t = torch.randint(0, T, (x1.shape[0],), generator=generator, device=gen_device)
    else:
        t = _timesteps(t, x1.shape[0], T)
    t = t.to(z1.device)
    if eps1 is None:
        eps1 = torch.randn(z1.shape, generator=generator, device=gen_device)
    elif tuple(eps1.shape) != tuple(z1.shape):
        raise ValueError(f"eps1 is the noise of Eq. 2, shaped like the latent {tuple(z1.shape)}; "
                         f"got {tuple(eps1.shape)}")
    eps1 = eps1.to(z1)
    z_t = noisy_source(scheduler, z1, t, eps1)                   # Eq. 2
    eps2 = target_noise(scheduler, z_t, z2, t)                    # Eq. 3
    eps_pred = unet(z_t, t, encoder_hidden_states=text_states).sample
    w_clip, w_noise = time_weights(t, T)
    per_item = torch.zeros(x1.shape[0], device=z1.device)
    paired = loss_paired(eps_pred, eps2, reduction="none")       # Eq. 4
    mask = ldm = per_item
    if "mask" in use:
        lm1 = F.interpolate(m1, size=z1.shape[-2:], mode="area")
        lm2 = F.interpolate(m2, size=z1.shape[-2:], mode="area")
        mask = noise_term = loss_mask(eps_pred, eps1, eps2, lm1, lm2, reduction="none")  # Eq. 8-9
    elif "ldm" in use:
        ldm = noise_term = loss_ldm(eps_pred, eps1, reduction="none")  # Eq. 1
    else:
        noise_term = paired
    need_image = any(u in use for u in ("global", "loc", "perc"))
    g = loc = perc = per_item
    if need_image:
        x_hat = vae.decode(predict_z0(scheduler, z_t, eps_pred, t).clamp(-20, 20) / sf).sample.clamp(-1, 1)  # Eq. 6-7
        if "global" in use:
            g = loss_global(clip, x_hat, prompts)                 # Eq. 5
        if "loc" in use:
            loc = loss_loc(clip, x_hat, m1, differences)          # Eq. 11
        if "perc" in use:
            perc = loss_perc(clip, x_hat, x2, m1, m2)             # Eq. 10
    total = (w_clip * (loc + g) + w_noise * noise_term + lambda_perc * perc).mean()  # Eq. 12, per item
    return LossTerms(total, paired.mean().detach(), mask.mean().detach(), g.mean().detach(), loc.mean().detach(),
                     perc.mean().detach(), ldm.mean().detach())


def _timesteps(t, batch: int, T: int) -> torch.Tensor:
    """`t` (an int, or one timestep per item) as a (batch,) integer tensor in [0, T)."""
    t = torch.as_tensor(t)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"timesteps t are integers in [0, {T}); got dtype {t.dtype}")
    if t.ndim == 0:
        t = t.expand(batch)
    if tuple(t.shape) != (batch,):
        raise ValueError(f"t is one timestep or one per batch item ({batch}); got shape {tuple(t.shape)}")
    if bool((t < 0).any()) or bool((t >= T).any()):
        raise ValueError(f"timesteps t are in [0, {T}) (the scheduler's training steps); got {t.tolist()}")
    return t


def trainable_groups(unet) -> tuple[list, list]:
    """The two parameter groups iEdit updates alternately (Sec. 4.1): the UNet's input blocks
    (conv_in, time embedding, down blocks) and its middle block."""
    inp = list(unet.conv_in.parameters()) + list(unet.time_embedding.parameters()) + list(unet.down_blocks.parameters())
    mid = list(unet.mid_block.parameters())
    return inp, mid
