"""The observing attention processor: wraps whatever processor a layer has and runs it unchanged
wherever the controller needs nothing.

Per call, the controller's :meth:`~editnb.attention.controller.Controller.wants` decides the path:

- nothing: the wrapped processor (diffusers' SDPA ``AttnProcessor2_0`` by default, or the
  IP-Adapter's, which keeps its image path and the ``(text, image_embeds)`` tuple);
- a logit bias and/or the output only: ``scaled_dot_product_attention`` with the bias as an
  additive mask, no probability matrix in memory;
- probabilities: the classic path (scores, softmax, bmm) with the controller in between.

The two observed paths follow diffusers' ``AttnProcessor2_0`` and ``IPAdapterAttnProcessor2_0``
line by line (the IP-Adapter image path: ``scale`` x attention over the image tokens, added to the
text path's result).  :func:`attach` installs the processor on every attention layer and ALWAYS
restores the originals on exit, even on error.
"""
from __future__ import annotations

import math
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..images import latent_hw
from ..layout import published
from .controller import BIAS, IMAGE_PROBS, OUTPUT, PROBS, Chain, Controller, Site


class ObservedAttnProcessor(torch.nn.Module):
    """Wraps `inner` (the layer's processor) and hands the attention to `controller` where it asks.

    A torch Module (as diffusers' IP-Adapter processor is) so that a wrapped IP-Adapter keeps its
    ``to_k_ip`` / ``to_v_ip`` parameters registered in the UNet while observed."""

    def __init__(self, controller: Controller, name: str, inner=None, unet=None):
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.controller, self.name = controller, name
        self.inner = inner if inner is not None else AttnProcessor2_0()
        self.place = "mid" if name.startswith("mid") else name.split("_")[0]
        self.kind = "self" if ".attn1." in name else "cross"
        # a weak reference: a Module attribute would register the UNet inside its own processor
        self._unet = weakref.ref(unet) if unet is not None else None

    def _site(self, attn, hidden_states) -> Site:
        queries = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[-1] * hidden_states.shape[-2]
        unet = self._unet() if self._unet is not None else None
        layout = published(unet) if unet is not None else None
        resolution, shape = level_of(unet, queries)
        return Site(self.name, self.place, self.kind, resolution, attn.heads, self.controller.step, layout, shape)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 ip_adapter_masks=None, **kwargs):
        site = self._site(attn, hidden_states)
        needs = self.controller.wants(site)
        try:
            if not needs:
                extra = {} if ip_adapter_masks is None else {"ip_adapter_masks": ip_adapter_masks}
                return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **extra, **kwargs)
            if ip_adapter_masks is not None:
                raise ValueError("IP-Adapter masks are not supported where a controller observes attention; "
                                 "observe without ip_adapter_masks or narrow the controller's wants()")
            return self._observed(attn, hidden_states, encoder_hidden_states, attention_mask, temb, site, needs)
        finally:
            self.controller.tick()

    def _observed(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, site, needs):
        ip_states = None
        if hasattr(self.inner, "to_k_ip") and encoder_hidden_states is not None:
            if isinstance(encoder_hidden_states, tuple):
                encoder_hidden_states, ip_states = encoder_hidden_states
            else:  # diffusers' deprecated form: image tokens appended to the text tokens
                end = encoder_hidden_states.shape[1] - self.inner.num_tokens[0]
                encoder_hidden_states, ip_states = encoder_hidden_states[:, :end], [encoder_hidden_states[:, end:]]
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        n_q, n_k = query.shape[2], key.shape[2]

        if BIAS in needs:
            bias = self.controller.logit_bias(site, batch * attn.heads, n_q, n_k, query.dtype, query.device)
            if bias is not None:
                bias = _per_head(bias, batch, attn.heads)
                attention_mask = bias if attention_mask is None else attention_mask + bias
        if PROBS in needs:
            mask = None if attention_mask is None else _heads_to_batch(attention_mask.expand(batch, attn.heads, n_q, n_k))
            probs = attn.get_attention_scores(_heads_to_batch(query), _heads_to_batch(key), mask)
            probs = self.controller.forward(probs, site)
            out = torch.bmm(probs, _heads_to_batch(value)).view(batch, attn.heads, n_q, head_dim)
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                 is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        if ip_states is not None:
            observe = (attn, site) if IMAGE_PROBS in needs else None
            out = self._image_path(out, query, ip_states, batch, attn.heads, head_dim, observe)
        out = attn.to_out[1](attn.to_out[0](out))
        if OUTPUT in needs:
            self.controller.observe_output(out, site)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _image_path(self, out, query, ip_states, batch, heads, head_dim, observe=None):
        """diffusers' IPAdapterAttnProcessor2_0 without masks: + scale x SDPA over the image tokens;
        with `observe` = (attn, site), the probabilities are materialised and handed to the
        controller's ``image_forward`` first."""
        ip = self.inner
        for states, scale, to_k_ip, to_v_ip in zip(ip_states, ip.scale, ip.to_k_ip, ip.to_v_ip):
            if (all(s == 0 for s in scale) if isinstance(scale, list) else scale == 0):
                continue
            k = to_k_ip(states).view(batch, -1, heads, head_dim).transpose(1, 2)
            v = to_v_ip(states).view(batch, -1, heads, head_dim).transpose(1, 2)
            if observe is None:
                img = F.scaled_dot_product_attention(query, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
            else:
                attn, site = observe
                probs = attn.get_attention_scores(_heads_to_batch(query), _heads_to_batch(k), None)
                probs = self.controller.image_forward(probs, site)
                img = torch.bmm(probs, _heads_to_batch(v)).view(batch, heads, -1, head_dim)
            out = out + scale * img.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        return out


def _heads_to_batch(t: torch.Tensor) -> torch.Tensor:
    """(batch, heads, ...) as (batch * heads, ...): diffusers' ``head_to_batch_dim`` layout."""
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _per_head(bias: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """A bias broadcastable to (batch*heads, q, k) as one broadcastable to (batch, heads, q, k)."""
    if bias.ndim == 3 and bias.shape[0] == batch * heads and bias.shape[0] != 1:
        return bias.view(batch, heads, *bias.shape[1:])
    if bias.ndim == 3 and bias.shape[0] != 1:
        raise ValueError(f"a logit bias has batch*heads = {batch * heads} rows or 1; got shape {tuple(bias.shape)}")
    return bias


@contextmanager
def attach(unet, controller: Controller):
    """Install `controller` on every attention layer of `unet` (wrapping each layer's processor);
    restore the originals afterwards.

    Attached inside another ``attach`` on the same UNet, the two run as one :class:`Chain`
    controller, the inner one first (an outer AttentionStore records what an inner
    Prompt-to-Prompt made of the maps); contexts may close in any order, and the UNet gets its
    own processors back when the last one closes."""
    stack = getattr(unet, "_editnb_controllers", None)
    if not stack:
        stack = []
        object.__setattr__(unet, "_editnb_controllers", stack)
        object.__setattr__(unet, "_editnb_processors", dict(unet.attn_processors))
        object.__setattr__(unet, "_editnb_latent_hook", unet.register_forward_pre_hook(_record_latent_hw, with_kwargs=True))
    if any(c is controller for c in stack):
        raise ValueError("this controller is already attached to this UNet; attach it once (or use a Chain)")
    controller.n_layers = len(unet._editnb_processors)
    controller.reset()
    stack.append(controller)
    try:
        _install(unet)
        yield controller
    finally:
        stack.remove(controller)
        if stack:
            _install(unet)
        else:
            unet.set_attn_processor(unet._editnb_processors)
            unet._editnb_latent_hook.remove()
            _LATENT_HW.pop(unet, None)
            del unet._editnb_controllers, unet._editnb_processors, unet._editnb_latent_hook


#: each observed UNet's latent (height, width) in its current call (a forward pre-hook records it)
_LATENT_HW: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _record_latent_hw(unet, args, kwargs):
    sample = args[0] if args else kwargs.get("sample")
    if isinstance(sample, torch.Tensor) and sample.ndim == 4:
        _LATENT_HW[unet] = tuple(sample.shape[-2:])


def level_of(unet, queries: int) -> tuple[int, tuple[int, int] | None]:
    """(level name, map shape) of an attention call with `queries` positions.  The UNet halves the
    latent (rounding up) at each level, so level k of an H x W latent is ceil(H/2^k) x ceil(W/2^k);
    its name is the side it has at the model's own sample size (SD 1.5: 16 for the 16x16 maps of a
    512x512 image and the 16x24 maps of a 512x768 one).  Square when the call cannot be placed."""
    latent = _LATENT_HW.get(unet) if unet is not None else None
    if latent is not None:
        own = latent_hw(unet)[0]
        for k in range(8):
            h, w = -(-latent[0] // 2 ** k), -(-latent[1] // 2 ** k)
            if h * w == queries:
                return max(own // 2 ** k, 1), (h, w)
    side = math.isqrt(queries)
    return side, None


def _install(unet) -> None:
    """Observing processors for the controllers attached now, around the UNet's own processors."""
    stack = unet._editnb_controllers
    controller = stack[0] if len(stack) == 1 else Chain(*reversed(stack), own_steps=True)  # the innermost first
    unet.set_attn_processor({name: ObservedAttnProcessor(controller, name, proc, unet)
                             for name, proc in unet._editnb_processors.items()})
