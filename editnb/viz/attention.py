"""Attention pictures: per-word cross-attention, self-attention of a pixel, guidance grids,
source / edited / difference / mask panels, and an interactive explorer.

Maps and masks must not be mistaken for image content: a map is drawn over a *greyscale* copy of the
image (or on its own) with a colourbar, and a mask is tinted in :data:`MASK_COLOUR`, a cyan that no
ToyWorld object or background has, over a greyscale copy.  A colour map over the colour image would
make saturated objects look "hot" whatever the map says."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..attention.p2p import blend_level
from ..attention.words import word_tokens
from ..images import to_numpy
from ..metrics import mask_iou
from . import MASK_COLOUR, overlay  # the one mask colour and the one mask drawing

#: the colour map of attention maps, drawn over greyscale
MAP_CMAP = "magma"


def grey(image, low: float = 0.15, high: float = 0.85) -> np.ndarray:
    """A greyscale copy of `image` (H, W) with values squeezed into [low, high] of [0, 1]: an
    underlay that shows where things are without competing with the colours drawn over it."""
    img = to_numpy(image).astype(np.float32) / 255.0
    lum = img[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32) if img.ndim == 3 else img
    return low + (high - low) * lum


def upsample(m, shape: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """A 2-D map (numpy or torch) resized to `shape` (H, W): bilinear for attention, nearest for masks."""
    t = torch.as_tensor(np.asarray(m, np.float32))[None, None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=tuple(shape), mode=mode, **kwargs)[0, 0].numpy()


def mask_on_grey(image, mask, colour=MASK_COLOUR, alpha: float = 0.65) -> np.ndarray:
    """`mask` (any size; resized nearest-neighbour to the image) drawn by :func:`editnb.viz.overlay`:
    tinted in `colour` over a greyscale copy of `image`, so it cannot be mistaken for the image's own
    colours.  RGB uint8."""
    img = to_numpy(image)
    m = upsample(np.asarray(mask, np.float32), img.shape[:2], mode="nearest") > 0.5
    return overlay(img, m, colour, alpha)


def _map_over_grey(ax, image, m, vmin=0.0, vmax=1.0, alpha: float = 0.7, cmap: str = MAP_CMAP):
    """Draw map `m` (resized to the image) over a greyscale copy of `image`; returns the map's artist."""
    g = grey(image)
    ax.imshow(g, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    return ax.imshow(upsample(m, g.shape), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax, interpolation="nearest")


def word_maps(store, tokenizer, prompt: str, resolution: int | None = None, steps=None, size: int | None = None,
              index: int = 0, skip=("<|startoftext|>",), scaled: bool = True) -> dict[str, np.ndarray]:
    """{word: map} from a store's cross-attention (mean over the word's tokens), upsampled
    bilinearly to `size` (a side, or (height, width); default: the map's own shape).  ``scaled``: each map min-max scaled
    to [0, 1] (for pictures); ``scaled=False`` keeps the attention probabilities (to compare words)."""
    res = resolution or max(s.resolution for s in store.sites.values() if s.kind == "cross")
    agg = store.aggregate("cross", resolution=res, steps=steps)[index]  # (h, w, keys): (res, res) if square
    target = None if not size else (size, size) if isinstance(size, int) else tuple(size)
    out = {}
    for word, toks in word_tokens(tokenizer, prompt):
        m = agg[..., toks].mean(-1)
        if target and target != tuple(m.shape):
            m = F.interpolate(m[None, None], size=target, mode="bilinear", align_corners=False)[0, 0]
        if scaled:
            m = m - m.min()
            m = m / m.max().clamp_min(1e-8)
        out[word] = m.numpy()
    return out


def cross_attention_row(image, maps: dict[str, np.ndarray], title: str | None = None, size: float = 1.6,
                        label: str = "attention (scaled per word)"):
    """The image, then one map per word over a greyscale copy of it, with one colourbar (`label`).
    Maps are drawn on a shared 0-1 scale: give them already scaled (:func:`word_maps`)."""
    import matplotlib.pyplot as plt

    img = to_numpy(image)
    n = len(maps) + 1
    fig, axes = plt.subplots(1, n, figsize=(size * n + 0.6, size + 0.35))
    axes[0].imshow(img, interpolation="nearest")
    axes[0].set_title("image", fontsize=8)
    artist = None
    for ax, (word, m) in zip(axes[1:], maps.items()):
        artist = _map_over_grey(ax, img, m)
        ax.set_title(word, fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if artist is not None:
        _colourbar(fig, axes[1:], artist, label)
    return fig


def _colourbar(fig, axes, artist, label: str):
    bar = fig.colorbar(artist, ax=list(np.ravel(axes)), fraction=0.02, pad=0.01)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return bar


def maps_grid(rows: dict[str, dict[str, np.ndarray]], size: float = 1.3, label: str = "attention (scaled per map)"):
    """A grid of word maps on their own (no image under them), one row per condition (step range,
    resolution...), one column per word, with a colourbar."""
    import matplotlib.pyplot as plt

    words = list(next(iter(rows.values())))
    fig, axes = plt.subplots(len(rows), len(words), figsize=(size * len(words) + 0.6, size * len(rows) + 0.3),
                             squeeze=False)
    for r, (label_r, maps) in enumerate(rows.items()):
        for c, w in enumerate(words):
            ax = axes[r, c]
            artist = ax.imshow(maps[w], cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(w, fontsize=8)
            if c == 0:
                ax.set_ylabel(label_r, fontsize=8)
    fig.tight_layout()
    _colourbar(fig, axes, artist, label)
    return fig


def self_attention_of_pixel(store, image, pixel: tuple[int, int], resolution: int | None = None, steps=None,
                            index: int = 0, size: float = 2.2):
    """Where a chosen pixel (x, y in image coordinates) attends in self-attention."""
    import matplotlib.pyplot as plt

    img = to_numpy(image)
    res = resolution or max(s.resolution for s in store.sites.values() if s.kind == "self")
    agg = store.aggregate("self", resolution=res, steps=steps)[index]  # (h, w, h*w): (res, res, res*res) if square
    h, w = agg.shape[:2]
    x, y = pixel
    if not (0 <= x < img.shape[1] and 0 <= y < img.shape[0]):
        raise ValueError(f"pixel {pixel} is outside the {img.shape[1]}x{img.shape[0]} image")
    qx, qy = int(x * w / img.shape[1]), int(y * h / img.shape[0])
    m = agg[qy, qx].reshape(h, w)
    m = (m / m.max()).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 0.5, size + 0.3))
    axes[0].imshow(img, interpolation="nearest")
    axes[0].plot([x], [y], "+", color=np.asarray(MASK_COLOUR) / 255, markersize=14, mew=2)
    axes[0].set_title(f"query pixel ({x}, {y})", fontsize=8)
    artist = axes[1].imshow(m, cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
    axes[1].plot([(x + 0.5) * w / img.shape[1] - 0.5], [(y + 0.5) * h / img.shape[0] - 0.5], "+",
                 color=np.asarray(MASK_COLOUR) / 255, markersize=10, mew=1.5)
    axes[1].set_title(f"its self-attention ({h}x{w})", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _colourbar(fig, axes[1:], artist, "attention / its max")
    return fig


def guidance_grid(images, row_values, col_values=None, row_name: str = "s_T", col_name: str = "s_I", size: float = 1.3,
                  notes=None, source=None, title: str | None = None):
    """A grid of results over guidance scales: rows `row_values`, columns `col_values`
    (InstructPix2Pix's s_T x s_I), or a single row for a 1-D sweep (text-to-image).  `notes`: one
    short line per panel (a measure), written under it.  `source`: the input image, drawn in a column
    of its own left of the grid (what "stay close to the input" is judged against); `title` above."""
    import matplotlib.pyplot as plt

    cols = col_values if col_values is not None else row_values
    nrows = 1 if col_values is None else len(row_values)
    if notes is not None and len(notes) != len(images):
        raise ValueError(f"notes needs one line per image ({len(images)}), got {len(notes)}")
    extra = 0.2 if notes is not None else 0.0
    lead = 0 if source is None else 1
    fig, all_axes = plt.subplots(nrows, len(cols) + lead, figsize=(size * (len(cols) + lead), (size + extra) * nrows + 0.35 + 0.2 * bool(title)),
                                 squeeze=False)
    if source is not None:
        for r, ax in enumerate(all_axes[:, 0]):
            if r == 0:
                ax.imshow(to_numpy(source), interpolation="nearest")
                ax.set_title("input", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.axis("off")
    axes = all_axes[:, lead:]
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
        if notes is not None and k < len(notes):
            ax.set_xlabel(notes[k], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def comparison(source, edited, mask=None, labels=("source", "edited"), size: float = 2.0):
    """Source / edited / |difference| (grey levels, with a colourbar) / mask (any square size,
    drawn nearest-neighbour in :data:`MASK_COLOUR` over a greyscale source, with its share of the
    image in the title)."""
    import matplotlib.pyplot as plt

    a, b = to_numpy(source).astype(float), to_numpy(edited).astype(float)
    diff = np.abs(a - b).mean(-1)
    n = 3 + (mask is not None)
    fig, axes = plt.subplots(1, n, figsize=(size * n + 0.4, size + 0.3))
    axes[0].imshow(a.astype(np.uint8), interpolation="nearest")
    axes[0].set_title(labels[0], fontsize=8)
    axes[1].imshow(b.astype(np.uint8), interpolation="nearest")
    axes[1].set_title(labels[1], fontsize=8)
    artist = axes[2].imshow(diff, cmap="inferno", vmin=0, vmax=255, interpolation="nearest")
    axes[2].set_title("|difference|", fontsize=8)
    if mask is not None:
        m = np.asarray(mask, bool)
        axes[3].imshow(mask_on_grey(a.astype(np.uint8), m), interpolation="nearest")
        axes[3].set_title(f"mask (cyan): {m.mean():.0%} of the image", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _colourbar(fig, axes[2], artist, "grey levels")
    return fig


def threshold_masks(image, value_map, thresholds, exact=None, label: str = "map", size: float = 1.7):
    """Where a threshold cuts a map: the map (scaled 0-1, e.g. local blend's accumulated attention)
    over a greyscale copy of `image` with a colourbar, then the mask ``value_map > threshold`` for each
    threshold (cyan on grey), titled with its share of the image and, given the `exact` mask, its
    IoU with it (whose outline is drawn on every panel).  Returns the figure and
    {threshold: (share, IoU or None)}."""
    import matplotlib.pyplot as plt

    img = to_numpy(image)
    m = np.asarray(value_map, np.float32)
    fig, axes = plt.subplots(1, len(thresholds) + 1, figsize=(size * 1.25 * (len(thresholds) + 1) + 0.6, size + 0.8))
    artist = _map_over_grey(axes[0], img, m)
    axes[0].set_title(label, fontsize=8)
    truth = None if exact is None else np.asarray(exact, bool)
    at_image = upsample(m, img.shape[:2], mode="nearest")
    found = {}
    for ax, thr in zip(axes[1:], thresholds):
        mask = at_image > thr
        iou = None if truth is None else mask_iou(mask, truth)
        found[thr] = (float(mask.mean()), iou)
        ax.imshow(mask_on_grey(img, mask), interpolation="nearest")
        ax.set_title(f"> {thr:g}: {mask.mean():.0%} of the image" + ("" if iou is None else f"\nIoU {iou:.2f} with the true mask"),
                     fontsize=7)
    for ax in axes:
        if truth is not None:
            ax.contour(truth.astype(float), levels=[0.5], colors="white", linewidths=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
    # the map's colourbar under it, clear of every panel's title
    bar = fig.colorbar(artist, ax=axes[0], location="bottom", fraction=0.06, pad=0.04)
    bar.set_label("scaled to its maximum", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return fig, found


def changes_against(reference, images: dict, reference_label: str = "reference", size: float = 1.7,
                    vmax: float | None = None):
    """Two rows: the reference and each image; under each image, |image - reference| (mean over the
    channels, grey levels) with one colourbar, so where a variant differs from the reference shows at a
    glance even when the images look alike.  Images must have the reference's size."""
    import matplotlib.pyplot as plt

    ref = to_numpy(reference).astype(float)
    diffs = {}
    for name, im in images.items():
        arr = to_numpy(im).astype(float)
        if arr.shape != ref.shape:
            raise ValueError(f"image {name!r} has shape {arr.shape}, the reference {ref.shape}: resize it first")
        diffs[name] = np.abs(arr - ref).mean(-1)
    top = vmax or max(float(d.max()) for d in diffs.values()) or 1.0
    n = len(images) + 1
    fig, axes = plt.subplots(2, n, figsize=(size * n + 0.6, 2 * size + 0.4), squeeze=False)
    axes[0, 0].imshow(ref.astype(np.uint8), interpolation="nearest")
    axes[0, 0].set_title(reference_label, fontsize=8)
    axes[1, 0].axis("off")
    artist = None
    for c, (name, im) in enumerate(images.items(), start=1):
        axes[0, c].imshow(to_numpy(im), interpolation="nearest")
        axes[0, c].set_title(name, fontsize=8)
        artist = axes[1, c].imshow(diffs[name], cmap="inferno", vmin=0, vmax=top, interpolation="nearest")
        axes[1, c].set_title(f"|{name} - {reference_label}|"[:34], fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _colourbar(fig, axes[1, 1:], artist, "grey levels")
    return fig


def iou_per_step(ious: dict, first_step: int, steps: int, title: str | None = None):
    """Mean mask IoU per denoising step (a paper's Figure 6a): `ious` maps a method's name to an
    array (edits, grounded steps), the steps numbered from `first_step` (0-based) out of `steps`."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 2.8))
    for name, v in ious.items():
        v = np.asarray(v, float)
        ax.plot(range(first_step + 1, first_step + 1 + v.shape[1]), v.mean(0), marker="o", markersize=3, label=name)
    ax.set_xlabel(f"denoising step (of {steps})")
    ax.set_ylabel("IoU with the true mask")
    ax.set_title(title or f"mask IoU per step, mean of {len(next(iter(ious.values())))} edits", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def attention_explorer(store, tokenizer, prompt: str, image, index: int = 0):
    """Interactive explorer (word, step, layer sliders) for cross-attention maps.

    With a live Jupyter frontend it returns an ipywidgets panel; without one (nbval, scripts) it
    draws the static per-word figure for all steps instead, so the notebook still shows a result.
    """
    tokens = word_tokens(tokenizer, prompt)
    layers = store.layers("cross")
    if not _frontend_available():
        return cross_attention_row(image, word_maps(store, tokenizer, prompt, index=index),
                                   title="cross-attention per word (all steps; static view)")
    import ipywidgets as W
    import matplotlib.pyplot as plt

    word = W.Dropdown(options=explorer_words(tokens), value=min(2, len(tokens) - 1), description="word")
    step = W.IntSlider(min=0, max=max(store.steps), value=max(store.steps) // 2, description="step")
    layer = W.Dropdown(options=[(f"{n.split('.processor')[0]} ({store.sites[n].resolution}x{store.sites[n].resolution})", n)
                                for n in layers],
                       value=grounded_layer(store), description="layer", layout=W.Layout(width="60%"))
    out = W.Output()

    def draw(*_):
        label, toks = tokens[word.value]
        m = store.maps[(layer.value, step.value)][index]
        res = int(m.shape[0] ** 0.5)
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(3.4, 3))
            wm = m[:, toks].mean(-1).reshape(res, res)
            artist = _map_over_grey(ax, image, wm, vmin=0, vmax=float(wm.max()))
            fig.colorbar(artist, ax=ax, fraction=0.046, pad=0.02).set_label("attention probability", fontsize=7)
            ax.set_title(f"'{label}' step {step.value}\n{layer.value.split('.processor')[0]} ({res}x{res})", fontsize=7)
            ax.axis("off")
            plt.show()

    for w in (word, step, layer):
        w.observe(draw, names="value")
    draw()
    return W.VBox([W.HBox([word, step]), layer, out])


def grid_explorer(images: dict, row_values, col_values, row_name: str = "s_E", col_name: str = "s_I",
                  value=None, notes: dict | None = None):
    """Sliders over a guidance grid already computed (``images[(row, col)]``): with a live Jupyter
    frontend, an ipywidgets panel that shows the result of the chosen pair of scales (and its note,
    e.g. a measure).  Without one (nbval, scripts, a static render of the notebook) the panel is
    drawn as it opens: the sliders' values as text over the result they select, and None returns."""
    import matplotlib.pyplot as plt

    missing = [(r, c) for r in row_values for c in col_values if (r, c) not in images]
    if missing:
        raise ValueError(f"images has no result for {missing[:3]}{' ...' if len(missing) > 3 else ''}; "
                         f"it needs one per ({row_name}, {col_name}) pair of the grid")
    row_value, col_value = value if value is not None else (row_values[len(row_values) // 2], col_values[len(col_values) // 2])

    def draw(r, c, static=False):
        fig, ax = plt.subplots(figsize=(2.4, 2.6))
        ax.imshow(to_numpy(images[(r, c)]), interpolation="nearest")
        note = f"\n{notes[(r, c)]}" if notes else ""
        ax.set_title(f"{row_name}={r}, {col_name}={c}{note}", fontsize=8)
        ax.axis("off")
        if static:
            fig.text(0.5, 0.01, f"explorer: {row_name} {list(row_values)}, {col_name} {list(col_values)}\n"
                     "(sliders with a live frontend: JupyterLab, Colab)", ha="center", va="bottom", fontsize=6)
        plt.show()

    if not _frontend_available():
        draw(row_value, col_value, static=True)
        return None
    import ipywidgets as W

    row = W.SelectionSlider(options=list(row_values), value=row_value, description=row_name)
    col = W.SelectionSlider(options=list(col_values), value=col_value, description=col_name)
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            draw(row.value, col.value)

    row.observe(redraw, names="value")
    col.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([row, col]), out])


def explorer_words(tokens: list[tuple[str, list[int]]]) -> list[tuple[str, int]]:
    """Dropdown options (label, position in `tokens`) for the words of a prompt; a word that occurs
    more than once is numbered ("a (1)", "a (2)"), so that each occurrence shows its own map."""
    counts: dict[str, int] = {}
    for w, _ in tokens:
        counts[w] = counts.get(w, 0) + 1
    seen: dict[str, int] = {}
    options = []
    for k, (w, _) in enumerate(tokens):
        seen[w] = seen.get(w, 0) + 1
        options.append((f"{w} ({seen[w]})" if counts[w] > 1 else w, k))
    return options


def grounded_layer(store) -> str:
    """The first cross-attention layer at the level where word maps sit on their objects: the level
    nearest a quarter of the finest one (the latent side), as Prompt-to-Prompt's local blend reads
    (SD 1.5: 16x16 of 64; toy-sd: 8x8 of 16)."""
    layers = store.layers("cross")
    sides = {store.sites[n].resolution for n in layers}
    level = blend_level(sides, max(sides))  # the finest recorded level is the latent side
    return next(n for n in layers if store.sites[n].resolution == level)


def _frontend_available() -> bool:
    """True in a Jupyter kernel, unless EDITNB_STATIC=1 (set by the tests and `editnb figures`, whose
    headless kernels have no frontend to show widgets).  A kernel is any shell that is an
    ipykernel ``ZMQInteractiveShell``, subclasses included: Colab's ``google.colab._shell.Shell``
    and Kaggle's are subclasses, so testing the class name would miss them."""
    import os

    if os.environ.get("EDITNB_STATIC", "") not in ("", "0"):
        return False
    try:
        from IPython import get_ipython
        from ipykernel.zmqshell import ZMQInteractiveShell
    except ImportError:
        return False
    return isinstance(get_ipython(), ZMQInteractiveShell)
