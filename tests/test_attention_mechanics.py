"""Mechanics of the attention toolkit on a random-weight pipeline of the toy architecture."""
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from editnb import diffusion
from editnb.attention import AttentionStore, Controller, attach
from editnb.attention.p2p import PromptToPrompt, refinement_mapper, replacement_mapper
from editnb.attention.words import token_indices, word_tokens

PROMPT = "a red circle on a white background"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_store_records_without_changing_the_output(random_pipe):
    plain = diffusion.text_to_image(random_pipe, PROMPT, steps=4, generator=gen()).latents
    store = AttentionStore()
    with attach(random_pipe.unet, store):
        observed = diffusion.text_to_image(random_pipe, PROMPT, steps=4, generator=gen()).latents
    # the observing processor computes attention explicitly (softmax, bmm) instead of SDPA
    assert torch.allclose(plain, observed, atol=1e-4)
    assert store.steps == [0, 1, 2, 3]
    assert set(store.layers("cross")) and set(store.layers("self"))
    assert {s.resolution for s in store.sites.values()} == {16, 8}
    cross = store.aggregate("cross", resolution=16)
    assert cross.shape == (1, 16, 16, random_pipe.tokenizer.model_max_length)
    assert torch.allclose(cross.sum(-1), torch.ones(1, 16, 16), atol=1e-4)  # probabilities
    selfm = store.aggregate("self", resolution=8, steps=[0])
    assert selfm.shape == (1, 8, 8, 64)


def test_store_keeps_heads_and_batches(random_pipe):
    store = AttentionStore(kinds=("cross",), head_average=False)
    with attach(random_pipe.unet, store):
        diffusion.text_to_image(random_pipe, [PROMPT, "a blue square on a black background"], steps=2, generator=gen())
    name = store.layers("cross", 16)[0]
    heads = store.sites[name].heads
    assert store.maps[(name, 0)].shape == (2, heads, 256, random_pipe.tokenizer.model_max_length)


def test_processors_are_restored_even_on_error(random_pipe):
    before = {k: type(v) for k, v in random_pipe.unet.attn_processors.items()}

    class Boom(Controller):
        def forward(self, probs, site):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with attach(random_pipe.unet, Boom()):
            diffusion.text_to_image(random_pipe, PROMPT, steps=2, generator=gen())
    after = {k: type(v) for k, v in random_pipe.unet.attn_processors.items()}
    assert before == after and all(v is AttnProcessor2_0 for v in after.values())


def test_same_seed_same_image(random_pipe):
    a = diffusion.text_to_image(random_pipe, PROMPT, steps=3, generator=gen(5)).latents
    b = diffusion.text_to_image(random_pipe, PROMPT, steps=3, generator=gen(5)).latents
    c = diffusion.text_to_image(random_pipe, PROMPT, steps=3, generator=gen(6)).latents
    assert torch.equal(a, b) and not torch.equal(a, c)
    d = diffusion.text_to_image(random_pipe, PROMPT, steps=3, generator=gen(5), scheduler="dpm++").latents
    assert d.shape == a.shape and not torch.equal(a, d)
    with pytest.raises(ValueError, match="torch.Generator"):
        diffusion.text_to_image(random_pipe, PROMPT, steps=3, generator=5)
    with pytest.raises(ValueError, match="unknown scheduler"):
        diffusion.text_to_image(random_pipe, PROMPT, steps=3, scheduler="euler-x")


def test_word_token_alignment(random_pipe):
    tok = random_pipe.tokenizer
    words = word_tokens(tok, "a red circle, a blue square")
    assert [w for w, _ in words] == ["a", "red", "circle", ",", "a", "blue", "square"]
    assert token_indices(tok, PROMPT, "circle") == [3]
    assert token_indices(tok, PROMPT, "a") == [1, 5]
    # a word outside the vocabulary spans several tokens
    assert len(token_indices(tok, "a zebra", "zebra")) > 1
    with pytest.raises(ValueError, match="not in the prompt"):
        token_indices(tok, PROMPT, "square")


def test_p2p_mappers(random_pipe):
    tok = random_pipe.tokenizer
    M = replacement_mapper(tok, "a red circle", "a blue circle")
    assert torch.equal(M[:5, :5], torch.eye(5))
    with pytest.raises(ValueError, match="same number of words"):
        replacement_mapper(tok, "a red circle", "a big red circle")
    index, alpha = refinement_mapper(tok, "a red circle", "a big red circle")
    assert alpha[2].item() == 0  # "big" is new
    assert index[3].item() == 2 and index[4].item() == 3  # "red", "circle" come from the source
    assert index[5].item() == 4  # end token


def test_refinement_mapper_by_hand(random_pipe):
    """P2P's refine mode, token by token (one token per word here): the start token keeps itself;
    a shared word takes its source position (alpha 1); a new word keeps its own map (alpha 0); the
    end token and padding take the source's end token and padding, shifted by the length change,
    never past the context."""
    tok = random_pipe.tokenizer
    L = tok.model_max_length
    # source: <s> a red circle </s>;  target: <s> a big red circle on a square </s>
    index, alpha = refinement_mapper(tok, "a red circle", "a big red circle on a square")
    assert index[:9].tolist() == [0, 1, 2, 2, 3, 5, 6, 7, 4] and index[9].item() == 5  # new words keep their own index
    assert alpha[:9].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert alpha.max() == 1.0 and (alpha[8:] == 1.0).all()
    assert index[-1].item() == L - 1 - 4 and index.max().item() <= L - 1
    # a shorter target: its padding takes the source's later padding, capped at the last position
    index, alpha = refinement_mapper(tok, "a big red circle on a square", "a circle")
    assert index[:3].tolist() == [0, 1, 4] and alpha[:3].tolist() == [1.0, 1.0, 1.0]
    assert index[3].item() == 8 and index[-1].item() == L - 1 and index[-6].item() == L - 1
    index, alpha = refinement_mapper(tok, "red circle", "big red circle")  # a new first word
    assert alpha[:5].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0] and index[:5].tolist() == [0, 1, 1, 2, 3]


def test_p2p_replaces_only_the_target_branch(random_pipe):
    prompts = [PROMPT, "a blue circle on a white background"]
    ctrl = PromptToPrompt(random_pipe.tokenizer, prompts, steps=4, cross_replace=1.0, self_replace=1.0,
                          self_max_resolution=16).configure(random_pipe.unet)
    seen = AttentionStore(kinds=("cross",))

    class Both(Controller):
        def forward(self, probs, site):
            out = ctrl(probs, site)
            seen(out, site)
            return out

    both = Both()
    cond, uncond = diffusion.encode_prompt(random_pipe, prompts), diffusion.encode_prompt(random_pipe, ["", ""])
    z = diffusion.initial_noise(random_pipe, 1, gen()).repeat(2, 1, 1, 1)
    with attach(random_pipe.unet, both):
        ctrl.n_layers = both.n_layers
        diffusion.denoise(random_pipe, z, cond, uncond, 7.5, 3)
    name = seen.layers("cross", 16)[0]
    m = seen.maps[(name, 0)]
    assert torch.allclose(m[0], m[1])  # full replacement: the target sees the source's maps
    plain = AttentionStore(kinds=("cross",))
    with attach(random_pipe.unet, plain):
        diffusion.denoise(random_pipe, z, cond, uncond, 7.5, 1)
    assert not torch.allclose(plain.maps[(name, 0)][1], m[1])  # without P2P they differ


def test_p2p_bad_input(random_pipe):
    tok = random_pipe.tokenizer
    with pytest.raises(ValueError, match="at least one target"):
        PromptToPrompt(tok, [PROMPT], 10)
    with pytest.raises(ValueError, match="fraction"):
        PromptToPrompt(tok, [PROMPT, PROMPT], 10, cross_replace=2)
    with pytest.raises(ValueError, match="not in the prompt"):
        PromptToPrompt(tok, [PROMPT, PROMPT], 10, equalizer={"square": 2.0})


def test_ddim_inversion_round_trip_is_close(random_pipe):
    from PIL import Image

    img = Image.new("RGB", (64, 64), (200, 30, 30))
    traj = diffusion.ddim_invert(random_pipe, img, PROMPT, steps=10)
    assert len(traj) == 11
    direct = diffusion.reconstruct(random_pipe, traj, PROMPT, direct=True, keep_trajectory=True)
    assert torch.allclose(direct.latents, traj[0])
    assert np.asarray(direct.image).shape == (64, 64, 3)  # the decoded image comes with the latent
    # Direct Inversion puts every step back on the inversion trajectory: the kept path is that trajectory reversed
    assert len(direct.trajectory) == 11
    assert all(torch.equal(a, b) for a, b in zip(direct.trajectory, reversed(traj)))
    assert diffusion.reconstruct(random_pipe, traj, PROMPT).trajectory == []  # kept only when asked


def test_reconstruct_defaults_to_plain_ddim_with_the_empty_prompt_and_no_guidance(random_pipe):
    """Without direct inversion, reconstruction is DDIM from z_T (not exact: random weights drift);
    its defaults are the inversion's own (empty prompt, guidance 1, every step of the trajectory);
    a trajectory of the wrong length is refused, naming both counts."""
    from PIL import Image

    img = Image.new("RGB", (64, 64), (30, 200, 30))
    traj = diffusion.ddim_invert(random_pipe, img, steps=4)
    plain = diffusion.reconstruct(random_pipe, traj)
    explicit = diffusion.reconstruct(random_pipe, traj, "", steps=4, guidance=1.0, direct=False)
    assert torch.equal(plain.latents, explicit.latents)
    assert not torch.allclose(plain.latents, traj[0], atol=1e-3)  # drift: the direct path is the exact one
    c = diffusion._text_conditioning(random_pipe, "", 1, 1.0)
    z, _ = diffusion.denoise(random_pipe, traj[-1], c, steps=4, scheduler="ddim")
    assert torch.equal(plain.latents, z)  # DDIM from the trajectory's last latent z_T
    with pytest.raises(ValueError, match="the trajectory has 4 steps, not 6"):
        diffusion.reconstruct(random_pipe, traj, steps=6)


def test_store_and_p2p_in_fp16(random_pipe):
    import copy

    pipe = copy.deepcopy(random_pipe).to(torch.float16)
    store = AttentionStore(kinds=("cross",))
    with attach(pipe.unet, store):
        out = diffusion.text_to_image(pipe, [PROMPT, PROMPT], steps=2, generator=gen())
    assert out.latents.dtype == torch.float16 and torch.isfinite(out.latents).all()
    assert store.maps[(store.layers("cross")[0], 0)].shape[0] == 2  # batch > 1, conditional half
    from editnb.methods.p2p import prompt_to_prompt

    r = prompt_to_prompt(pipe, PROMPT, "a blue circle on a white background", steps=3, generator=gen(),
                         blend_words=("red", "blue"))
    assert len(r.images) == 2 and r.found["controller"].last_mask is not None and r.masks["blend"].dtype == bool


def test_p2p_method_hands_every_setting_to_its_controller_and_editor(random_pipe, monkeypatch):
    """editnb.methods.p2p.prompt_to_prompt is plumbing: each argument must reach the controller
    (mode, the two replace fractions, the equalizer, the blend words) or the dual-branch editor
    (image, inversion, scheduler, guidance, steps, generator, size), a `before` controller is
    chained ahead of P2P's, the local blend hook reads the controller's mask from blend_start on,
    and found["p2p"] is P2P's own controller.  P2P's default is 50 DDIM steps (Hertz et al.)."""
    import inspect

    from editnb import editing
    from editnb.attention import Chain
    from editnb.methods import p2p

    assert inspect.signature(p2p.prompt_to_prompt).parameters["steps"].default == 50
    seen = {}

    def dual_branch(pipe, source, target, **kw):
        seen.update(kw)
        return diffusion.Result(None, None, found={})

    monkeypatch.setattr(editing, "dual_branch", dual_branch)
    before, gen, image = Controller(), torch.Generator().manual_seed(0), np.zeros((32, 32, 3), np.uint8)
    out = p2p.prompt_to_prompt(random_pipe, "a cat", "a dog", mode="replace", cross_replace=0.6, self_replace=0.3,
                               equalizer={"dog": 2.0}, blend_words=(["cat"], ["dog"]), guidance=5.0, steps=7,
                               generator=gen, image=image, inversion="ddim", scheduler="dpm", before=before,
                               size=(32, 32))
    ctrl = out.found["p2p"]
    assert isinstance(ctrl, PromptToPrompt) and ctrl.blend is not None
    assert (ctrl.n_steps, ctrl.cross_steps, ctrl.self_steps) == (7, round(0.6 * 7), round(0.3 * 7))
    assert ctrl.equalizer is not None and ctrl.equalizer.max() == 2.0
    assert seen["image"] is image and seen["inversion"] == "ddim" and seen["scheduler"] == "dpm"
    assert seen["guidance"] == 5.0 and seen["steps"] == 7 and seen["generator"] is gen and seen["size"] == (32, 32)
    assert isinstance(seen["controller"], Chain) and list(seen["controller"].controllers) == [before, ctrl]
    calls = []
    monkeypatch.setattr(ctrl, "local_blend", lambda i, t, latents: calls.append((i, t)) or (None if i < 2 else "mask"))
    ctrl.last_mask = "the mask"
    assert seen["blend"](1, 900, None) is None and seen["blend"](2, 800, None) == "the mask"
    assert calls == [(1, 900), (2, 800)]  # the step and the timestep as the editor gives them
    p2p.prompt_to_prompt(random_pipe, "a cat", "a dog", steps=3)
    assert seen["controller"] is not before and isinstance(seen["controller"], PromptToPrompt)
    assert seen["blend"] is None  # no blend words, no local blend
    refine = p2p.prompt_to_prompt(random_pipe, "a cat", "a big cat", mode="refine", steps=4).found["p2p"]
    assert refine.mode == "refine" and refine.equalizer is None and refine.blend is None


def test_present_blend_words_keeps_each_word_only_where_its_prompt_has_it(random_pipe):
    """PIE-Bench names an added object as the source word of an "add" edit: each word is kept only if
    its own prompt has it, in any case; None when neither prompt has its word."""
    from editnb.methods.p2p import present_blend_words

    tok = random_pipe.tokenizer
    assert present_blend_words(tok, "a cat", "a dog", ("cat", "dog")) == (["cat"], ["dog"])
    assert present_blend_words(tok, "a cat", "a cat and a dog", ("dog", "dog")) == ([], ["dog"])
    assert present_blend_words(tok, "a cat and a dog", "a cat", ("dog", "dog")) == (["dog"], [])
    assert present_blend_words(tok, "a cat", "a dog", ("Cat", "Dog")) == (["Cat"], ["Dog"])  # in any case
    assert present_blend_words(tok, "a cat", "a dog", ("bird", "fish")) is None
    assert present_blend_words(tok, "a cat", "a dog", ("cat", "")) == (["cat"], [])
    assert present_blend_words(tok, "a cat", "a dog", None) is None
