"""Pictures of UIP2P's Edit Reversibility Constraint (chapter 05): one ERC step unrolled, as the
supplement's Figure 2 draws it, with the images I_i, I_e, I_r and the instruction's cross-attention
A_f (forward pass, over the input) and A_r (reverse pass, over the edited image)."""
from __future__ import annotations

import numpy as np
import torch

from .attention import _colourbar, _map_over_grey


def to_uint8(images) -> list[np.ndarray]:
    """(B, 3, H, W) tensors in about [-1, 1] (the VAE's range) -> list of RGB uint8 arrays."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [im.permute(1, 2, 0).numpy() for im in x]


def erc_rows(rows: dict, size: float = 1.45, index: int = 0, vmin: float = 0.5, vmax: float = 1.5):
    """One row per entry of `rows` ({label: (inputs, ERCOutputs)}; inputs is the (B, 3, H, W) batch
    the step saw), showing item `index`: I_i, I_e, I_r, then A_f over a grey I_i and A_r over a grey
    I_e, each map divided by its mean (what L_attn compares: 1 is average attention) on one fixed
    scale from `vmin` to `vmax` for every map, one colourbar."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 5, figsize=(size * 5 + 0.7, size * len(rows) + 0.4), squeeze=False)
    titles = ("input $I_i$", "edited $I_e$", "reconstructed $I_r$", "$A_f$ (forward)", "$A_r$ (reverse)")
    artist = None
    for r, (label, (inputs, out)) in enumerate(rows.items()):
        source, edited, back = (to_uint8(x)[index] for x in (inputs, out.edited, out.reconstructed))
        for c, im in enumerate((source, edited, back)):
            axes[r, c].imshow(im, interpolation="nearest")
        for c, (m, under) in enumerate(((out.forward_attention, source), (out.reverse_attention, edited)), start=3):
            m = m[index].detach().float().cpu().numpy()
            m = m / max(float(m.mean()), 1e-8)
            artist = _map_over_grey(axes[r, c], under, m, vmin=vmin, vmax=vmax)
        axes[r, 0].set_ylabel(label, fontsize=8)
    for c, t in enumerate(titles):
        axes[0, c].set_title(t, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _colourbar(fig, axes[:, 3:], artist, "instruction attention / its mean")
    return fig
