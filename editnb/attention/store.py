"""Record attention maps through the observing processor (:mod:`editnb.attention.processor`).

:class:`AttentionStore` records the conditional branch's maps, head-averaged by default, per step
and layer, without changing them.  It asks for probabilities only where it records: by default
cross-attention at every resolution and self-attention up to 32x32 (Prompt-to-Prompt's rule: the
64x64 self-attention of SD's 64x64 latents is 16 M entries per head and row, and no method here
reads it); everywhere else the layer runs its own (SDPA) processor.
"""
from __future__ import annotations

from typing import Callable

import torch

from .controller import CFG, NOTHING, PROBS, Chain, Controller, Site, as_index, layout_of
from .processor import ObservedAttnProcessor, attach

__all__ = ["AttentionStore", "Chain", "Controller", "ObservedAttnProcessor", "Site", "attach"]

_PROBS = frozenset({PROBS})


class AttentionStore(Controller):
    """Record attention probabilities of the conditional branch of the batch.

    ``maps[(layer, step)]`` is a tensor (batch_cond, [heads,] queries, keys).  Which maps:
    ``kinds``; resolutions up to ``max_resolution`` (all by default) and, for self-attention, up
    to ``max_self_resolution`` (32: never the 64x64 self-attention of SD; None lifts the limit);
    ``where(site) -> bool`` filters further (by layer, place, step...).  Which rows: the
    conditional rows of the layout the sampling loop published (or, without one, the second half
    of an even batch, diffusers' [uncond, cond]); ``cond_half=False`` keeps every row and
    ``cond_slice`` picks rows by hand.  Where: ``device`` ("cpu" by default; None keeps them where
    the UNet runs); ``differentiable=True`` keeps them in the autograd graph (no detach, no copy
    to the CPU unless `device` asks) so that a loss on the maps trains the UNet.
    """

    guess = CFG  # the batch order assumed where the sampling loop published no layout

    def __init__(self, kinds=("cross", "self"), head_average: bool = True, cond_half: bool = True,
                 cond_slice: slice | None = None, max_resolution: int | None = None,
                 max_self_resolution: int | None = 32, where: Callable[[Site], bool] | None = None,
                 device="cpu", differentiable: bool = False):
        super().__init__()
        unknown = set(kinds) - {"cross", "self"}
        if unknown:
            raise ValueError(f"kinds are 'cross' and/or 'self', got {sorted(unknown)}")
        self.kinds, self.head_average = tuple(kinds), head_average
        self.cond_half, self.cond_slice, self.max_resolution = cond_half, cond_slice, max_resolution
        self.max_self_resolution, self.where = max_self_resolution, where
        self.device = None if device is None else torch.device(device)
        self.differentiable = differentiable
        self.maps: dict[tuple[str, int], torch.Tensor] = {}
        self.sites: dict[str, Site] = {}

    def records(self, site: Site) -> bool:
        """Whether this store records the map at `site`."""
        if site.kind not in self.kinds:
            return False
        if self.max_resolution is not None and site.resolution > self.max_resolution:
            return False
        if site.kind == "self" and self.max_self_resolution is not None and site.resolution > self.max_self_resolution:
            return False
        return self.where is None or bool(self.where(site))

    def wants(self, site):
        return _PROBS if self.records(site) else NOTHING

    def rows(self, p: torch.Tensor, site: Site) -> torch.Tensor:
        """The rows this store keeps of (batch, ...) maps."""
        if self.cond_slice is not None:
            return p[self.cond_slice]
        if not self.cond_half:
            return p
        return p[as_index(layout_of(site, p.shape[0], self.guess).cond_rows())]

    def forward(self, probs, site):
        if self.records(site):
            p = probs if self.differentiable else probs.detach()
            p = self.rows(p.reshape(-1, site.heads, *probs.shape[1:]), site)
            if self.head_average:
                p = p.mean(1)
            p = p.float()
            if self.device is not None:
                p = p.to(self.device)
            self.maps[(site.layer, site.step)] = p
            self.sites[site.layer] = site
        return probs

    def reset(self):
        super().reset()
        self.maps.clear()
        self.sites.clear()

    @property
    def steps(self) -> list[int]:
        return sorted({s for _, s in self.maps})

    def layers(self, kind: str | None = None, resolution: int | None = None, places=None) -> list[str]:
        """Recorded layer names (UNet order), filtered by kind, resolution and place (down/mid/up)."""
        places = (places,) if isinstance(places, str) else places
        return [name for name, s in self.sites.items()
                if (kind is None or s.kind == kind) and (resolution is None or s.resolution == resolution)
                and (places is None or s.place in places)]

    def aggregate(self, kind: str = "cross", resolution: int | None = None, steps=None, layers=None,
                  places=None) -> torch.Tensor:
        """Mean map over the chosen layers and steps, as (batch, [heads,] h, w, keys): (res, res) for a
        generation at the model's own size, e.g. (16, 24) at SD's 16 level for 512x768.

        Choose layers by `resolution`, `places` ("down", "mid", "up") or an explicit list of
        names (a layer range: ``store.layers("cross")[2:5]``).  All chosen layers must share a
        resolution (pass `resolution` when several exist)."""
        chosen = layers or self.layers(kind, resolution, places)
        if not chosen:
            raise ValueError(f"no {kind}-attention recorded" + (f" at {resolution}x{resolution}" if resolution else ""))
        res = {self.sites[n].resolution for n in chosen}
        if len(res) > 1:
            raise ValueError(f"layers of several resolutions {sorted(res)}; pick one with resolution=")
        shapes = {self.sites[n].hw for n in chosen}
        if len(shapes) > 1:
            raise ValueError(f"the chosen layers were recorded at several map shapes {sorted(shapes)} (generations of "
                             "different sizes in one store); reset the store between sizes")
        h, w = shapes.pop()
        steps = self.steps if steps is None else list(steps)
        maps = [self.maps[(n, s)] for n in chosen for s in steps if (n, s) in self.maps]
        if not maps:
            raise ValueError(f"no maps recorded for steps {steps}")
        m = torch.stack(maps).mean(0)
        return m.reshape(*m.shape[:-2], h, w, m.shape[-1])
