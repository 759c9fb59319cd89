"""ToyWorld as datasets: deterministic splits of scenes and edit triplets.

Index ``i`` of a split is always the same scene or edit (see :func:`editnb.toy.world.scene_for`),
so a dataset is just a range of indices; nothing is stored on disk.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from . import world


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1], the range of the VAE."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div(127.5).sub(1.0)


class SceneDataset(Dataset):
    """Scenes of one split: ``{"image", "caption", "mask", "index"}``.

    ``mask`` is (3, H, W): the exact masks of circle, square and triangle (zeros when absent).
    """

    def __init__(self, split: str = "train", size: int = 1000, start: int = 0,
                 n_objects: int | None = None, resolution: int = world.RESOLUTION):
        world._seed(split, start)  # validates the split name
        self.split, self.size, self.start = split, size, start
        self.n_objects, self.resolution = n_objects, resolution

    def __len__(self):
        return self.size

    def scene(self, i: int) -> world.Scene:
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for a dataset of {self.size} scenes")
        return world.scene_for(self.split, self.start + i, self.n_objects)

    def __getitem__(self, i):
        scene = self.scene(i)
        masks = world.object_masks(scene, self.resolution)
        mask = np.stack([masks.get(s, np.zeros((self.resolution,) * 2, bool)) for s in world.SHAPES])
        return {
            "image": to_tensor(world.render(scene, self.resolution)),
            "caption": scene.caption,
            "mask": torch.from_numpy(mask),
            "index": self.start + i,
        }


class EditDataset(Dataset):
    """Edit triplets of one split: source image, instruction, edited image, captions, mask."""

    def __init__(self, split: str = "train", size: int = 1000, start: int = 0,
                 kind: str | None = None, resolution: int = world.RESOLUTION):
        world._seed(split, start)
        self.split, self.size, self.start, self.kind, self.resolution = split, size, start, kind, resolution

    def __len__(self):
        return self.size

    def edit(self, i: int) -> world.Edit:
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for a dataset of {self.size} edits")
        return world.edit_for(self.split, self.start + i, self.kind)

    def __getitem__(self, i):
        e = self.edit(i)
        return {
            "source": to_tensor(e.source_image(self.resolution)),
            "edited": to_tensor(e.edited_image(self.resolution)),
            "instruction": e.instruction,
            "reverse_instruction": e.reverse_instruction,
            "source_caption": e.source_caption,
            "target_caption": e.target_caption,
            "kind": e.kind,
            "mask": torch.from_numpy(e.mask(self.resolution)),
            "index": self.start + i,
        }


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep strings as lists."""
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def segmentation_example(scene: world.Scene, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A text query about a scene and its exact mask: the pairs toy-clipseg learns from.

    The queries are the phrases iEdit's difference prompts are made of: 'red circle' or 'circle'
    (the object), 'green background' (everything but the objects), and, one time in six, an object
    that is not in the scene (an empty mask), so the model learns to say 'nothing here'."""
    r = rng.random()
    res = world.RESOLUTION
    if r < 1 / 6 or not scene.objects:
        present = {(o.color, o.shape) for o in scene.objects}
        absent = [(c, s) for c in world.COLORS for s in world.SHAPES if (c, s) not in present]
        c, s = absent[int(rng.integers(len(absent)))]
        return f"{c} {s}", np.zeros((res, res), bool)
    if r < 1 / 3:
        return f"{scene.background} background", ~world.foreground_mask(scene)
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    query = obj.phrase if rng.random() < 0.6 else obj.shape
    return query, world.object_mask(obj)


def segmentation_batch(step: int, batch_size: int, seed: int = 0):
    """Images (B, 3, H, W) in [-1, 1], queries, masks (B, H, W) of training step `step`."""
    start = (seed * 7919 + step * batch_size) % 9_000_000
    rng = np.random.default_rng([seed, step])
    images, queries, masks = [], [], []
    for i in range(batch_size):
        scene = world.scene_for("train", start + i)
        query, mask = segmentation_example(scene, rng)
        images.append(to_tensor(world.render(scene)))
        queries.append(query)
        masks.append(torch.from_numpy(mask))
    return torch.stack(images), queries, torch.stack(masks).float()
