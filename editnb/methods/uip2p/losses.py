"""The four terms of UIP2P's Edit Reversibility Constraint loss (Algorithm 1, line 10) and their
weighted sum.  Images are tensors (B, 3, H, W) in [-1, 1]; CLIP is a frozen
:class:`editnb.features.ClipFeatures`, differentiable in the images.

    L_ERC = w_CLIP L_CLIP(I_i, I_e, T_i, T_e) + w_recon L_recon(I_r, I_i)
            + w_sim L_sim(I_e, T_e) + w_attn L_attn(A_f, A_r)

The supplement gives no weights (the main paper's are not in our copy); :data:`DEFAULT_WEIGHTS`
are ours.  From toy-sd on ToyWorld the terms start at about L_CLIP 0.7, L_recon 0.05-0.3, L_sim 0.6
and L_attn 0.005 (the two passes of one UNet attend alike at first).  L_recon (L1 on [-1, 1] pixels)
gets weight 10 so that reversibility counts as much as the CLIP terms: the UNet must first learn to
carry the input through its image channels, and the CLIP terms, which a small CLIP can satisfy with
texture, must not outweigh it.  L_attn gets weight 10 to count once the two passes drift apart, and
L_sim half weight: it is the term that can pull the edited image away from the input without regard
for the direction of the edit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_WEIGHTS = {"clip": 1.0, "recon": 10.0, "sim": 0.5, "attn": 10.0}
_EPS = 1e-6


def clip_directional_loss(features, input_images, edited_images, input_captions, edited_captions) -> torch.Tensor:
    """L_CLIP (Sec. 4.1; StyleGAN-NADA's directional CLIP loss, which the code adopts, Sec. 9.2):

        dI = E_I(I_e) - E_I(I_i),   dT = E_T(T_e) - E_T(T_i),   L_CLIP = 1 - cos(dI, dT)

    The edit must move the image in CLIP space the way the edited caption moves from the input
    caption.  Applied between the input and the EDITED image only: the reconstruction is already
    tied to the input by L_recon, and a CLIP term on it "would be redundant and could interfere
    with the reversibility objective" (Sec. 4.1).  Zero when the image direction is the text
    direction.  Items whose captions do not differ (a ToyWorld move: captions carry no positions)
    have no text direction and are left out of the mean; a batch without any direction gives 0."""
    img_dir = features.pixel_features(edited_images) - features.pixel_features(input_images)
    txt_dir = (features.texts(edited_captions) - features.texts(input_captions)).to(img_dir)
    return directional_loss(img_dir, txt_dir)


def directional_loss(image_direction: torch.Tensor, text_direction: torch.Tensor) -> torch.Tensor:
    """1 - cos(dI, dT), averaged over the items that have a text direction (see
    :func:`clip_directional_loss`)."""
    has_direction = text_direction.norm(dim=-1) > _EPS
    if not bool(has_direction.any()):
        return image_direction.sum() * 0.0  # keeps the graph; no item says which way to edit
    cos = F.cosine_similarity(image_direction[has_direction], text_direction[has_direction], dim=-1, eps=_EPS)
    return (1 - cos).mean()


def reconstruction_loss(reconstructed: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """L_recon: the reverse edit of the forward edit must give the input back, |I_r - I_i|_1
    (mean over pixels).  With L_CLIP it is the core of ERC: without it "the model risks diverging,
    losing its ability to preserve ... the input's structure" (Sec. 4.1).  The supplement does not
    fix the norm; L1 keeps ToyWorld's flat colours crisp (as toy-vae's training does)."""
    if reconstructed.shape != inputs.shape:
        raise ValueError(f"reconstructed images {tuple(reconstructed.shape)} and inputs {tuple(inputs.shape)} "
                         "differ in shape")
    return (reconstructed - inputs).abs().mean()


def similarity_loss(features, edited_images, edited_captions) -> torch.Tensor:
    """L_sim: image-text alignment of the edited image, 1 - cos(E_I(I_e), E_T(T_e)).  It "enables
    the model to perform edits more freely by encouraging alignment between image and textual
    embeddings" (Sec. 4.1): the direction of L_CLIP alone is satisfied by a small step, L_sim asks
    that the edited image actually shows the edited caption."""
    return features.distance(edited_images, edited_captions).mean()


def attention_consistency_loss(forward_maps: torch.Tensor, reverse_maps: torch.Tensor) -> torch.Tensor:
    """L_attn (Sec. 4.2): the forward instruction's cross-attention A_f (at noise step t) and the
    reverse instruction's A_r (at another step t-hat) must cover the same regions: both edits touch
    the same place, and instruction-conditioned cross-attention is consistent across timesteps.
    Maps are (B, h, w) spatial maps (see :func:`editnb.methods.uip2p.erc.instruction_map`),
    compared after normalising each to mean 1 so that their overall scale, which differs between
    two instructions of different lengths, does not count.  Zero for identical maps."""
    if forward_maps.shape != reverse_maps.shape:
        raise ValueError(f"attention maps {tuple(forward_maps.shape)} and {tuple(reverse_maps.shape)} differ in shape")
    norm = lambda m: m / (m.flatten(1).mean(1).reshape(-1, *[1] * (m.ndim - 1)) + _EPS)  # noqa: E731
    return (norm(forward_maps) - norm(reverse_maps)).pow(2).mean()


@dataclass
class ERCLoss:
    """The four terms and their weighted sum (``total``, the loss ERC backpropagates)."""

    clip: torch.Tensor
    recon: torch.Tensor
    sim: torch.Tensor
    attn: torch.Tensor
    total: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("clip", "recon", "sim", "attn", "total")}


def check_weights(weights: dict | None) -> dict[str, float]:
    w = dict(DEFAULT_WEIGHTS)
    unknown = sorted(set(weights or {}) - set(w))
    if unknown:
        raise ValueError(f"unknown loss weight(s) {unknown}; the ERC terms are {sorted(w)}")
    w.update({k: float(v) for k, v in (weights or {}).items()})
    negative = [k for k, v in w.items() if v < 0]
    if negative:
        raise ValueError(f"loss weights must be >= 0, got {({k: w[k] for k in negative})}")
    return w


def erc_loss(clip: torch.Tensor, recon: torch.Tensor, sim: torch.Tensor, attn: torch.Tensor,
             weights: dict | None = None) -> ERCLoss:
    """L_ERC = sum of the terms times their weights (default :data:`DEFAULT_WEIGHTS`)."""
    w = check_weights(weights)
    total = w["clip"] * clip + w["recon"] * recon + w["sim"] * sim + w["attn"] * attn
    return ERCLoss(clip, recon, sim, attn, total)
