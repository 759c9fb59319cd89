"""UIP2P's reverse-instruction data (supplement Sec. 8, Table 4): what ERC trains on is an input
image, its caption, an edit instruction, the edited caption and a reverse instruction; never an
edited image.

- ToyWorld: every edit kind carries its reverse instruction (:class:`editnb.toy.world.Edit`), so
  :func:`toy_reverse_edit` and :func:`table_4_rows` read them off;
- real captions: :func:`rule_based_reverse` covers the four kinds of Table 4 (colour, add, remove,
  move) and replacement (the ``make the jacket a rain coat`` example of Sec. 8.1); the paper used an
  LLM with the prompts quoted in :data:`LLM_REVERSE_PROMPT` and :data:`LLM_MULTI_EDIT_PROMPT`;
- :func:`clip_filter`: the image-caption filter of Sec. 8.2 (CLIP cosine >= 0.2);
- :class:`ReverseInstructionDataset` / :func:`reversible_batch`: the training stream, whose items
  are :class:`GuardedEdit` objects that raise :class:`GroundTruthAccessError` when anything derived
  from the edited image is touched, so a test can show that no code path of UIP2P reads one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ...toy import world
from ...toy.data import to_tensor

CLIP_FILTER_THRESHOLD = 0.2  # Sec. 8.2, as InstructPix2Pix filters its pairs

# Sec. 8.1.1, verbatim (the fields in braces are filled per example)
LLM_REVERSE_PROMPT = """Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.

### Instruction:

You are an expert in image editing instructions. Given an input caption, an edit instruction, and the resulting edited caption, generate a reverse instruction that would undo the edit and return to the original state.

### Input:

Input Caption: "{input_caption}"
Edit Instruction: "{edit_instruction}"
Edited Caption: "{edited_caption}"

Examples:

- Input: "A man wearing a denim jacket"
-> "make the jacket a rain coat"
-> "A man wearing a rain coat"
Reverse: "make the coat a denim jacket"
- Input: "A sofa in the living room"
-> "add pillows" -> "A sofa in the living room with pillows"
Reverse: "remove the pillows"

### Response:

{reverse_instruction}"""

# Sec. 8.1.2, verbatim
LLM_MULTI_EDIT_PROMPT = """Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.

### Instruction:

Given an input caption, generate 4 different edit instructions along with their corresponding edited captions and reverse instructions. Focus on diverse edit types: color changes, object addition/removal, and positional changes. Ensure edits are realistic and reversible.

### Input:

Input Caption: "{input_caption}"

### Response:

1. Edit Instruction: [instruction]
Edited Caption: [result]
Reverse Instruction: [undo instruction]
2. Edit Instruction: [instruction]
Edited Caption: [result]
Reverse Instruction: [undo instruction]
3. Edit Instruction: [instruction]
Edited Caption: [result]
Reverse Instruction: [undo instruction]
4. Edit Instruction: [instruction]
Edited Caption: [result]
Reverse Instruction: [undo instruction]"""


@dataclass(frozen=True)
class ReverseEdit:
    """One row of Table 4: input caption, edit instruction, edited caption, reverse instruction."""

    input_caption: str
    instruction: str
    edited_caption: str
    reverse_instruction: str
    kind: str = ""

    def as_row(self) -> dict:
        return {"Input Caption": self.input_caption, "Edit Instruction": self.instruction,
                "Edited Caption": self.edited_caption, "Reverse Instruction": self.reverse_instruction}


# ------------------------------------------------------------------ ToyWorld


def toy_reverse_edit(edit: world.Edit) -> ReverseEdit:
    """The Table 4 row of a ToyWorld edit (its captions and both instructions)."""
    return ReverseEdit(edit.source_caption, edit.instruction, edit.target_caption, edit.reverse_instruction, edit.kind)


def table_4_rows(n_captions: int = 2, split: str = "train", kinds=world.EDIT_KINDS, start: int = 0) -> list[dict]:
    """Table 4 on ToyWorld: for each of `n_captions` input scenes, one edit of every kind in
    `kinds` (the kinds a scene allows), as rows {Input Caption, Edit Instruction, Edited Caption,
    Reverse Instruction, kind}.  Scenes with two objects allow every kind."""
    unknown = [k for k in kinds if k not in world.EDIT_KINDS]
    if unknown:
        raise ValueError(f"unknown edit kind(s) {unknown}; ToyWorld's kinds are {world.EDIT_KINDS}")
    if n_captions < 1:
        raise ValueError(f"n_captions must be at least 1, got {n_captions}")
    rows = []
    for i in range(n_captions):
        scene = world.scene_for(split, start + i, n_objects=2)
        rng = np.random.default_rng([start, i])
        for kind in kinds:
            rows.append({**toy_reverse_edit(world.random_edit(rng, scene, kind)).as_row(), "kind": kind})
    return rows


# ------------------------------------------------------------------ real captions, by rule

COLOR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray",
               "grey", "silver", "gold", "beige")
_IN_PLACES = {"garage", "room", "living room", "kitchen", "box", "house", "bag", "basket", "bowl", "cup", "water",
              "park", "forest", "field", "car", "sky"}
_ARTICLE = r"(?:(?:a|an|the|some)\s+)"
_PLACE = re.compile(r"\b(on|in|at|under|near|by)\s+(?:a|an|the)\s+([a-z ]+?)\s*$", re.I)


def _noun(phrase: str) -> str:
    """The head noun of 'the dog', "the dog's", 'a red ball' (the last word, possessive dropped)."""
    return re.sub(r"'s$", "", phrase.strip().split()[-1])


def _place(caption: str) -> tuple[str, str] | None:
    """(preposition, place) of the caption's final location phrase: 'on a couch' -> ('on', 'couch')."""
    m = _PLACE.search(caption.strip().rstrip("."))
    return (m.group(1).lower(), m.group(2).lower()) if m else None


def _color_of(caption: str, noun: str) -> str | None:
    m = re.search(rf"\b({'|'.join(COLOR_WORDS)})\s+{re.escape(noun)}\b", caption, re.I)
    return m.group(1).lower() if m else None


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _capitalised_like(text: str, model: str) -> str:
    return text[:1].upper() + text[1:] if model[:1].isupper() else text


def rule_based_reverse(input_caption: str, instruction: str) -> ReverseEdit:
    """Edited caption and reverse instruction of `instruction` on `input_caption` by rule, for the
    edit kinds of Table 4 and Sec. 8.1's replacement example:

    - colour: "change the dog's color to brown" / "make the dog brown" -> "change the dog's color
      back to white" (the colour the caption names; "back to its original color" when it names none);
    - add: "add a ball next to the dog" -> "remove the ball" (caption "... with a ball");
    - remove: "remove the dog" -> "add the dog back" (caption "An empty couch" when the caption
      ends with the place the object was in);
    - move: "move the dog to the floor" -> "move the dog back to the couch";
    - replace: "make the jacket a rain coat" / "replace the X with a Y" / "turn the X into a Y"
      -> "make the coat a jacket".

    The paper used an LLM (:data:`LLM_REVERSE_PROMPT`); these rules are the transparent stand-in
    that needs no model.  An instruction of none of these forms is a ValueError."""
    cap = input_caption.strip().rstrip(".")
    ins = instruction.strip().rstrip(".")
    low = ins.lower()
    colors = "|".join(COLOR_WORDS)

    m = (re.fullmatch(rf"change the ([a-z ]+?)(?:'s)? colou?r to ({colors})", low)
         or re.fullmatch(rf"make the ([a-z ]+?) ({colors})", low))
    if m:
        phrase, new = m.group(1), m.group(2)
        noun = _noun(phrase)
        old = _color_of(cap, noun)
        if old:
            edited = re.sub(rf"\b{old}\s+{re.escape(noun)}\b", f"{new} {noun}", cap, count=1, flags=re.I)
        else:
            edited = re.sub(rf"\b(a|an|the)\s+{re.escape(noun)}\b",
                            lambda a: f"{_article(new) if a.group(1).lower() != 'the' else 'the'} {new} {noun}",
                            cap, count=1, flags=re.I)
            edited = _capitalised_like(edited, cap)
        possessive = "'s" if "'s" in low else ""
        back = f"back to {old}" if old else "back to its original color"
        return ReverseEdit(input_caption, instruction, edited,
                           f"change the {phrase}{possessive} color {back}", "color")

    m = re.fullmatch(rf"add {_ARTICLE}?([a-z ]+?)(?:\s+(?:next to|on|in|at|under|beside|near)\s+.*)?", low)
    if m:
        obj = m.group(1)
        with_ = obj if obj.endswith("s") else f"{_article(obj)} {obj}"  # "with pillows", "with a ball"
        return ReverseEdit(input_caption, instruction, f"{cap} with {with_}",
                           f"remove the {obj}", "add")

    m = re.fullmatch(rf"remove {_ARTICLE}?([a-z ]+)", low)
    if m:
        obj = m.group(1)
        noun = _noun(obj)
        place = _place(cap)
        starts_with = re.match(rf"(?:a|an|the)\s+(?:[a-z]+\s+)?{re.escape(noun)}\b", cap, re.I)
        if place and starts_with:
            edited = f"An empty {place[1]}"
        else:
            edited = f"{cap} without the {obj}"
        return ReverseEdit(input_caption, instruction, edited, f"add the {obj} back", "remove")

    m = re.fullmatch(rf"move {_ARTICLE}?([a-z ]+?) to (?:the |a )?([a-z ]+)", low)
    if m:
        obj, new_place = m.group(1), m.group(2)
        place = _place(cap)
        if place is None:
            raise ValueError(f"cannot undo {instruction!r}: the caption {input_caption!r} names no place "
                             "('on/in/at the ...') to move back to")
        prep = "in" if new_place in _IN_PLACES else "on"
        edited = _PLACE.sub(f"{prep} the {new_place}", cap)
        return ReverseEdit(input_caption, instruction, edited, f"move the {obj} back to the {place[1]}", "move")

    m = (re.fullmatch(rf"make {_ARTICLE}([a-z ]+?) (?:a|an) ([a-z ]+)", low)
         or re.fullmatch(rf"turn {_ARTICLE}([a-z ]+?) into (?:a|an) ([a-z ]+)", low)
         or re.fullmatch(rf"replace {_ARTICLE}([a-z ]+?) with (?:a|an) ([a-z ]+)", low))
    if m:
        old, new = m.group(1), m.group(2)
        noun = _noun(old)
        # the full phrase of the old object in the caption ("denim jacket" for "the jacket")
        full = re.search(rf"\b((?:[a-z]+\s+)?{re.escape(noun)})\b", cap, re.I)
        old_phrase = full.group(1) if full else old
        if old_phrase.split()[0].lower() in ("a", "an", "the"):
            old_phrase = noun
        edited = re.sub(rf"\b{re.escape(old_phrase)}\b", new, cap, count=1, flags=re.I)
        return ReverseEdit(input_caption, instruction, edited,
                           f"make the {_noun(new)} {_article(old_phrase)} {old_phrase}", "replace")

    raise ValueError(f"no rule for the instruction {instruction!r}; the rule-based generator knows colour "
                     "('change the X color to C', 'make the X C'), add ('add a X ...'), remove ('remove the X'), "
                     "move ('move the X to the P') and replace ('make the X a Y', 'turn the X into a Y', "
                     "'replace the X with a Y'); write the reverse instruction by hand or with the LLM prompt "
                     "LLM_REVERSE_PROMPT")


# ------------------------------------------------------------------ Sec. 8.2 filter


def clip_filter(features, images, captions, threshold: float = CLIP_FILTER_THRESHOLD):
    """Sec. 8.2: keep an image-caption pair when the cosine of its CLIP image and text embeddings
    is at least `threshold` (0.2, as InstructPix2Pix).  `features` is a
    :class:`editnb.features.ClipFeatures`.  Returns (keep: bool array, similarities: float array)."""
    captions = [captions] if isinstance(captions, str) else list(captions)
    images = images if isinstance(images, (list, tuple)) else [images]
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images for {len(captions)} captions: give one caption per image")
    sims = (features.images(images) * features.texts(captions)).sum(-1).cpu().numpy()
    return sims >= threshold, sims


# ------------------------------------------------------------------ training data, guarded


class GroundTruthAccessError(RuntimeError):
    """Raised when UIP2P code touches the edited image (or its mask): ERC trains without them."""


_FORBIDDEN = ("edited_image", "target", "mask", "changed", "reverse")


class GuardedEdit:
    """A ToyWorld edit as UIP2P may see it: the input image, the captions and the two instructions.
    Anything that would reveal the edited image (``edited_image``, ``target``, ``mask``,
    ``changed``, the reversed edit) raises :class:`GroundTruthAccessError`."""

    __slots__ = ("_edit",)

    def __init__(self, edit: world.Edit):
        object.__setattr__(self, "_edit", edit)

    def __getattr__(self, name):
        if name in _FORBIDDEN:
            raise GroundTruthAccessError(f"UIP2P read '{name}' of a training edit: the edited image is ground "
                                         "truth that the Edit Reversibility Constraint must not see")
        raise AttributeError(f"a guarded edit offers kind, source_image(), input_caption, instruction, edited_caption "
                             f"and reverse_instruction, not {name!r}")

    def __setattr__(self, name, value):
        raise AttributeError("a guarded edit is read-only")

    @property
    def kind(self) -> str:
        return self._edit.kind

    def source_image(self, resolution: int = world.RESOLUTION) -> np.ndarray:
        return world.render(self._edit.source, resolution)

    @property
    def input_caption(self) -> str:
        return self._edit.source_caption

    @property
    def instruction(self) -> str:
        return self._edit.instruction

    @property
    def edited_caption(self) -> str:
        return self._edit.target_caption  # a caption is text, which UIP2P's data has (Table 4)

    @property
    def reverse_instruction(self) -> str:
        return self._edit.reverse_instruction


class ReverseInstructionDataset(torch.utils.data.Dataset):
    """ToyWorld edits of a split as UIP2P's training data: item i is a :class:`GuardedEdit` of
    ``world.edit_for(split, start + i)`` (the same edits that InstructPix2Pix's triplets come from,
    minus the edited image)."""

    def __init__(self, split: str = "train", size: int = 9_000_000, start: int = 0):
        world._seed(split, start)  # validates the split
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.split, self.size, self.start = split, size, start

    def __len__(self):
        return self.size

    def __getitem__(self, i) -> GuardedEdit:
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for a dataset of {self.size} edits")
        return GuardedEdit(world.edit_for(self.split, self.start + i))


@dataclass
class ReversibleBatch:
    """A UIP2P batch: input images (B, 3, H, W) in [-1, 1] and the four texts per item."""

    images: torch.Tensor
    input_captions: list[str]
    instructions: list[str]
    edited_captions: list[str]
    reverse_instructions: list[str]
    kinds: list[str]


def batch_of(items) -> ReversibleBatch:
    items = list(items)
    return ReversibleBatch(torch.stack([to_tensor(e.source_image()) for e in items]),
                           [e.input_caption for e in items], [e.instruction for e in items],
                           [e.edited_caption for e in items], [e.reverse_instruction for e in items],
                           [e.kind for e in items])


def reversible_batch(step: int, batch_size: int, seed: int = 0) -> ReversibleBatch:
    """The batch of training step `step`: the same edit indices as InstructPix2Pix's
    :func:`editnb.toy.tasks.edit_batch` (so the matched baseline sees the same edits), read
    through the guard."""
    data = ReverseInstructionDataset("train")
    start = (seed * 7919 + step * batch_size) % 9_000_000
    return batch_of(data[start + i] for i in range(batch_size))
