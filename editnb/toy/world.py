"""ToyWorld: a procedurally generated world of coloured shapes.

A scene is a few objects (at most one of each shape, each of its own colour, each in its own cell
of a 3x3 grid) on a plain background.  Because shapes and colours are unique within a scene, an
instruction such as "make the circle blue" always names exactly one object, and the oracle
(:mod:`editnb.toy.oracle`) can read any image back into objects without ambiguity.

Everything is a pure function of a seed: ``scene_for("train", 17)`` is the same scene on every
machine, and :func:`render` draws it anti-aliased (4x supersampling) together with an exact mask
per object.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 190),
}
BACKGROUNDS = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
SIZES = {"small": 7.0, "large": 9.5}  # half extent in pixels at 64x64
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
EDIT_KINDS = ("recolor", "reshape", "add", "remove", "move", "background")
RESOLUTION = 64
_SUPERSAMPLE = 4
GRID = 3

#: Seed offsets that make the splits disjoint: index i of a split is scene seed OFFSET + i.
SPLIT_OFFSETS = {"train": 0, "val": 10_000_000, "test": 20_000_000}


def cell_name(cell: tuple[int, int]) -> str:
    """'top left', 'center', 'bottom right', ... for a (row, col) grid cell."""
    row, col = cell
    if (row, col) == (1, 1):
        return "center"
    if row == 1:
        return f"middle {COLS[col]}"
    if col == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLS[col]}"


@dataclass(frozen=True)
class ToyObject:
    """One shape: its kind, colour, grid cell (row, col), size name and sub-pixel jitter."""

    shape: str
    color: str
    cell: tuple[int, int]
    size: str = "large"
    offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; ToyWorld shapes are {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; ToyWorld colours are {tuple(COLORS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; ToyWorld sizes are {tuple(SIZES)}")
        if not all(0 <= c < GRID for c in self.cell):
            raise ValueError(f"cell {self.cell} is outside the {GRID}x{GRID} grid")

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.shape}"

    def center(self, resolution: int = RESOLUTION) -> tuple[float, float]:
        """Centre (x, y) in pixels of an image of the given resolution."""
        step = resolution / GRID
        row, col = self.cell
        scale = resolution / RESOLUTION
        return ((col + 0.5) * step + self.offset[0] * scale, (row + 0.5) * step + self.offset[1] * scale)


@dataclass(frozen=True)
class Scene:
    """A background colour and up to three objects with distinct shapes, colours and cells."""

    objects: tuple[ToyObject, ...]
    background: str = "white"

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; choose from {tuple(BACKGROUNDS)}")
        for attr in ("shape", "color", "cell"):
            values = [getattr(o, attr) for o in self.objects]
            if len(set(values)) != len(values):
                raise ValueError(f"two objects share a {attr} in {self.objects}; ToyWorld keeps them distinct")
        # canonical order (left to right, then top to bottom) so equal scenes compare equal
        ordered = tuple(sorted(self.objects, key=lambda o: (o.cell[1], o.cell[0])))
        object.__setattr__(self, "objects", ordered)

    @property
    def caption(self) -> str:
        """'a red circle and a blue square on a white background' (objects left to right)."""
        phrases = [f"a {o.phrase}" for o in self.objects]
        if not phrases:
            body = "nothing"
        elif len(phrases) == 1:
            body = phrases[0]
        else:
            body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return f"{body} on a {self.background} background"

    def find(self, shape: str) -> ToyObject:
        for o in self.objects:
            if o.shape == shape:
                return o
        raise KeyError(f"no {shape} in scene {self.caption!r}")

    def without(self, obj: ToyObject) -> "Scene":
        return Scene(tuple(o for o in self.objects if o != obj), self.background)

    def with_object(self, obj: ToyObject) -> "Scene":
        return Scene(self.objects + (obj,), self.background)

    def replaced(self, old: ToyObject, new: ToyObject) -> "Scene":
        return Scene(tuple(new if o == old else o for o in self.objects), self.background)

    def free_cells(self) -> list[tuple[int, int]]:
        used = {o.cell for o in self.objects}
        return [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in used]


# ---------------------------------------------------------------- rendering


def _shape_polygon_mask(obj: ToyObject, shape: str, resolution: int) -> np.ndarray:
    """Coverage in [0, 1] of one object at `resolution`, by 4x supersampling."""
    ss = resolution * _SUPERSAMPLE
    cx, cy = obj.center(resolution)
    h = SIZES[obj.size] * resolution / RESOLUTION
    cx, cy, h = cx * _SUPERSAMPLE, cy * _SUPERSAMPLE, h * _SUPERSAMPLE
    canvas = Image.new("L", (ss, ss), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=255)
    elif shape == "square":
        s = h * 0.88  # a square of the same half extent looks much bigger than the circle
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=255)
    else:  # triangle, apex up
        draw.polygon([(cx, cy - h), (cx - h, cy + h * 0.85), (cx + h, cy + h * 0.85)], fill=255)
    small = canvas.reduce(_SUPERSAMPLE)  # box filter: exact area coverage
    return np.asarray(small, dtype=np.float32) / 255.0


@lru_cache(maxsize=4096)
def _coverage(obj: ToyObject, resolution: int) -> np.ndarray:
    cov = _shape_polygon_mask(obj, obj.shape, resolution)
    cov.setflags(write=False)
    return cov


def render(scene: Scene, resolution: int = RESOLUTION) -> np.ndarray:
    """Draw a scene: uint8 array (H, W, 3).  Objects never overlap, so order does not matter."""
    img = np.empty((resolution, resolution, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        a = _coverage(obj, resolution)[..., None]
        img = img * (1 - a) + np.asarray(COLORS[obj.color], np.float32) * a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def object_mask(obj: ToyObject, resolution: int = RESOLUTION) -> np.ndarray:
    """Exact boolean mask of an object: pixels more than half covered by it."""
    return _coverage(obj, resolution) >= 0.5


def object_masks(scene: Scene, resolution: int = RESOLUTION) -> dict[str, np.ndarray]:
    """Mask per object, keyed by its shape name (unique in a scene)."""
    return {o.shape: object_mask(o, resolution) for o in scene.objects}


def foreground_mask(scene: Scene, resolution: int = RESOLUTION) -> np.ndarray:
    mask = np.zeros((resolution, resolution), bool)
    for o in scene.objects:
        mask |= _coverage(o, resolution) > 0
    return mask


# ---------------------------------------------------------------- sampling


def random_object(rng: np.random.Generator, shape: str, color: str, cell: tuple[int, int]) -> ToyObject:
    size = str(rng.choice(list(SIZES)))
    offset = tuple(float(x) for x in np.round(rng.uniform(-1.5, 1.5, size=2), 2))
    return ToyObject(shape, color, cell, size, offset)


def random_scene(rng: np.random.Generator, n_objects: int | None = None, background: str | None = None) -> Scene:
    """A random scene with 1-3 objects (distinct shapes, colours and cells)."""
    n = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25])) if n_objects is None else n_objects
    if not 0 <= n <= len(SHAPES):
        raise ValueError(f"n_objects must be between 0 and {len(SHAPES)}, got {n}")
    shapes = rng.choice(SHAPES, size=n, replace=False)
    colors = rng.choice(list(COLORS), size=n, replace=False)
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    objs = tuple(random_object(rng, str(s), str(c), divmod(int(k), GRID)) for s, c, k in zip(shapes, colors, cells))
    bg = background or str(rng.choice(list(BACKGROUNDS)))
    return Scene(objs, bg)


def scene_for(split: str, index: int, n_objects: int | None = None) -> Scene:
    """The `index`-th scene of a split (deterministic, disjoint across splits)."""
    return random_scene(np.random.default_rng(_seed(split, index)), n_objects)


def _seed(split: str, index: int) -> int:
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; use one of {tuple(SPLIT_OFFSETS)}")
    if not 0 <= index < 10_000_000:
        raise ValueError(f"index {index} is out of range for a split (0 <= index < 10_000_000)")
    return SPLIT_OFFSETS[split] + index


# ---------------------------------------------------------------- edits


@dataclass(frozen=True)
class Edit:
    """An edit of a scene, with everything the papers' datasets carry.

    ``blend_words`` is ``(source word, target word)`` as in PIE-Bench's ``blended_word``: the
    noun of the edited object in each caption ("circle", "triangle"; "background" for a background
    edit); a side is ``""`` when the object does not exist there (an added object has no source
    word).
    """

    kind: str
    source: Scene
    target: Scene
    instruction: str
    reverse_instruction: str
    blend_words: tuple[str, str]
    changed: tuple[ToyObject | None, ToyObject | None] = field(default=(None, None))

    @property
    def source_caption(self) -> str:
        return self.source.caption

    @property
    def target_caption(self) -> str:
        return self.target.caption

    def source_image(self, resolution: int = RESOLUTION) -> np.ndarray:
        return render(self.source, resolution)

    def edited_image(self, resolution: int = RESOLUTION) -> np.ndarray:
        return render(self.target, resolution)

    def mask(self, resolution: int = RESOLUTION) -> np.ndarray:
        """Exact edit mask: every pixel the changed object(s) touch before or after (anti-aliased
        rim included, so no changed pixel is outside it), or the background for a background edit."""
        if self.kind == "background":  # every pixel the background shows through, rims included
            interior = np.zeros((resolution, resolution), bool)
            for o in self.source.objects:
                interior |= _coverage(o, resolution) >= 1.0
            return ~interior
        m = np.zeros((resolution, resolution), bool)
        for o in self.changed:
            if o is not None:
                m |= _coverage(o, resolution) > 0
        return m

    def reverse(self) -> "Edit":
        """The edit that undoes this one (target -> source, with the reverse instruction)."""
        kind = {"add": "remove", "remove": "add"}.get(self.kind, self.kind)
        return Edit(kind, self.target, self.source, self.reverse_instruction, self.instruction,
                    (self.blend_words[1], self.blend_words[0]), (self.changed[1], self.changed[0]))


def recolor(scene: Scene, shape: str, color: str) -> Edit:
    old = scene.find(shape)
    if color == old.color or color in {o.color for o in scene.objects}:
        raise ValueError(f"cannot recolour the {shape} {color}: that colour is already in the scene")
    new = replace(old, color=color)
    # blend words name the edited object (PIE-Bench's blended_word; P2P's local blend reads the
    # noun's attention, which localises the object better than the colour word's)
    return Edit("recolor", scene, scene.replaced(old, new), f"make the {shape} {color}",
                f"make the {shape} {old.color} again", (shape, shape), (old, new))


def reshape(scene: Scene, shape: str, new_shape: str) -> Edit:
    old = scene.find(shape)
    if new_shape in {o.shape for o in scene.objects}:
        raise ValueError(f"cannot turn the {shape} into a {new_shape}: the scene already has one")
    new = replace(old, shape=new_shape)
    return Edit("reshape", scene, scene.replaced(old, new), f"turn the {old.color} {shape} into a {new_shape}",
                f"turn the {old.color} {new_shape} back into a {shape}", (shape, new_shape), (old, new))


def add(scene: Scene, obj: ToyObject) -> Edit:
    target = scene.with_object(obj)  # validates uniqueness
    where = cell_name(obj.cell)
    return Edit("add", scene, target, f"add a {obj.phrase} at the {where}", f"remove the {obj.phrase}",
                ("", obj.shape), (None, obj))


def remove(scene: Scene, shape: str) -> Edit:
    old = scene.find(shape)
    where = cell_name(old.cell)
    return Edit("remove", scene, scene.without(old), f"remove the {old.phrase}",
                f"add a {old.phrase} at the {where}", (shape, ""), (old, None))


def move(scene: Scene, shape: str, cell: tuple[int, int]) -> Edit:
    old = scene.find(shape)
    if cell not in scene.free_cells():
        raise ValueError(f"cell {cell} is not free in {scene.caption!r}")
    new = replace(old, cell=cell)
    return Edit("move", scene, scene.replaced(old, new), f"move the {shape} to the {cell_name(cell)}",
                f"move the {shape} back to the {cell_name(old.cell)}", (shape, shape), (old, new))


def change_background(scene: Scene, background: str) -> Edit:
    if background == scene.background:
        raise ValueError(f"the background is already {background}")
    target = Scene(scene.objects, background)
    return Edit("background", scene, target, f"change the background to {background}",
                f"change the background back to {scene.background}", ("background", "background"))


def random_edit(rng: np.random.Generator, scene: Scene, kind: str | None = None) -> Edit:
    """A random edit of `scene` of the given kind (or any kind the scene allows)."""
    possible = [k for k in EDIT_KINDS if _edit_possible(scene, k)]
    if kind is None:
        kind = str(rng.choice(possible))
    elif kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; choose from {EDIT_KINDS}")
    elif kind not in possible:
        raise ValueError(f"a {kind} edit is impossible on {scene.caption!r}")
    objs = scene.objects
    if kind == "background":
        return change_background(scene, str(rng.choice([b for b in BACKGROUNDS if b != scene.background])))
    if kind == "add":
        shape = str(rng.choice([s for s in SHAPES if s not in {o.shape for o in objs}]))
        color = str(rng.choice([c for c in COLORS if c not in {o.color for o in objs}]))
        free = scene.free_cells()
        cell = free[int(rng.integers(len(free)))]
        return add(scene, random_object(rng, shape, color, cell))
    obj = objs[int(rng.integers(len(objs)))]
    if kind == "recolor":
        return recolor(scene, obj.shape, str(rng.choice([c for c in COLORS if c not in {o.color for o in objs}])))
    if kind == "reshape":
        return reshape(scene, obj.shape, str(rng.choice([s for s in SHAPES if s not in {o.shape for o in objs}])))
    if kind == "remove":
        return remove(scene, obj.shape)
    free = scene.free_cells()
    return move(scene, obj.shape, free[int(rng.integers(len(free)))])


def _edit_possible(scene: Scene, kind: str) -> bool:
    n = len(scene.objects)
    return {
        "recolor": n >= 1,
        "reshape": 1 <= n < len(SHAPES),
        "add": n < len(SHAPES),
        "remove": n >= 1,
        "move": n >= 1,
        "background": True,
    }[kind]


def edit_for(split: str, index: int, kind: str | None = None) -> Edit:
    """The `index`-th edit of a split (deterministic; the source scene has 1-3 objects)."""
    rng = np.random.default_rng(_seed(split, index) + 555_555_555)
    while True:
        scene = random_scene(rng)
        if kind is None or _edit_possible(scene, kind):
            return random_edit(rng, scene, kind)


def parse_caption(caption: str) -> Scene | None:
    """Read a ToyWorld caption back into the (colour, shape) pairs and background it names.

    Positions are not in captions, so objects get placeholder cells; compare with
    :func:`scene_signature`.  Returns None if the text is not a ToyWorld caption.
    """
    words = caption.replace(",", " ").split()
    if len(words) < 4 or words[-4:-2] != ["on", "a"] or words[-1] != "background":
        return None
    bg = words[-2]
    objs = []
    i = 0
    while i + 1 < len(words) - 4:
        if words[i] in COLORS and words[i + 1] in SHAPES:
            objs.append((words[i], words[i + 1]))
            i += 2
        else:
            i += 1
    try:
        return Scene(tuple(ToyObject(s, c, divmod(k, GRID)) for k, (c, s) in enumerate(objs)), bg)
    except ValueError:
        return None


def scene_signature(scene: Scene, positions: bool = False) -> tuple:
    """What a caption pins down: the background and the set of (colour, shape[, cell])."""
    items = [(o.color, o.shape, o.cell) if positions else (o.color, o.shape) for o in scene.objects]
    return scene.background, tuple(sorted(items))
