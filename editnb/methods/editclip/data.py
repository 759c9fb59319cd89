"""EditCLIP's data on ToyWorld: edit pairs, "the same edit on another scene", quartets and the
held-out retrieval set.

An edit here is an *instruction* ("make the circle blue", "remove the red square"): two pairs
show the same edit when the same instruction turns each input into its edited image.  ToyWorld
can apply one instruction to any scene that admits it, which gives what TOP-Bench-X gives the
paper: exemplar pairs and query pairs of one edit on different images (supplement Sec. C, H).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ...toy import world

_CELLS = {world.cell_name((r, c)): (r, c) for r in range(world.GRID) for c in range(world.GRID)}
_WORD = r"([a-z]+)"
_PLACE = "(" + "|".join(sorted(_CELLS, key=len, reverse=True)) + ")"
#: the six ToyWorld instruction templates (world.recolor, reshape, add, remove, move, change_background)
_TEMPLATES = {
    "recolor": re.compile(rf"make the {_WORD} {_WORD}$"),
    "reshape": re.compile(rf"turn the {_WORD} {_WORD} into a {_WORD}$"),
    "add": re.compile(rf"add a {_WORD} {_WORD} at the {_PLACE}$"),
    "remove": re.compile(rf"remove the {_WORD} {_WORD}$"),
    "move": re.compile(rf"move the {_WORD} to the {_PLACE}$"),
    "background": re.compile(rf"change the background to {_WORD}$"),
}


def parse_instruction(instruction: str) -> tuple[str, tuple[str, ...]]:
    """(edit kind, arguments) of a ToyWorld instruction, e.g. ("recolor", ("circle", "blue"))."""
    for kind, pattern in _TEMPLATES.items():
        m = pattern.match(instruction.strip())
        if m:
            return kind, m.groups()
    raise ValueError(f"{instruction!r} is not a ToyWorld instruction (e.g. 'make the circle blue', "
                     "'remove the red square', 'change the background to gray')")


def apply_instruction(instruction: str, scene: world.Scene, rng: np.random.Generator) -> world.Edit:
    """The edit that `instruction` makes of `scene`; ValueError/KeyError when the scene does not
    admit it (no such object, the colour is taken, the cell is occupied, ...)."""
    kind, args = parse_instruction(instruction)
    if kind == "recolor":
        return world.recolor(scene, *args)
    if kind == "reshape":
        color, shape, new_shape = args
        if scene.find(shape).color != color:
            raise ValueError(f"the {shape} is not {color}")
        return world.reshape(scene, shape, new_shape)
    if kind == "add":
        color, shape, where = args
        return world.add(scene, world.random_object(rng, shape, color, _CELLS[where]))
    if kind == "remove":
        color, shape = args
        if scene.find(shape).color != color:
            raise ValueError(f"the {shape} is not {color}")
        return world.remove(scene, shape)
    if kind == "move":
        return world.move(scene, args[0], _CELLS[args[1]])
    return world.change_background(scene, args[0])


def same_edit(instruction: str, split: str, index: int, tries: int = 2000) -> world.Edit:
    """The `index`-th ToyWorld scene of `split` (a stream of its own) that admits `instruction`,
    edited by it: the same edit on another image.  Deterministic."""
    rng = np.random.default_rng([world._seed(split, index), 8_191])
    for _ in range(tries):
        try:
            return apply_instruction(instruction, world.random_scene(rng), rng)
        except (ValueError, KeyError):
            continue
    raise ValueError(f"no scene out of {tries} admits {instruction!r}")


@dataclass(frozen=True)
class Quartet:
    """Supplement Sec. C: [reference input, reference edited, query, ground truth]: the exemplar
    pair and the query pair of one edit on two different scenes."""

    exemplar: world.Edit
    query: world.Edit

    @property
    def instruction(self) -> str:
        return self.query.instruction

    @property
    def kind(self) -> str:
        return self.query.kind


def quartets(n: int, split: str = "test", start: int = 0, kinds=None) -> list[Quartet]:
    """n quartets: the query is ToyWorld's edit `start + i` of `split` (kinds in turn when given),
    the exemplar the same instruction on another scene."""
    out = []
    for i in range(n):
        kind = None if kinds is None else kinds[i % len(kinds)]
        q = world.edit_for(split, start + i, kind)
        out.append(Quartet(same_edit(q.instruction, split, start + i), q))
    return out


def retrieval_set(groups: int, per_group: int, split: str = "test", start: int = 60_000) -> tuple[list, np.ndarray]:
    """Held-out pairs for zero-shot retrieval (supplement Sec. D): `groups` instructions, each
    applied to `per_group` different scenes.  Returns (edits, group label per edit)."""
    edits, labels, seen = [], [], set()
    i = 0
    while len(seen) < groups:
        e = world.edit_for(split, start + i)
        i += 1
        if e.instruction in seen:
            continue
        seen.add(e.instruction)
        members = [e] + [same_edit(e.instruction, split, start + 100_000 * (k + 1) + i) for k in range(per_group - 1)]
        edits += members
        labels += [len(seen) - 1] * per_group
    return edits, np.asarray(labels)


# ------------------------------------------------------------------ training batches (pure functions of the step)


def _tensors(images) -> torch.Tensor:
    from ...toy.data import to_tensor

    return torch.stack([to_tensor(im) for im in images])


def pair_batch(step: int, batch_size: int, seed: int = 0):
    """Edit pairs and their instructions for the contrastive pair-encoder task: (input (B, 3, H, W),
    edited (B, 3, H, W) in [-1, 1], instructions)."""
    start = (seed * 7919 + step * batch_size) % 9_000_000
    edits = [world.edit_for("train", start + i) for i in range(batch_size)]
    return (_tensors([e.source_image() for e in edits]), _tensors([e.edited_image() for e in edits]),
            [e.instruction for e in edits])


def quartet_batch(step: int, batch_size: int, seed: int = 0):
    """Training quartets for the exemplar UNet: (query input, query target, exemplar input,
    exemplar edited), each (B, 3, H, W) in [-1, 1]."""
    start = (seed * 7919 + step * batch_size) % 9_000_000
    qs = [world.edit_for("train", start + i) for i in range(batch_size)]
    ex = [same_edit(q.instruction, "train", (start + i + 4_000_000) % 9_000_000) for i, q in enumerate(qs)]
    return (_tensors([q.source_image() for q in qs]), _tensors([q.edited_image() for q in qs]),
            _tensors([e.source_image() for e in ex]), _tensors([e.edited_image() for e in ex]))
