"""The Edit Reversibility Constraint training step (supplement Algorithm 1) on an
InstructPix2Pix-style UNet (8 input channels: the noisy latent and the image it is conditioned on).

    2: z_t   <- N(I_i, t)                  noise the input at t
    3: e_F, A_f <- M(z_t | I_i, F)         predict with the forward instruction, conditioned on I_i
    4: I_e   <- Apply(e_F, z_t, t)         recover the edited image
    6: z_t^  <- N(I_e, t^)                 noise the edited image at a second step t^
    7: e_R, A_r <- M(z_t^ | I_e, R)        predict with the reverse instruction, conditioned on I_e
    8: I_r   <- Apply(e_R, z_t^, t^)       recover the reconstruction
   10: L_ERC <- L(I_i, I_e, I_r, A_f, A_r, T_i, T_e)

"Apply" is ONE application of the predicted noise: the DDPM x0 estimate
``(z_t - sqrt(1 - a_t) e) / sqrt(a_t)``.  Our choice, and why: Algorithm 1 has one model call per
process (lines 3 and 7) and applies its noise once (lines 4 and 8), and Sec. 9.3 describes a single
prediction per process.  A few DDIM steps instead would multiply time and activation memory by
their number on every training step and backpropagate through a chain of UNet calls; the one-step
estimate keeps the whole chain differentiable at the cost of two UNet calls (the price: at large t
the estimate is blurry, and ERC must teach the UNet to carry the input through its image channels
to keep it sharp).

The image the reverse pass is conditioned on is I_e's latent itself, divided by the VAE scaling
factor (InstructPix2Pix conditions on the unscaled latent): decoding I_e and encoding it again
would only add the VAE's round-trip error and cut nothing from the graph.  A_f and A_r are the
cross-attention of the instruction's words, read through the observation seam
(:class:`editnb.attention.AttentionStore` with ``differentiable=True``) and kept in the graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...attention import AttentionStore, attach
from ...diffusion import publishing
from ...layout import BatchLayout
from ...models import tokenize
from .losses import ERCLoss, attention_consistency_loss, clip_directional_loss, erc_loss, reconstruction_loss, \
    similarity_loss

DROPOUT = 0.05  # InstructPix2Pix's conditioning dropout (Sec. 3.2.1): 5% text, 5% image, 5% both


@dataclass
class ERCModels:
    """What an ERC step needs: the trained UNet (8 input channels) and the frozen VAE, text
    encoder (+ tokenizer), noise schedule and CLIP (:class:`editnb.features.ClipFeatures`)."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    features: object

    def __post_init__(self):
        channels = self.unet.config.in_channels
        if channels != 2 * self.unet.config.out_channels:
            raise ValueError(f"ERC trains an InstructPix2Pix-style UNet with {2 * self.unet.config.out_channels} "
                             f"input channels (noisy latent + image latent), this one has {channels}; widen a "
                             "text-to-image UNet with editnb.toy.tasks.ip2p_unet_from_sd")

    @property
    def device(self):
        return next(self.unet.parameters()).device


@dataclass
class ERCOutputs:
    """The images and maps of one ERC step (latents scaled as the UNet sees them)."""

    edited_latents: torch.Tensor
    reconstructed_latents: torch.Tensor
    edited: torch.Tensor          # I_e, (B, 3, H, W) in about [-1, 1]
    reconstructed: torch.Tensor   # I_r
    forward_attention: torch.Tensor   # A_f, (B, h, w)
    reverse_attention: torch.Tensor   # A_r
    t: torch.Tensor
    t_hat: torch.Tensor


def x0_estimate(scheduler, noisy: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Apply(e, z_t, t): the clean latent the predicted noise implies, (z_t - sqrt(1-a_t) e) / sqrt(a_t)."""
    a = scheduler.alphas_cumprod.to(noisy.device, noisy.dtype)[t].reshape(-1, 1, 1, 1)
    return (noisy - (1 - a).sqrt() * eps) / a.sqrt()


@torch.no_grad()
def encode_texts(models: ERCModels, texts) -> tuple[torch.Tensor, torch.Tensor]:
    """Text states (B, tokens, dim) and the mask (B, tokens) of each text's word tokens (not the
    start, end or padding tokens): the tokens whose attention is the instruction's map."""
    texts = list(texts)
    ids = tokenize(models.tokenizer, texts).to(models.device)
    states = models.text_encoder(ids).last_hidden_state
    lengths = torch.tensor([len(models.tokenizer(t).input_ids) for t in texts], device=models.device)
    positions = torch.arange(ids.shape[1], device=models.device)
    words = (positions[None] >= 1) & (positions[None] < (lengths[:, None] - 1).clamp(max=ids.shape[1] - 1))
    return states, words


def instruction_map(store: AttentionStore, words: torch.Tensor) -> torch.Tensor:
    """The instruction's cross-attention as one spatial map per item (B, h, w): in every recorded
    cross-attention layer, the attention each query pixel pays to the instruction's word tokens,
    summed over those tokens; layers upsampled (bilinear) to the largest resolution and averaged."""
    layers = store.layers("cross")
    if not layers:
        raise ValueError("no cross-attention was recorded; the UNet has no cross-attention layers to observe")
    hw = store.sites[max(layers, key=lambda n: store.sites[n].resolution)].hw  # the finest level's (h, w)
    maps = []
    for name in layers:
        probs = [store.maps[key] for key in store.maps if key[0] == name]  # one call per pass: one step
        p = torch.stack(probs).mean(0)  # (B, queries, keys)
        m = (p * words[:, None, :].to(p)).sum(-1)
        m = m.reshape(-1, 1, *store.sites[name].hw)
        maps.append(m if tuple(m.shape[-2:]) == hw else F.interpolate(m, size=hw, mode="bilinear", align_corners=False))
    return torch.stack(maps).mean(0)[:, 0]


def edit_pass(models: ERCModels, noisy: torch.Tensor, t: torch.Tensor, image_latents: torch.Tensor,
              text_states: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """M(z | image, instruction): the UNet's noise prediction and the instruction's attention map,
    both differentiable."""
    store = AttentionStore(kinds=("cross",), cond_half=False, device=None, differentiable=True)
    with attach(models.unet, store), publishing(models.unet, BatchLayout.plain(noisy.shape[0], ("cond",))):
        eps = models.unet(torch.cat([noisy, image_latents], 1), t, encoder_hidden_states=text_states).sample
    return eps, instruction_map(store, words)


def _timesteps(n: int, generator, scheduler, max_timestep: int | None, device, given=None) -> torch.Tensor:
    """`n` training timesteps: uniform below `max_timestep` (default: the whole schedule), or the
    `given` one(s) (an int or one per item), checked against the schedule.  The draw happens either
    way, so fixing t does not shift the noise that follows."""
    high = scheduler.config.num_train_timesteps if max_timestep is None else int(max_timestep)
    drawn = torch.randint(0, high, (n,), generator=generator)
    if given is None:
        return drawn.to(device)
    t = torch.as_tensor(given, dtype=torch.long).reshape(-1).expand(n) if torch.as_tensor(given).numel() == 1 \
        else torch.as_tensor(given, dtype=torch.long)
    total = scheduler.config.num_train_timesteps
    if t.shape != (n,) or (t < 0).any() or (t >= total).any():
        raise ValueError(f"timesteps must be one int or {n} ints in [0, {total - 1}], got {given!r}")
    return t.clone().to(device)


def erc_step(models: ERCModels, images: torch.Tensor, instructions, reverse_instructions, input_captions,
             edited_captions, generator: torch.Generator, weights: dict | None = None, dropout: float = DROPOUT,
             max_timestep: int | None = None, t=None, t_hat=None) -> tuple[ERCLoss, ERCOutputs]:
    """One pass of Algorithm 1 on a batch of input images (B, 3, H, W) in [-1, 1] with their
    forward and reverse instructions and captions; returns the ERC loss terms and the outputs.

    t and t-hat are drawn independently, uniformly over the training schedule (or below
    `max_timestep`), unless given (to look at one step at chosen noise levels, as chapter 05
    does).  With probability `dropout` each, an item's instructions, its conditioning image, or
    both are dropped (the same draw in both passes), as InstructPix2Pix trains, so that
    its dual guidance works at inference; with the text dropped the item has no instruction words,
    its maps are zero in both passes, and it is left out of L_CLIP and L_sim (no instruction asks
    for no edit), so only L_recon trains it."""
    n = images.shape[0]
    for name, texts in (("instructions", instructions), ("reverse_instructions", reverse_instructions),
                        ("input_captions", input_captions), ("edited_captions", edited_captions)):
        if len(texts) != n:
            raise ValueError(f"{len(texts)} {name} for {n} images: give one per image")
    if not 0.0 <= dropout < 1 / 3:
        raise ValueError(f"dropout must be in [0, 1/3) (three disjoint 'dropout' bands), got {dropout}")
    device, sf = models.device, models.vae.config.scaling_factor
    images = images.to(device)
    r = torch.rand(n, generator=generator)
    drop_text = r < 2 * dropout
    drop_image = ((r >= dropout) & (r < 3 * dropout)).to(device)
    keep_image = (~drop_image).float()[:, None, None, None]
    forward_texts = ["" if d else s for s, d in zip(instructions, drop_text)]
    reverse_texts = ["" if d else s for s, d in zip(reverse_instructions, drop_text)]

    with torch.no_grad():
        input_mode = models.vae.encode(images).latent_dist.mode()  # unscaled: InstructPix2Pix's image condition
    z_input = input_mode * sf
    forward_states, forward_words = encode_texts(models, forward_texts)
    reverse_states, reverse_words = encode_texts(models, reverse_texts)

    # forward process (lines 2-4)
    t = _timesteps(n, generator, models.scheduler, max_timestep, device, given=t)
    noise = torch.randn(z_input.shape, generator=generator).to(device)
    z_t = models.scheduler.add_noise(z_input, noise, t)
    eps_f, attn_f = edit_pass(models, z_t, t, input_mode * keep_image, forward_states, forward_words)
    z_edited = x0_estimate(models.scheduler, z_t, eps_f, t)

    # reverse process (lines 6-8), conditioned on the edited image
    t_hat = _timesteps(n, generator, models.scheduler, max_timestep, device, given=t_hat)
    noise_hat = torch.randn(z_input.shape, generator=generator).to(device)
    z_t_hat = models.scheduler.add_noise(z_edited, noise_hat, t_hat)
    eps_r, attn_r = edit_pass(models, z_t_hat, t_hat, z_edited / sf * keep_image, reverse_states, reverse_words)
    z_reconstructed = x0_estimate(models.scheduler, z_t_hat, eps_r, t_hat)

    # line 10: pixels through the frozen decoder, then the four terms
    edited = models.vae.decode(z_edited / sf).sample
    reconstructed = models.vae.decode(z_reconstructed / sf).sample
    # L_CLIP and L_sim ask for the edit the instruction names: only items that kept their
    # instruction.  With the instruction dropped the model should leave the input as it is (what
    # InstructPix2Pix's text-unconditional branch learns), so those items train L_recon alone.
    edits = [k for k, d in enumerate(drop_text.tolist()) if not d]
    if edits:
        sel = torch.tensor(edits, device=device)
        clip_term = clip_directional_loss(models.features, images[sel], edited[sel], [input_captions[k] for k in edits],
                                          [edited_captions[k] for k in edits])
        sim_term = similarity_loss(models.features, edited[sel], [edited_captions[k] for k in edits])
    else:
        clip_term = sim_term = edited.sum() * 0.0  # keeps the graph
    terms = erc_loss(clip_term, reconstruction_loss(reconstructed, images), sim_term,
                     attention_consistency_loss(attn_f, attn_r), weights)
    return terms, ERCOutputs(z_edited, z_reconstructed, edited, reconstructed, attn_f, attn_r, t, t_hat)
