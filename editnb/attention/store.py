"""Observe attention inside any diffusers UNet through its attention processors.

:class:`ObservedAttnProcessor` computes attention exactly as diffusers' classic ``AttnProcessor``
does (scores, softmax, weighted sum) but hands every probability map to a controller first, with
where it is (layer name, place, resolution, kind, step).  :func:`attach` installs it on every
attention layer of a UNet and ALWAYS restores the original processors on exit, even on error.

:class:`AttentionStore` is the simplest controller: it records the conditional branch's maps,
head-averaged by default, per step and layer, without changing them.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Site:
    """Where an attention map comes from."""

    layer: str        # processor name in unet.attn_processors
    place: str        # "down", "mid" or "up"
    kind: str         # "self" or "cross"
    resolution: int   # side of the square feature map (16 for a 16x16 map)
    heads: int
    step: int         # denoising step (one UNet call = one step)


class ObservedAttnProcessor:
    """diffusers' ``AttnProcessor`` with a controller that sees (and may change) the probabilities."""

    def __init__(self, controller, name: str):
        self.controller, self.name = controller, name
        self.place = "mid" if name.startswith("mid") else name.split("_")[0]
        self.kind = "self" if ".attn1." in name else "cross"

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch_size, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)

        site = Site(self.name, self.place, self.kind, int(math.isqrt(query.shape[1])), attn.heads,
                    self.controller.step)
        bias = self.controller.logit_bias(site, query.shape[0], query.shape[1], key.shape[1], query.dtype, query.device)
        if bias is not None:  # added to the scaled logits before the softmax, as a mask would be
            attention_mask = bias if attention_mask is None else attention_mask + bias
        probs = attn.get_attention_scores(query, key, attention_mask)
        probs = self.controller(probs, site)

        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        self.controller.observe_output(out, site)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class Controller:
    """Base controller: counts UNet calls (steps) and leaves maps unchanged.

    Subclasses override :meth:`forward`, which gets the probabilities (batch*heads, queries, keys)
    and the :class:`Site`, and returns them (changed or not); :meth:`logit_bias` to add to the
    logits before the softmax (LIME's regularisation); :meth:`observe_output` to read the
    attention module's output (LIME's features).
    """

    def __init__(self):
        self.step = 0
        self._calls = 0
        self.n_layers = 0

    def __call__(self, probs, site):
        out = self.forward(probs, site)
        self._calls += 1
        if self.n_layers and self._calls % self.n_layers == 0:
            self.step += 1
        return out

    def forward(self, probs, site):
        return probs

    def logit_bias(self, site, batch_heads: int, queries: int, keys: int, dtype, device):
        """An additive bias for the logits (batch*heads, queries, keys), or None (default)."""
        return None

    def observe_output(self, out, site) -> None:
        """Sees the attention module's output (batch, queries, channels); for feature capture."""

    def reset(self):
        self.step, self._calls = 0, 0


class AttentionStore(Controller):
    """Record attention probabilities of the conditional half of the batch.

    ``maps[(layer, step)]`` is a tensor (batch_cond, [heads,] queries, keys) on the CPU in fp32.
    ``cond_half=True`` (default) keeps the second half of a classifier-free-guidance batch, which
    diffusers' pipelines lay out as [unconditional, conditional]; set ``cond_slice`` for other
    layouts (InstructPix2Pix: [cond, image-only, uncond] -> ``slice(0, n)``).
    """

    def __init__(self, kinds=("cross", "self"), head_average: bool = True, cond_half: bool = True,
                 cond_slice: slice | None = None, max_resolution: int | None = None):
        super().__init__()
        self.kinds, self.head_average = tuple(kinds), head_average
        self.cond_half, self.cond_slice, self.max_resolution = cond_half, cond_slice, max_resolution
        self.maps: dict[tuple[str, int], torch.Tensor] = {}
        self.sites: dict[str, Site] = {}

    def forward(self, probs, site):
        if site.kind in self.kinds and (self.max_resolution is None or site.resolution <= self.max_resolution):
            p = probs.detach().reshape(-1, site.heads, *probs.shape[1:])
            if self.cond_slice is not None:
                p = p[self.cond_slice]
            elif self.cond_half and p.shape[0] % 2 == 0:
                p = p[p.shape[0] // 2:]
            if self.head_average:
                p = p.mean(1)
            self.maps[(site.layer, site.step)] = p.float().cpu()
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
        """Mean map over the chosen layers and steps, as (batch, [heads,] res, res, keys).

        Choose layers by `resolution`, `places` ("down", "mid", "up") or an explicit list of
        names (a layer range: ``store.layers("cross")[2:5]``).  All chosen layers must share a
        resolution (pass `resolution` when several exist)."""
        chosen = layers or self.layers(kind, resolution, places)
        if not chosen:
            raise ValueError(f"no {kind}-attention recorded" + (f" at {resolution}x{resolution}" if resolution else ""))
        res = {self.sites[n].resolution for n in chosen}
        if len(res) > 1:
            raise ValueError(f"layers of several resolutions {sorted(res)}; pick one with resolution=")
        r = res.pop()
        steps = self.steps if steps is None else list(steps)
        maps = [self.maps[(n, s)] for n in chosen for s in steps if (n, s) in self.maps]
        if not maps:
            raise ValueError(f"no maps recorded for steps {steps}")
        m = torch.stack(maps).mean(0)
        return m.reshape(*m.shape[:-2], r, r, m.shape[-1])


def _names(unet) -> list[str]:
    return list(unet.attn_processors.keys())


@contextmanager
def attach(unet, controller: Controller):
    """Install `controller` on every attention layer of `unet`; restore the originals afterwards."""
    original = dict(unet.attn_processors)
    controller.n_layers = len(original)
    controller.reset()
    try:
        unet.set_attn_processor({name: ObservedAttnProcessor(controller, name) for name in original})
        yield controller
    finally:
        unet.set_attn_processor(original)


class Chain(Controller):
    """Several controllers as one: biases add up, probability edits apply in order, every one
    observes the outputs.  E.g. ``Chain(LimeRegularizer(...), AttentionStore())`` records the maps
    AFTER regularisation."""

    def __init__(self, *controllers: Controller):
        super().__init__()
        self.controllers = controllers

    def forward(self, probs, site):
        for c in self.controllers:
            c.step = self.step
            probs = c.forward(probs, site)
        return probs

    def logit_bias(self, site, batch_heads, queries, keys, dtype, device):
        total = None
        for c in self.controllers:
            b = c.logit_bias(site, batch_heads, queries, keys, dtype, device)
            if b is not None:
                total = b if total is None else total + b
        return total

    def observe_output(self, out, site):
        for c in self.controllers:
            c.observe_output(out, site)

    def reset(self):
        super().reset()
        for c in self.controllers:
            c.reset()
