"""Benchmarks in the PIE-Bench format, and the ToyWorld benchmarks written in it.

PIE-Bench (Ju et al. 2024) ships ``mapping_file.json`` and ``annotation_images/``; each entry has
``image_path``, ``original_prompt``, ``editing_prompt`` (brackets mark the changed words),
``editing_instruction``, ``editing_type_id`` ("0"-"9"), ``blended_word`` ("src tgt") and ``mask``,
run-length pairs [start, length, ...] over the flattened image.  :func:`load_pie_bench` reads that
format (a copy of the real benchmark or ``data/bench/toy-pie``) and :func:`write_toy_pie` writes
ToyWorld edits in it.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..images import load_image
from ..runtime import data_dir
from ..toy import world

EDITING_TYPES = {
    "0": "random editing", "1": "change object", "2": "add object", "3": "delete object",
    "4": "change attribute content", "5": "change attribute pose", "6": "change attribute color",
    "7": "change attribute material", "8": "change background", "9": "change style",
}
#: ToyWorld edit kinds that PIE-Bench's editing types can express.
TOY_TYPES = {"reshape": "1", "add": "2", "remove": "3", "recolor": "6", "background": "8"}
TYPE_DIRS = {"1": "1_change_object", "2": "2_add_object", "3": "3_delete_object",
             "6": "6_change_attribute_color", "8": "8_change_background"}


def mask_decode(encoded, shape=(512, 512)) -> np.ndarray:
    """Decode a PIE-Bench run-length mask as the benchmark's evaluation does: pairs (start, length)
    over the row-major flattened image, and the one-pixel frame of the image set to 1 ("to avoid
    annotation errors in boundary").  A run that spills over the image's end is clipped, as the
    official script clips it; one that starts past the end or is longer than the whole image cannot
    belong to a mask of this image (another size, or corrupt data) and is refused."""
    h, w = shape
    flat = np.zeros(h * w, bool)
    enc = list(encoded)
    if len(enc) % 2:
        raise ValueError(f"a run-length mask has (start, length) pairs; got {len(enc)} numbers")
    for start, length in zip(enc[0::2], enc[1::2]):
        if start < 0 or length < 0:
            raise ValueError(f"negative run ({start}, {length}) in the mask")
        if start >= h * w or length > h * w:  # no mask of this image encodes such a run
            raise ValueError(f"the run ({start}, {length}) starts past or is longer than the {h}x{w} image's {h * w} "
                             "pixels: the mask was encoded for another image size, or is corrupt")
        flat[start:start + min(length, h * w - start)] = True  # a run spilling over the end: clipped, as officially
    mask = flat.reshape(h, w)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def mask_encode(mask: np.ndarray) -> list[int]:
    """Run-length pairs [start, length, ...] of a boolean mask (row-major), PIE-Bench's format."""
    flat = np.asarray(mask, bool).ravel()
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    return [int(v) for s, e in zip(starts, ends) for v in (s, e - s)]


def strip_brackets(prompt: str) -> str:
    return re.sub(r"\s+", " ", prompt.replace("[", "").replace("]", "")).strip()


@dataclass
class BenchItem:
    """One benchmark entry with everything a method may need."""

    id: str
    image: Image.Image
    source_prompt: str
    target_prompt: str
    instruction: str
    editing_type: str
    blend_words: tuple[str, str]
    mask: np.ndarray
    original_prompt: str = ""
    editing_prompt: str = ""
    target_image: Image.Image | None = None  # ground truth, where the benchmark has one (MagicBrush)

    @property
    def editing_type_name(self) -> str:
        return EDITING_TYPES.get(self.editing_type, "unknown")


#: the fields every PIE-Bench entry has (``editing_instruction`` and ``blended_word`` may be empty)
REQUIRED = ("image_path", "original_prompt", "editing_prompt", "editing_type_id", "mask")


def load_pie_bench(root: str | Path, types=None) -> list[BenchItem]:
    """Read a benchmark in the PIE-Bench format (``root/mapping_file.json`` and
    ``root/annotation_images/``), optionally only some editing types ("0"-"9").

    ``blended_word`` is read as the official PIE-Bench script reads it: split on spaces, the first
    word for the source and the second for the target (one word serves both; further words are
    ignored)."""
    root = Path(root)
    mapping = root / "mapping_file.json"
    if root.is_file():
        raise ValueError(f"{root} is a file; the benchmark is the FOLDER that holds mapping_file.json and "
                         f"annotation_images/" + (f": pass {root.parent}" if root.name == "mapping_file.json" else ""))
    if not root.is_dir():
        raise ValueError(_missing_root_message(root))
    if not mapping.exists():
        raise ValueError(f"{root} is not a PIE-Bench folder: {mapping.name} is missing "
                         "(expected mapping_file.json and annotation_images/)")
    try:
        entries = json.loads(mapping.read_text(), object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"{mapping} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                         "fix the file or write it again (editnb bench toy-pie)") from None
    except ValueError as e:  # the duplicate-key hook
        raise ValueError(f"{mapping}: {e}") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{mapping} must map item ids to entries (a JSON object), got a {type(entries).__name__}")
    wanted = None if types is None else {str(t) for t in types}
    bad_types = sorted((wanted or set()) - set(EDITING_TYPES))
    if bad_types:
        raise ValueError(f"unknown editing types {bad_types}; PIE-Bench's are 0-9: {EDITING_TYPES}")
    items = []
    for key, e in sorted(entries.items()):
        if not ITEM_ID.fullmatch(key):  # ids name the run's files: "../x" would write outside the run folder
            raise ValueError(f"item id {key!r} of {mapping} is not a plain file name (letters, digits, '.', '_', "
                             "'-'; not starting with '.'); rename the item")
        lacking = [f for f in REQUIRED if f not in e] if isinstance(e, dict) else list(REQUIRED)
        if lacking:
            raise ValueError(f"item {key} of {mapping} lacks {lacking}; every PIE-Bench entry has {list(REQUIRED)}")
        if wanted is not None and str(e["editing_type_id"]) not in wanted:
            continue
        path = root / "annotation_images" / e["image_path"]
        if not path.exists():
            raise ValueError(f"item {key}: image {path} is missing")
        image = load_image(path)  # 16-bit greyscale and palette images converted properly
        words = str(e.get("blended_word") or "").split()
        blend = (words[0], words[1 if len(words) > 1 else 0]) if words else ("", "")
        items.append(BenchItem(
            id=key, image=image, source_prompt=strip_brackets(e["original_prompt"]),
            target_prompt=strip_brackets(e["editing_prompt"]), instruction=e.get("editing_instruction", ""),
            editing_type=str(e["editing_type_id"]), blend_words=blend,
            mask=_item_mask(e["mask"], (image.height, image.width), key, mapping),
            original_prompt=e["original_prompt"], editing_prompt=e["editing_prompt"]))
    if wanted is not None and not items:
        present = sorted({str(e["editing_type_id"]) for e in entries.values()})
        raise ValueError(f"no item of {root} has editing type {sorted(wanted)}; its types are {present}")
    return items


#: what an item id may be: a plain file name (PIE-Bench's are 12 digits)
ITEM_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def _refuse_duplicate_keys(pairs):
    """json object hook: a key given twice (the last would silently win) is an error."""
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"the key(s) {twice[:5]} appear more than once in one object, and the last would silently "
                         "win; each item id (and each field of an item) must be unique")
    return dict(pairs)


def _item_mask(encoded, shape, key: str, mapping: Path) -> np.ndarray:
    try:
        return mask_decode(encoded, shape)
    except (ValueError, TypeError) as e:
        raise ValueError(f"item {key} of {mapping}: its mask: {e}") from None


def _missing_root_message(root: Path) -> str:
    msg = f"the benchmark folder {str(root)!r} does not exist"
    if not root.is_absolute():
        msg += f" (relative paths start at the current folder, {Path.cwd()})"
    shipped = data_dir() / "bench" / root.name
    if shipped.is_dir() and shipped.resolve() != root.resolve():
        msg += f"; the shipped benchmark of that name is {shipped}: pass that path"
    return msg


def bracket_changes(source: str, target: str) -> tuple[str, str]:
    """Mark the words that differ between two prompts with brackets, PIE-Bench style."""
    a, b = source.split(), target.split()
    out_a, out_b = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out_a += a[i1:i2]
            out_b += b[j1:j2]
        else:
            if i2 > i1:
                out_a.append("[" + " ".join(a[i1:i2]) + "]")
            if j2 > j1:
                out_b.append("[" + " ".join(b[j1:j2]) + "]")
    return " ".join(out_a), " ".join(out_b)


def _blended_word(e: world.Edit) -> str:
    src, tgt = e.blend_words
    # PIE-Bench always gives two words; an added or deleted object names itself on both sides
    return f"{src or tgt} {tgt or src}"


def write_toy_pie(out: str | Path, per_type: int = 20, seed: int = 0) -> Path:
    """Write ToyWorld edits as a PIE-Bench folder: ``per_type`` items for each editing type
    ToyWorld can express (change object, add, delete, change colour, change background), drawn
    from the test split starting at index ``seed * 100_000``.  Deterministic."""
    out = Path(out)
    (out / "annotation_images").mkdir(parents=True, exist_ok=True)
    mapping = {}
    for kind, type_id in TOY_TYPES.items():
        folder = out / "annotation_images" / TYPE_DIRS[type_id]
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_type):
            e = world.edit_for("test", seed * 100_000 + k, kind)
            key = f"{type_id}{k:05d}"
            rel = f"{TYPE_DIRS[type_id]}/{key}.png"
            Image.fromarray(e.source_image()).save(out / "annotation_images" / rel)
            original, editing = bracket_changes(e.source_caption, e.target_caption)
            mapping[key] = {
                "image_path": rel,
                "original_prompt": original,
                "editing_prompt": editing,
                "editing_instruction": e.instruction,
                "editing_type_id": type_id,
                "blended_word": _blended_word(e),
                "mask": mask_encode(e.mask()),
            }
    (out / "mapping_file.json").write_text(json.dumps(mapping, indent=1))
    (out / "README.md").write_text(
        "# toy-pie\n\nToyWorld edits in the PIE-Bench format (mapping_file.json + annotation_images/), "
        f"{per_type} items for each editing type ToyWorld expresses: "
        + ", ".join(f"{t} {EDITING_TYPES[t]}" for t in TOY_TYPES.values())
        + f".\n\nGenerated by `editnb bench toy-pie --out {out.name} --per-type {per_type} --seed {seed}` "
        "from the ToyWorld test split; masks are exact (every pixel the edit changes), run-length "
        "encoded over the 64x64 image. The loader applies PIE-Bench's decoding, which also marks the "
        "one-pixel image frame as edited.\n")
    return out


def write_toy_magicbrush(out: str | Path, n_single: int = 100, n_multi: int = 30, turns: int = 3,
                         seed: int = 0) -> Path:
    """A MagicBrush-style split of ToyWorld edits: single-turn (source, instruction, target,
    mask) and multi-turn instruction chains (each turn edits the previous turn's target)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    single = []
    for k in range(n_single):
        e = world.edit_for("test", 500_000 + seed * 100_000 + k)
        single.append(_turn(out, f"s{k:04d}", 0, e))
    multi = []
    for k in range(n_multi):
        scene = world.random_scene(rng)
        chain = []
        for t in range(turns):
            e = world.random_edit(rng, scene)
            chain.append(_turn(out, f"m{k:04d}", t, e))
            scene = e.target
        multi.append({"id": f"m{k:04d}", "turns": chain})
    (out / "single_turn.json").write_text(json.dumps(single, indent=1))
    (out / "multi_turn.json").write_text(json.dumps(multi, indent=1))
    return out


def _turn(out: Path, key: str, t: int, e: world.Edit) -> dict:
    src, tgt = f"images/{key}_{t}_source.png", f"images/{key}_{t}_target.png"
    Image.fromarray(e.source_image()).save(out / src)
    Image.fromarray(e.edited_image()).save(out / tgt)
    return {"id": f"{key}_{t}", "turn": t, "source": src, "target": tgt, "instruction": e.instruction,
            "reverse_instruction": e.reverse_instruction, "kind": e.kind,
            "source_caption": e.source_caption, "target_caption": e.target_caption,
            "local_caption": e.target_caption, "mask": mask_encode(e.mask())}


def load_toy_magicbrush(root: str | Path, split: str = "single") -> list[BenchItem]:
    """Single-turn items (or every turn of the chains, ``split="multi"``) as BenchItems."""
    root = Path(root)
    name = {"single": "single_turn.json", "multi": "multi_turn.json"}.get(split)
    if name is None:
        raise ValueError(f"split must be 'single' or 'multi', got {split!r}")
    records = json.loads((root / name).read_text())
    turns = records if split == "single" else [t for chain in records for t in chain["turns"]]
    items = []
    for r in turns:
        with Image.open(root / r["source"]) as im:
            image = im.convert("RGB")
        with Image.open(root / r["target"]) as im:
            target = im.convert("RGB")
        flat = np.zeros(image.width * image.height, bool)
        enc = r["mask"]
        for s, n in zip(enc[0::2], enc[1::2]):
            flat[s:s + n] = True
        items.append(BenchItem(r["id"], image, r["source_caption"], r["target_caption"], r["instruction"],
                               r["kind"], ("", ""), flat.reshape(image.height, image.width), target_image=target))
    return items
