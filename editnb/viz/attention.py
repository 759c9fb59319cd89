"""Attention pictures: per-word cross-attention, self-attention of a pixel, guidance grids,
source / edited / difference / mask panels, and an interactive explorer."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..attention.words import word_tokens
from ..images import to_numpy


def word_maps(store, tokenizer, prompt: str, resolution: int | None = None, steps=None, size: int | None = None,
              index: int = 0, skip=("<|startoftext|>",)) -> dict[str, np.ndarray]:
    """{word: map in [0, 1]} from a store's cross-attention (mean over the word's tokens),
    upsampled bilinearly to `size` (default: the map's own resolution)."""
    res = resolution or max(s.resolution for s in store.sites.values() if s.kind == "cross")
    agg = store.aggregate("cross", resolution=res, steps=steps)[index]  # (res, res, keys)
    out = {}
    for word, toks in word_tokens(tokenizer, prompt):
        m = agg[..., toks].mean(-1)
        if size and size != res:
            m = F.interpolate(m[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        m = m - m.min()
        out[word] = (m / m.max().clamp_min(1e-8)).numpy()
    return out


def cross_attention_row(image, maps: dict[str, np.ndarray], title: str | None = None, size: float = 1.6):
    """The image, then one heatmap per word over it."""
    import matplotlib.pyplot as plt

    img = to_numpy(image)
    n = len(maps) + 1
    fig, axes = plt.subplots(1, n, figsize=(size * n, size + 0.35))
    axes[0].imshow(img, interpolation="nearest")
    axes[0].set_title("image", fontsize=8)
    for ax, (word, m) in zip(axes[1:], maps.items()):
        ax.imshow(img, interpolation="nearest")
        big = np.asarray(F.interpolate(torch.tensor(m)[None, None], size=img.shape[:2], mode="bilinear",
                                       align_corners=False)[0, 0])
        ax.imshow(big, cmap="jet", alpha=0.55, vmin=0, vmax=1)
        ax.set_title(word, fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def maps_grid(rows: dict[str, dict[str, np.ndarray]], size: float = 1.3):
    """A grid of word maps: one row per condition (step range, resolution...), one column per word."""
    import matplotlib.pyplot as plt

    words = list(next(iter(rows.values())))
    fig, axes = plt.subplots(len(rows), len(words), figsize=(size * len(words), size * len(rows) + 0.3), squeeze=False)
    for r, (label, maps) in enumerate(rows.items()):
        for c, w in enumerate(words):
            ax = axes[r, c]
            ax.imshow(maps[w], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(w, fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def self_attention_of_pixel(store, image, pixel: tuple[int, int], resolution: int | None = None, steps=None,
                            index: int = 0, size: float = 2.2):
    """Where a chosen pixel (x, y in image coordinates) attends in self-attention."""
    import matplotlib.pyplot as plt

    img = to_numpy(image)
    res = resolution or max(s.resolution for s in store.sites.values() if s.kind == "self")
    agg = store.aggregate("self", resolution=res, steps=steps)[index]  # (res, res, res*res)
    x, y = pixel
    if not (0 <= x < img.shape[1] and 0 <= y < img.shape[0]):
        raise ValueError(f"pixel {pixel} is outside the {img.shape[1]}x{img.shape[0]} image")
    qx, qy = int(x * res / img.shape[1]), int(y * res / img.shape[0])
    m = agg[qy, qx].reshape(res, res)
    m = (m / m.max()).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size + 0.3))
    axes[0].imshow(img, interpolation="nearest")
    axes[0].plot([x], [y], "w+", markersize=14, mew=2)
    axes[0].set_title(f"query pixel ({x}, {y})", fontsize=8)
    axes[1].imshow(m, cmap="magma", interpolation="nearest")
    axes[1].set_title(f"its self-attention ({res}x{res})", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def guidance_grid(images, row_values, col_values=None, row_name: str = "s_T", col_name: str = "s_I", size: float = 1.3):
    """A grid of results over guidance scales: rows `row_values`, columns `col_values`
    (InstructPix2Pix's s_T x s_I), or a single row for a 1-D sweep (text-to-image)."""
    import matplotlib.pyplot as plt

    cols = col_values if col_values is not None else row_values
    nrows = 1 if col_values is None else len(row_values)
    fig, axes = plt.subplots(nrows, len(cols), figsize=(size * len(cols), size * nrows + 0.35), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.imshow(to_numpy(images[k]), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        r, c = divmod(k, len(cols))
        if col_values is None:
            ax.set_title(f"{row_name}={cols[c]}", fontsize=8)
        else:
            if r == 0:
                ax.set_title(f"{col_name}={cols[c]}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{row_name}={row_values[r]}", fontsize=8)
    fig.tight_layout()
    return fig


def comparison(source, edited, mask=None, labels=("source", "edited"), size: float = 2.0):
    """Source / edited / |difference| (/ mask) side by side."""
    import matplotlib.pyplot as plt

    a, b = to_numpy(source).astype(float), to_numpy(edited).astype(float)
    diff = np.abs(a - b).mean(-1)
    panels = [(a.astype(np.uint8), labels[0], None), (b.astype(np.uint8), labels[1], None),
              (diff, "|difference|", "inferno")]
    if mask is not None:
        panels.append((np.asarray(mask, float), "mask", "gray"))
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size + 0.3))
    for ax, (im, lab, cmap) in zip(axes, panels):
        ax.imshow(im, cmap=cmap, interpolation="nearest", **({"vmin": 0, "vmax": 255} if lab == "|difference|" else {}))
        ax.set_title(lab, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def attention_explorer(store, tokenizer, prompt: str, image, index: int = 0):
    """Interactive explorer (word, step, layer sliders) for cross-attention maps.

    With a live Jupyter frontend it returns an ipywidgets panel; without one (nbval, scripts) it
    draws the static per-word figure for all steps instead, so the notebook still shows a result.
    """
    words = [w for w, _ in word_tokens(tokenizer, prompt)]
    layers = store.layers("cross")
    if not _frontend_available():
        return cross_attention_row(image, word_maps(store, tokenizer, prompt, index=index),
                                   title="cross-attention per word (all steps; static view)")
    import ipywidgets as W
    import matplotlib.pyplot as plt

    word = W.Dropdown(options=words, value=words[min(2, len(words) - 1)], description="word")
    step = W.IntSlider(min=0, max=max(store.steps), value=max(store.steps) // 2, description="step")
    layer = W.Dropdown(options=layers, value=layers[0], description="layer", layout=W.Layout(width="60%"))
    out = W.Output()

    def draw(*_):
        toks = dict(word_tokens(tokenizer, prompt))[word.value]
        m = store.maps[(layer.value, step.value)][index]
        res = int(m.shape[0] ** 0.5)
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(3, 3))
            ax.imshow(to_numpy(image), interpolation="nearest")
            big = F.interpolate(m[:, toks].mean(-1).reshape(1, 1, res, res), size=to_numpy(image).shape[:2],
                                mode="bilinear", align_corners=False)[0, 0]
            ax.imshow(big, cmap="jet", alpha=0.55)
            ax.set_title(f"'{word.value}' step {step.value}\n{layer.value.split('.processor')[0]}", fontsize=7)
            ax.axis("off")
            plt.show()

    for w in (word, step, layer):
        w.observe(draw, names="value")
    draw()
    return W.VBox([W.HBox([word, step]), layer, out])


def _frontend_available() -> bool:
    """True in a Jupyter kernel, unless EDITNB_STATIC=1 (set by the tests and `editnb figures`, whose
    headless kernels have no frontend to show widgets)."""
    import os

    if os.environ.get("EDITNB_STATIC", "") not in ("", "0"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"
