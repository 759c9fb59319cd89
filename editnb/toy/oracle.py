"""The ToyWorld oracle: read an image (rendered OR generated) back into objects, and score it.

Reading: every pixel is assigned to the nearest palette colour (object colours and backgrounds);
the background is the palette background nearest to the border pixels; each object colour's
connected components above a minimum area are objects; a component's shape is the ideal shape
(circle, square, triangle) fitted to its bounding box with the best IoU; its cell is where its
centroid falls in the 3x3 grid.  Because colours are unique within a ToyWorld scene, this is exact
on renders and robust to noise, blur and the blobby outputs of small diffusion models.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..pixels import psnr
from . import world

_PALETTE_NAMES = list(world.COLORS) + list(world.BACKGROUNDS)
_PALETTE = np.array([world.COLORS.get(n, world.BACKGROUNDS.get(n)) for n in _PALETTE_NAMES], np.float32)
_N_OBJ = len(world.COLORS)


@dataclass
class Detection:
    color: str
    shape: str
    cell: tuple[int, int]
    centroid: tuple[float, float]  # (x, y) in pixels
    area: int
    shape_iou: float
    mask: np.ndarray

    def __repr__(self):
        return (f"Detection({self.color} {self.shape} at {world.cell_name(self.cell)}, area={self.area}, "
                f"shape_iou={self.shape_iou:.2f})")


@dataclass
class Reading:
    background: str
    objects: list[Detection]

    def signature(self, positions: bool = False) -> tuple:
        items = [(d.color, d.shape, d.cell) if positions else (d.color, d.shape) for d in self.objects]
        return self.background, tuple(sorted(items))

    def as_scene(self) -> world.Scene | None:
        """The reading as a Scene (None if it is not a valid ToyWorld scene, e.g. two circles)."""
        try:
            return world.Scene(tuple(world.ToyObject(d.shape, d.color, d.cell) for d in self.objects), self.background)
        except ValueError:
            return None

    @property
    def caption(self) -> str:
        scene = self.as_scene()
        return scene.caption if scene is not None else "; ".join(f"{d.color} {d.shape}" for d in self.objects)


def _as_array(image) -> np.ndarray:
    from ..images import to_numpy

    return to_numpy(image)


def _ideal_masks(h: int, w: int, box: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """Circle, square and triangle filling the bounding box (x0, y0, x1, y1), inclusive."""
    x0, y0, x1, y1 = box
    out = {}
    for shape in world.SHAPES:
        canvas = Image.new("L", (w, h), 0)
        d = ImageDraw.Draw(canvas)
        if shape == "circle":
            d.ellipse([x0, y0, x1, y1], fill=1)
        elif shape == "square":
            d.rectangle([x0, y0, x1, y1], fill=1)
        else:
            d.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=1)
        out[shape] = np.asarray(canvas, bool)
    return out


def read(image, min_area_fraction: float = 0.006) -> Reading:
    """Read an image into a :class:`Reading` (background + detected objects)."""
    img = _as_array(image).astype(np.float32)
    h, w = img.shape[:2]
    dist = ((img[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    label = dist.argmin(-1)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg_idx = _N_OBJ + int(((border.mean(0)[None] - _PALETTE[_N_OBJ:]) ** 2).sum(-1).argmin())
    background = _PALETTE_NAMES[bg_idx]
    min_area = max(4, int(round(min_area_fraction * h * w)))
    detections = []
    for ci in range(_N_OBJ):
        # opening removes the 1-pixel anti-aliased rims that blend into a neighbouring colour
        components, n = ndimage.label(ndimage.binary_opening(label == ci, iterations=1))
        if n == 0:
            continue
        areas = ndimage.sum(np.ones_like(components), components, index=np.arange(1, n + 1))
        for k in np.nonzero(areas >= min_area)[0]:
            mask = components == (k + 1)
            ys, xs = np.nonzero(mask)
            box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
            ious = {}
            for shape, ideal in _ideal_masks(h, w, box).items():
                ious[shape] = (mask & ideal).sum() / max(1, (mask | ideal).sum())
            shape = max(ious, key=ious.get)
            cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
            cell = (min(world.GRID - 1, int(cy * world.GRID / h)), min(world.GRID - 1, int(cx * world.GRID / w)))
            detections.append(Detection(_PALETTE_NAMES[ci], shape, cell, (float(cx), float(cy)), int(mask.sum()),
                                        float(ious[shape]), mask))
    detections.sort(key=lambda d: (d.cell[1], d.cell[0]))
    return Reading(background, detections)


# ------------------------------------------------------------------ scores


def matches(image, scene: world.Scene, positions: bool = False, background: bool = True) -> bool:
    """Does the image show exactly the scene's objects (colour and shape, optionally cells)?"""
    got_bg, got = read(image).signature(positions)
    want_bg, want = world.scene_signature(scene, positions)
    return got == want and (got_bg == want_bg or not background)


def objects_found(image, scene: world.Scene) -> bool:
    """Does the oracle find every object of `scene` in the image (shape and colour, as many of each
    as the scene has; cells, background and extra objects aside)?  What an image embedding alone
    should bring back (ViMAEdit's Figure 5)."""
    found = [(d.color, d.shape) for d in read(image).objects]
    wanted = [(o.color, o.shape) for o in scene.objects]
    return all(found.count(o) >= wanted.count(o) for o in set(wanted))


def caption_agreement(image, caption: str, background: bool = True) -> bool:
    """Does the image show what a ToyWorld caption says (objects by colour and shape, background)?"""
    scene = world.parse_caption(caption)
    if scene is None:
        raise ValueError(f"{caption!r} is not a ToyWorld caption ('a red circle ... on a white background')")
    return matches(image, scene, positions=False, background=background)


def edit_success(image, edit: world.Edit) -> bool:
    """Is the edit done: the image shows the target scene, objects in their target cells?"""
    return matches(image, edit.target, positions=True)


def psnr_outside(image, reference, mask: np.ndarray) -> float:
    """PSNR (dB) between two images over the pixels where `mask` is False (preservation)."""
    a, b = _as_array(image), _as_array(reference)
    if mask.shape != a.shape[:2]:
        raise ValueError(f"mask of shape {mask.shape} does not match images of shape {a.shape[:2]}")
    keep = ~mask.astype(bool)
    if not keep.any():
        raise ValueError("the mask covers the whole image: nothing is left to preserve")
    return psnr(a, b, keep)


def preservation(image, edit: world.Edit) -> float:
    """PSNR outside the edit mask between the image and the edit's source render."""
    return psnr_outside(image, edit.source_image(_as_array(image).shape[0]), edit.mask(_as_array(image).shape[0]))


def change_outside(image, edit: world.Edit) -> float:
    """Mean absolute change (grey levels, 0-255) from the edit's source outside its mask: how much
    an edit leaked into what it should have left alone."""
    a = _as_array(image).astype(np.float64)
    size = a.shape[0]
    keep = ~edit.mask(size)
    return float(np.abs(a - edit.source_image(size))[keep].mean())
