"""What an attention controller sees (:class:`Site`), what it asks for (:meth:`Controller.wants`), and
which rows of the batch are which (:func:`layout_of`).

A controller declares, per attention call, what it needs:

- ``PROBS``: read or change the probability matrix (the processor materialises it: softmax, bmm);
- ``BIAS``: add a bias to the logits (it goes into ``scaled_dot_product_attention`` as a mask);
- ``OUTPUT``: read the attention module's output (features);
- ``IMAGE_PROBS``: read or change the probabilities of an IP-Adapter's image cross-attention (its
  decoupled attention over the image tokens, Ye et al. 2023), as ViMAEdit's runner replaces them.

Where no controller needs anything, the observing processor runs the layer's own processor
unchanged, so observation costs nothing where nothing is observed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..layout import BatchLayout

PROBS, BIAS, OUTPUT, IMAGE_PROBS = "probs", "bias", "output", "image_probs"
NOTHING: frozenset = frozenset()

# diffusers' pipelines put the unconditional branch first: [uncond, cond]
CFG = ("uncond", "cond")
# InstructPix2Pix: [text+image, image only, none]
IP2P = ("cond", "image", "uncond")


@dataclass(frozen=True)
class Site:
    """Where an attention map comes from."""

    layer: str        # processor name in unet.attn_processors
    place: str        # "down", "mid" or "up"
    kind: str         # "self" or "cross"
    resolution: int   # the level's side at the model's own sample size (SD 1.5: 64, 32, 16, 8): it names
                      # the level at any generation size, as the methods choose levels by it
    heads: int
    step: int         # denoising step (one UNet call = one step)
    layout: BatchLayout | None = None  # as published by the sampling loop; None: not published
    shape: tuple[int, int] | None = None  # the map's (height, width) in this call; None: square, resolution

    @property
    def hw(self) -> tuple[int, int]:
        """The map's (height, width): 16x24 at SD's 16 level for a 512x768 generation."""
        return self.shape or (self.resolution, self.resolution)

    def square_side(self, what: str) -> int:
        """The side of a square map, or a ValueError naming `what` needs one."""
        h, w = self.hw
        if h != w:
            raise ValueError(f"{what} reads square attention maps, and this generation's are {h}x{w} at "
                             f"the {self.resolution} level; generate or edit at the model's square size")
        return h


def layout_of(site: Site, batch: int, guess=CFG) -> BatchLayout:
    """The layout of a batch of `batch` rows at `site`: the one the sampling loop published, or,
    when none was (or it does not fit this batch), the guess from diffusers' pipeline order:
    the `guess` guidance branches in equal parts when `batch` divides, else one conditional branch."""
    if site.layout is not None and site.layout.size == batch:
        return site.layout
    if batch % len(guess) == 0:
        return BatchLayout.plain(batch // len(guess), guess)
    return BatchLayout.plain(batch, ("cond",))


def as_index(rows: list[int]):
    """A slice for consecutive rows (a view, no copy), else the list."""
    if rows and rows == list(range(rows[0], rows[-1] + 1)):
        return slice(rows[0], rows[-1] + 1)
    return rows


class Controller:
    """Base controller: counts attention calls (steps) and leaves maps unchanged.

    Subclasses override :meth:`forward` (gets the probabilities (batch*heads, queries, keys) and the
    :class:`Site`, returns them changed or not), :meth:`logit_bias` (an additive bias for the logits:
    LIME's regularisation), :meth:`observe_output` (the attention module's output: LIME's features),
    :meth:`image_forward` (an IP-Adapter's image-attention probabilities, as :meth:`forward`),
    and should override :meth:`wants` to say where they need them.  By default a controller wants
    what it overrides, everywhere.
    """

    def __init__(self):
        self.step = 0
        self._calls = 0
        self.n_layers = 0

    def wants(self, site: Site) -> frozenset:
        """What this controller needs at `site`: a subset of {PROBS, BIAS, OUTPUT}."""
        return _overridden(type(self))

    def __call__(self, probs, site):
        out = self.forward(probs, site)
        self.tick()
        return out

    def tick(self) -> None:
        """One attention call is done: after `n_layers` calls, one step is."""
        self._calls += 1
        if self.n_layers and self._calls % self.n_layers == 0:
            self.step += 1

    def forward(self, probs, site):
        return probs

    def logit_bias(self, site, batch_heads: int, queries: int, keys: int, dtype, device):
        """An additive bias for the logits, broadcastable to (batch*heads, queries, keys), or None."""
        return None

    def image_forward(self, probs, site):
        """The IP-Adapter image cross-attention's probabilities (batch*heads, queries, image tokens), changed or not."""
        return probs

    def observe_output(self, out, site) -> None:
        """Sees the attention module's output (batch, queries, channels); for feature capture."""

    def reset(self):
        self.step, self._calls = 0, 0


_DEFAULT_NEEDS: dict[type, frozenset] = {}


def _overridden(cls) -> frozenset:
    if cls not in _DEFAULT_NEEDS:
        _DEFAULT_NEEDS[cls] = frozenset(need for need, method in ((PROBS, "forward"), (BIAS, "logit_bias"),
                                                                    (OUTPUT, "observe_output"),
                                                                    (IMAGE_PROBS, "image_forward"))
                                        if getattr(cls, method) is not getattr(Controller, method))
    return _DEFAULT_NEEDS[cls]


class Chain(Controller):
    """Several controllers as one: needs are the union, biases add up, probability edits apply in
    order, each controller sees only the calls where it asked.  E.g.
    ``Chain(LimeRegularizer(...), AttentionStore())`` records the maps AFTER regularisation.

    By default the chain counts the steps for all of them; ``own_steps=True`` lets each keep its own
    count, as :func:`~editnb.attention.processor.attach` does for controllers attached one inside
    another (an outer store may have recorded earlier samplings; an inner editor's schedule starts
    at its own step 0)."""

    def __init__(self, *controllers: Controller, own_steps: bool = False):
        super().__init__()
        self.controllers, self.own_steps = controllers, own_steps

    def _at(self, c: Controller, site: Site) -> Site:
        """The site as controller `c` sees it: with its own step, or the chain's (synchronised)."""
        if self.own_steps:
            return replace(site, step=c.step)
        c.step = self.step
        return site

    def wants(self, site):
        needs = NOTHING
        for c in self.controllers:
            needs = needs | c.wants(self._at(c, site))
        return needs

    def forward(self, probs, site):
        for c in self.controllers:
            here = self._at(c, site)
            if PROBS in c.wants(here):
                probs = c.forward(probs, here)
        return probs

    def image_forward(self, probs, site):
        for c in self.controllers:
            here = self._at(c, site)
            if IMAGE_PROBS in c.wants(here):
                probs = c.image_forward(probs, here)
        return probs

    def logit_bias(self, site, batch_heads, queries, keys, dtype, device):
        total = None
        for c in self.controllers:
            here = self._at(c, site)
            b = c.logit_bias(here, batch_heads, queries, keys, dtype, device) if BIAS in c.wants(here) else None
            if b is not None:
                total = b if total is None else total + b
        return total

    def observe_output(self, out, site):
        for c in self.controllers:
            here = self._at(c, site)
            if OUTPUT in c.wants(here):
                c.observe_output(out, here)

    def tick(self):
        if self.own_steps:
            for c in self.controllers:
                c.tick()
        else:
            super().tick()

    def reset(self):
        super().reset()
        if not self.own_steps:  # controllers with their own counts were reset when they were attached
            for c in self.controllers:
                c.reset()

