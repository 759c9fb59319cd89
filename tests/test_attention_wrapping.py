"""The observing processor wraps the layer's own processor: it runs it unchanged where nothing is
observed, keeps an IP-Adapter's image path under observation, computes probabilities only where a
controller asks, and keeps stored maps differentiable on request."""
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from editnb import models
from editnb.attention import OUTPUT, PROBS, AttentionStore, Chain, Controller, Site, attach
from editnb.attention.p2p import PromptToPrompt
from editnb.layout import BatchLayout, publish
from editnb.methods import lime

TOKENS = 77


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ip_pipe():
    return models.load("ip-adapter", profile="toy", device="cpu", dtype=torch.float32)


def _ip_inputs(unet, scale=1.0):
    x = torch.randn(2, 4, 16, 16, generator=gen(0))
    text = torch.randn(2, TOKENS, unet.config.cross_attention_dim, generator=gen(1))
    image = torch.randn(2, 1, 128, generator=gen(2)) * scale
    return x, text, {"image_embeds": [image]}


def _eps(unet, controller=None, scale=1.0):
    x, text, added = _ip_inputs(unet, scale)
    with torch.no_grad():
        if controller is None:
            return unet(x, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample
        with attach(unet, controller):
            return unet(x, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample


class _Features(Controller):
    """Reads every attention output, changes nothing (the SDPA path)."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def wants(self, site):
        return frozenset({OUTPUT})

    def observe_output(self, out, site):
        self.seen += 1


def test_ip_adapter_keeps_its_image_path_under_observation(ip_pipe):
    unet = ip_pipe.unet
    plain = _eps(unet)
    assert not torch.allclose(plain, _eps(unet, scale=0.0), atol=1e-3)  # the image path matters here
    # a controller that needs nothing: the wrapped processors run, bit for bit
    assert torch.equal(plain, _eps(unet, Controller()))
    # outputs read on the SDPA path, IP-Adapter image path included: bit for bit
    features = _Features()
    assert torch.equal(plain, _eps(unet, features)) and features.seen == len(unet.attn_processors)
    # probabilities materialised (cross and self): equal up to float rounding
    store = AttentionStore()
    assert torch.allclose(plain, _eps(unet, store), atol=1e-5)
    assert store.layers("cross") and store.layers("self")
    # the adapter's parameters stay registered while observed, and the processors come back
    n_params = len(list(unet.parameters()))
    with attach(unet, Controller()):
        assert len(list(unet.parameters())) == n_params
    assert sum("IPAdapter" in type(p).__name__ for p in unet.attn_processors.values()) == 7


def test_backprop_through_a_stored_attention_map(random_pipe):
    unet = random_pipe.unet
    x = torch.randn(1, 4, 16, 16, generator=gen(0))
    text = torch.randn(1, TOKENS, unet.config.cross_attention_dim, generator=gen(1))
    store = AttentionStore(kinds=("cross",), cond_half=False, device=None, differentiable=True)
    unet.zero_grad()
    with attach(unet, store), torch.enable_grad():
        unet(x, 500, encoder_hidden_states=text)
        m = store.aggregate("cross", resolution=16)
        assert m.requires_grad
        (m[..., 3] ** 2).sum().backward()  # an attention loss on one token's map
    layer = store.layers("cross", 16)[0].removesuffix(".processor")
    grad = unet.get_submodule(layer).to_q.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    unet.zero_grad()
    frozen = AttentionStore(kinds=("cross",), cond_half=False)
    with attach(unet, frozen), torch.enable_grad():
        unet(x, 500, encoder_hidden_states=text)
    assert not any(v.requires_grad for v in frozen.maps.values())
    assert all(v.device.type == "cpu" for v in frozen.maps.values())


def _attention_call(resolution, controller, kind="self"):
    """One call of the observing processor on a tiny attention layer at `resolution`."""
    from editnb.attention import ObservedAttnProcessor

    attn = Attention(query_dim=8, heads=1, dim_head=8, cross_attention_dim=8 if kind == "cross" else None)
    name = f"up_blocks.1.attentions.0.transformer_blocks.0.{'attn1' if kind == 'self' else 'attn2'}.processor"
    attn.set_processor(ObservedAttnProcessor(controller, name))
    controller.n_layers = 1
    h = torch.randn(2, resolution * resolution, 8, generator=gen(0))
    ctx = torch.randn(2, TOKENS, 8, generator=gen(1)) if kind == "cross" else None
    with torch.no_grad():
        return attn(h, encoder_hidden_states=ctx)


def test_default_store_never_asks_for_64x64_self_attention():
    store = AttentionStore()
    site = lambda kind, res: Site("up_blocks.3.x", "up", kind, res, 8, 0)  # noqa: E731
    assert store.wants(site("self", 64)) == frozenset()
    assert store.wants(site("self", 32)) == {PROBS} and store.wants(site("cross", 64)) == {PROBS}
    _attention_call(64, store)
    assert store.maps == {}
    _attention_call(32, store)
    assert len(store.maps) == 1
    everything = AttentionStore(max_self_resolution=None)
    _attention_call(64, everything)
    assert next(iter(everything.maps.values())).shape == (1, 64 * 64, 64 * 64)
    only_up = AttentionStore(where=lambda s: s.place == "down")
    _attention_call(16, only_up)
    assert only_up.maps == {}


def test_store_reads_rows_from_the_published_layout(random_ip2p):
    unet = random_ip2p.unet
    x = torch.randn(3, 8, 16, 16, generator=gen(0))
    text = torch.randn(3, TOKENS, unet.config.cross_attention_dim, generator=gen(1))

    def record(**kw):
        store = AttentionStore(kinds=("cross",), **kw)
        with attach(unet, store), torch.no_grad():
            unet(x, 500, encoder_hidden_states=text)
        return store.maps[(store.layers("cross", 16)[0], 0)]

    guessed = record()  # no layout and an odd batch: every row
    publish(unet, BatchLayout(("cond", "image", "uncond"), ("0",)))
    try:
        published = record()
    finally:
        publish(unet, None)
    assert guessed.shape[0] == 3 and published.shape[0] == 1
    assert torch.equal(published, record(cond_slice=slice(0, 1)))


def test_p2p_asks_only_where_it_edits(random_pipe):
    tok = random_pipe.tokenizer
    ctrl = PromptToPrompt(tok, ["a red circle", "a blue circle"], steps=10, cross_replace=0.5, self_replace=0.2,
                          blend_words=("circle", "circle"))
    ctrl._latent_resolution, ctrl._blend_res = 64, 16  # SD 1.5's levels

    def needs(kind, res, step):
        ctrl.step = step
        return ctrl.wants(Site("x", "up", kind, res, 8, step))

    assert needs("self", 64, 0) == frozenset() and needs("self", 32, 0) == {PROBS}
    assert needs("self", 32, 2) == frozenset()            # after self_replace
    assert needs("cross", 64, 0) == {PROBS}                 # word swap
    assert needs("cross", 64, 5) == frozenset()            # after cross_replace ...
    assert needs("cross", 16, 9) == {PROBS}                 # ... but local blend reads 16x16


def test_lime_bias_through_sdpa_equals_explicit_probabilities(random_ip2p):
    unet, tok = random_ip2p.unet, random_ip2p.tokenizer
    roi = np.zeros((16, 16), bool)
    roi[3:11, 5:12] = True
    reg = lime.LimeRegularizer(roi, tok, "make the circle blue", min_resolution=8)

    class Explicit(lime.LimeRegularizer):
        calls = 0

        def wants(self, site):
            return super().wants(site) | {PROBS} if super().wants(site) else frozenset()

        def forward(self, probs, site):
            Explicit.calls += 1
            return probs

    explicit = Explicit(roi, tok, "make the circle blue", min_resolution=8)
    x = torch.randn(3, 8, 16, 16, generator=gen(0))
    text = torch.randn(3, TOKENS, unet.config.cross_attention_dim, generator=gen(1))
    outs = []
    for ctrl in (None, reg, explicit, Chain(reg, AttentionStore(kinds=("cross",)))):
        with torch.no_grad():
            if ctrl is None:
                outs.append(unet(x, 500, encoder_hidden_states=text).sample)
                continue
            with attach(unet, ctrl):
                outs.append(unet(x, 500, encoder_hidden_states=text).sample)
    plain, sdpa, probs, chained = outs
    assert Explicit.calls > 0
    assert not torch.allclose(plain, sdpa, atol=1e-4)  # the regularisation changes the prediction
    assert torch.allclose(sdpa, probs, atol=1e-5) and torch.allclose(sdpa, chained, atol=1e-5)
