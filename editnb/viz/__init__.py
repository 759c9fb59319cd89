"""Pictures the chapters learn from.  Every function returns a matplotlib figure."""
from __future__ import annotations

import numpy as np

from ..images import grid, to_numpy

MASK_COLOURS = [(255, 80, 80), (80, 200, 255), (255, 220, 60), (160, 255, 120)]


#: the colour masks are drawn in: cyan, outside the ToyWorld palette (red, green, blue, yellow, purple;
#: white, gray, black backgrounds), so a mask never reads as an object
MASK_COLOUR = (0, 255, 255)


def grey_rgb(img: np.ndarray) -> np.ndarray:
    """The luminance (ITU-R 601 weights) of an RGB(A) array as a 3-channel float32 array: the
    underlay of every mask and segment drawing, so that only what is drawn over it carries colour."""
    img = np.asarray(img, np.float32)
    return np.repeat((img[..., :3] @ np.float32([0.299, 0.587, 0.114]))[..., None], 3, axis=-1)


def overlay(image, mask: np.ndarray, color=MASK_COLOUR, alpha: float = 0.5, grey: bool = True) -> np.ndarray:
    """The pixels of `mask` tinted with `color` over the image, the mask's edge drawn solid.

    With ``grey=True`` (the default) the underlay is the image in greyscale, so no object's own
    colour can be mistaken for the mask (a green mask on a green triangle, a magenta one on a purple
    square); the mask is the only colour in the picture.  uint8 result."""
    img = to_numpy(image).astype(np.float32)
    m = np.asarray(mask, bool)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask of shape {m.shape} does not match the image {img.shape[:2]}")
    if grey:
        img = grey_rgb(img)
    colour = np.asarray(color, np.float32)
    img[m] = (1 - alpha) * img[m] + alpha * colour
    padded = np.pad(m, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    img[m & ~interior] = colour  # the edge, so a faint tint on a light background still reads as a mask
    return img.astype(np.uint8)


def scene_panel(scenes, size: float = 1.9, ncols: int | None = None):
    """Scenes with their captions (wrapped) as titles."""
    from ..toy import world

    ims = [world.render(s) for s in scenes]
    labels = [wrap(s.caption) for s in scenes]
    return grid(ims, labels, ncols=ncols, size=size)


def mask_panel(scene, size: float = 1.9):
    """A scene, then each object's exact mask over it."""
    from ..toy import world

    img = world.render(scene)
    masks = world.object_masks(scene)
    ims = [img] + [overlay(img, m, MASK_COLOURS[i % len(MASK_COLOURS)]) for i, m in enumerate(masks.values())]
    return grid(ims, ["scene"] + [f"mask: {k}" for k in masks], size=size)


def edit_panel(edits, size: float = 1.9, extra=None, extra_label: str = "model"):
    """One row per edit: source, edited (target render), exact edit mask, and optionally a
    model's output; titles carry the instruction and the reverse instruction."""
    rows, labels = [], []
    for k, e in enumerate(edits):
        src, dst = e.source_image(), e.edited_image()
        row = [src, dst, overlay(src, e.mask(), (0, 255, 255))]
        lab = [f"{e.kind}: source", wrap(e.instruction), "edit mask"]
        if extra is not None:
            row.append(extra[k])
            lab.append(extra_label)
        rows += row
        labels += lab
    ncols = 4 if extra is not None else 3
    return grid(rows, labels, ncols=ncols, size=size)


def wrap(text: str, width: int = 26) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


SEGMENT_COLOURS = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
                            (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
                            (170, 255, 195)], np.float32)


def segments_overlay(image, segments: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Colour each segment (cluster id per pixel, any square size) over a greyscale copy of the image,
    the borders between segments drawn white: the segment colours are then the only colours in the
    picture, so a segment tinted red cannot be read as a red object (nor an object's colour as a
    segment's)."""
    img = to_numpy(image).astype(np.float32)
    seg = np.asarray(segments)
    h, w = img.shape[:2]
    ys = (np.arange(h) * seg.shape[0] // h)[:, None]
    xs = (np.arange(w) * seg.shape[1] // w)[None, :]
    lab = seg[ys, xs]
    out = (1 - alpha) * grey_rgb(img) + alpha * SEGMENT_COLOURS[lab % len(SEGMENT_COLOURS)]
    border = np.zeros((h, w), bool)
    border[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    border[1:, :] |= lab[1:, :] != lab[:-1, :]
    out[border] = 255.0
    return out.astype(np.uint8)
