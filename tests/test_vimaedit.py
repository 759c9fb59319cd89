"""ViMAEdit (editnb.methods.vimaedit): the formulas of Eq. 7 and Eq. 9, the adaptive variance of
Eq. 11-12, the blend-word fallback, and end-to-end edits on the toy and sd15-shaped profiles."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import editnb
from editnb import editing, models
from editnb.bench.data import load_pie_bench
from editnb.methods.vimaedit import estimate_target_embedding, grounding_resolutions, refine, trace_grounding, vimaedit
from editnb.methods.vimaedit.edit import present_blend_words
from editnb.methods.vimaedit.grounding import cluster_saliency
from editnb.runtime import data_dir

STEPS = 3


@pytest.fixture(scope="module")
def toy():
    return editnb.setup(profile="toy", device="cpu", verbose=False)


@pytest.fixture(scope="module")
def adapter(toy):
    return models.load("ip-adapter", profile="toy", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def items():
    return load_pie_bench(data_dir() / "bench" / "toy-pie")


def _words(pipe, item):
    return present_blend_words(pipe.tokenizer, item.source_prompt, item.target_prompt, item.blend_words)


# ------------------------------------------------------------------ the formulas


def test_target_estimate_is_eq7_with_the_text_difference_at_the_image_norm():
    g = torch.Generator().manual_seed(0)
    e_img, t_src, t_tgt = (torch.randn(1, 16, generator=g) * s for s in (3.0, 0.5, 2.0))
    out = estimate_target_embedding(e_img, t_src, t_tgt)
    n = e_img.norm()
    expected = e_img + (t_tgt * n / t_tgt.norm() - t_src * n / t_src.norm())
    torch.testing.assert_close(out, expected)
    # prompts already at the image's norm: Eq. 7 literally, e_I + (e_T^tgt - e_T^src)
    a, b = t_src / t_src.norm() * n, t_tgt / t_tgt.norm() * n
    torch.testing.assert_close(estimate_target_embedding(e_img, a, b), e_img + (b - a))
    # the same prompt twice: the estimate is the source image embedding
    torch.testing.assert_close(estimate_target_embedding(e_img, t_src, 5 * t_src), e_img)
    with pytest.raises(ValueError, match="one CLIP space"):
        estimate_target_embedding(e_img, torch.randn(1, 8), torch.randn(1, 8))


def test_one_grounding_round_and_n_rounds_match_eq9():
    Q = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.2, 0.8]])
    s0 = torch.tensor([1.0, 0.0, 0.0])
    s1 = refine(s0, Q, gamma=0.5, rounds=1)[0]
    # by hand: Q s0 = [0.5, 0.25, 0]; s1 = 0.5 s0 + 0.5 Q s0
    torch.testing.assert_close(s1, torch.tensor([0.75, 0.125, 0.0]))
    for gamma, n in ((0.5, 5), (0.2, 3), (0.9, 7)):
        closed = torch.linalg.matrix_power(gamma * torch.eye(3) + (1 - gamma) * Q, n) @ s0
        torch.testing.assert_close(refine(s0, Q, gamma, n)[-1], closed)
    # batched (branches) as the editor calls it
    batch = refine(torch.stack([s0, s0.flip(0)]), torch.stack([Q, Q]), 0.5, 5)[-1]
    torch.testing.assert_close(batch[1], refine(s0.flip(0), Q, 0.5, 5)[-1])
    with pytest.raises(ValueError, match="gamma"):
        refine(s0, Q, gamma=1.5)


def test_dpl_grounding_gives_each_cluster_its_mean_saliency():
    # two groups of patches that attend only within their group
    Q = torch.block_diag(torch.full((3, 3), 1 / 3), torch.full((2, 2), 1 / 2))[None]
    s0 = torch.tensor([[0.9, 0.6, 0.3, 0.1, 0.3]])
    out = cluster_saliency(s0, Q, clusters=2)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.6, 0.6, 0.2, 0.2]]))
    # a cluster of one patch keeps that patch's own saliency (its mean over one)
    Q = torch.block_diag(torch.full((3, 3), 1 / 3), torch.ones(1, 1))[None]
    out = cluster_saliency(torch.tensor([[0.9, 0.6, 0.3, 0.4]]), Q, clusters=2)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.6, 0.6, 0.4]]))
    # in the saliency's own precision
    out = cluster_saliency(torch.tensor([[0.9, 0.6, 0.3, 0.4]], dtype=torch.float64), Q.double(), clusters=2)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.6, 0.6, 0.4]], dtype=torch.float64))


def test_grounding_resolutions_come_from_the_model(adapter):
    from editnb import sd15_shaped

    sd15 = SimpleNamespace(config=SimpleNamespace(**sd15_shaped.unet_config(full_width=True, sample_size=64),
                                                  mid_block_type="UNetMidBlock2DCrossAttn"))
    assert grounding_resolutions(sd15) == (16, 32)  # the paper's P1 = 16x16, P2 = 32x32
    assert grounding_resolutions(adapter.unet) == (8, 16)  # the toy UNet's two attention levels


# ------------------------------------------------------------------ the edit


def test_adaptive_variance_adds_no_noise_outside_the_critical_region(adapter, items):
    """The critical region of a real edit drives the editor's noisy step: outside it the step is
    plain DDIM to the bit, inside it is not, and both branches get the same noise."""
    item = items[0]
    result = vimaedit(adapter, item.source_prompt, item.target_prompt, item.image, _words(adapter, item),
                      steps=STEPS, generator=torch.Generator().manual_seed(0))
    ground = result.found["grounding"]
    critical = ground.critical.bool()
    assert 0 < critical.sum() < critical.numel()
    assert not (critical & ~ground.mask.bool()).any()  # delta' > delta: the critical region lies in the mask
    sched = editnb.diffusion.make_scheduler(adapter)
    sched.set_timesteps(10)
    t = sched.timesteps[3]
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 16, 16, generator=g).repeat(2, 1, 1, 1)
    eps = torch.randn(1, 4, 16, 16, generator=g).repeat(2, 1, 1, 1)
    step = editing.region_noise_step(ground.adaptive_noise, torch.Generator().manual_seed(2))
    out = step(STEPS - 1, t, eps, latents, sched)  # the last step: its critical region is the one above
    plain = sched.step(eps, t, latents).prev_sample
    outside = ~critical.expand_as(out)
    assert torch.equal(out[outside], plain[outside])
    assert (out - plain)[~outside].abs().min() > 0
    assert torch.equal(out[0], out[1])  # one draw for both branches (Eq. 12)


def test_without_a_blend_word_grounding_and_adaptive_variance_switch_off(adapter, items):
    item = items[0]
    runs = []
    for seed in (0, 1):
        with pytest.warns(UserWarning, match="without a blend word"):
            runs.append(vimaedit(adapter, item.source_prompt, item.target_prompt, item.image, None, steps=STEPS,
                                 generator=torch.Generator().manual_seed(seed)))
    assert "grounding" not in runs[0].found and "blend" not in runs[0].masks
    torch.testing.assert_close(runs[0].latents, runs[1].latents, rtol=0, atol=0)  # no sampling noise drawn
    with pytest.raises(ValueError, match="adaptive variance"):
        vimaedit(adapter, item.source_prompt, item.target_prompt, item.image, ("triangle", "circle"), grounding=None,
                 steps=STEPS)


def test_vimaedit_edits_only_inside_the_grounded_mask_on_the_toy_profile(adapter, items):
    item = items[0]
    scale = [list(p.scale) for p in adapter.unet.attn_processors.values() if hasattr(p, "scale")]  # copies: diffusers
    # writes the scale lists in place, so the lists themselves would always compare equal
    # DDIM inversion: with Direct Inversion the source is put back on its trajectory after the blend
    result = vimaedit(adapter, item.source_prompt, item.target_prompt, item.image, _words(adapter, item), steps=STEPS,
                      inversion="ddim", generator=torch.Generator().manual_seed(0))
    assert [list(p.scale) for p in adapter.unet.attn_processors.values() if hasattr(p, "scale")] == scale  # lambda restored
    assert result.images[1].size == (64, 64)
    mask = torch.from_numpy(result.masks["blend"])
    z_src, z_tgt = result.latents
    assert torch.equal(z_tgt[:, ~mask], z_src[:, ~mask])  # Eq. 6 after the last step
    assert (z_tgt[:, mask] - z_src[:, mask]).abs().mean() > 1e-3
    # the image embedding changes the edit (Eq. 7-8); without it the plain SD pipeline runs
    plain = vimaedit(models.load("sd", profile="toy", device="cpu", dtype=torch.float32), item.source_prompt,
                     item.target_prompt, item.image, _words(adapter, item), image_guidance=False, steps=STEPS,
                     inversion="ddim", generator=torch.Generator().manual_seed(0))
    assert not torch.equal(plain.latents[1], result.latents[1])
    with pytest.raises(ValueError, match="needs the source image"):
        vimaedit(adapter, item.source_prompt, item.target_prompt, None, _words(adapter, item), steps=STEPS)
    with pytest.raises(ValueError, match="scheduler='ddim'"):  # the core's: region noise is DDIM's
        vimaedit(adapter, item.source_prompt, item.target_prompt, item.image, _words(adapter, item), steps=STEPS,
                 scheduler="dpm++")


def test_derivatives_and_p2p_pie_run_through_the_registry(toy, items):
    from editnb.bench.runner import Context
    from editnb.methods import get

    ctx = Context()
    for name in ("vimaedit", "vimaedit-no-image", "vimaedit-ca", "vimaedit-dpl", "vimaedit-var0", "vimaedit-var1"):
        assert set(get(name).needs) == {"source_prompt", "target_prompt", "blend_words"}
    item = items[20]  # an "add" edit: the blend word is only in the target prompt
    for name in ("vimaedit-dpl", "vimaedit-var1", "p2p-pie"):  # the other derivatives are flags tested above
        out = get(name).run(ctx, item, toy.generator(0), 2)
        assert out.size == item.image.size, name


def test_dpm_solver_edits_a_generated_source_with_grounding(adapter):
    sd = models.load("sd", profile="toy", device="cpu", dtype=torch.float32)
    result = vimaedit(sd, "a red circle on a white background", "a red square on a white background", None,
                      ("circle", "square"), image_guidance=False, variance="zero", scheduler="dpm++", steps=STEPS,
                      generator=torch.Generator().manual_seed(0))
    assert result.masks["blend"].any()


def test_trace_grounding_keeps_every_round_and_step(adapter, items):
    item = items[0]
    tr = trace_grounding(adapter, item.source_prompt, item.target_prompt, item.image, _words(adapter, item),
                         item.mask, steps=5, generator=torch.Generator().manual_seed(0))
    assert tr.resolutions == (8, 16) and len(tr.steps) == 4 == len(tr.ious)  # from step int(0.2 * 5) = 1 on
    first = tr.steps[0]
    assert first.initial.shape == (2, 16, 16) and len(first.rounds) == 5 and first.mask.shape == (16, 16)
    assert all(0.0 <= v <= 1.0 for v in tr.ious)
    # each step's IoU by hand: its 16x16 mask repeated to the image's 64x64 cells (nearest), against
    # the true mask without the one-pixel frame PIE-Bench's decoder sets
    true = np.array(item.mask, bool)
    side = true.shape[0] // 16
    frameless = true.copy()
    frameless[0, :] = frameless[-1, :] = frameless[:, 0] = frameless[:, -1] = False
    for k, step in enumerate(tr.steps):
        m = np.kron(np.asarray(step.mask, bool), np.ones((side, side), bool))
        iou = (m & frameless).sum() / max((m | frameless).sum(), 1)
        assert tr.ious[k] == pytest.approx(iou), k
    assert true[0].any() or true[:, 0].any() or true[-1].any() or true[:, -1].any()  # the frame is set: it counts
    with_frame = trace_grounding(adapter, item.source_prompt, item.target_prompt, item.image, _words(adapter, item),
                                 item.mask, steps=5, generator=torch.Generator().manual_seed(0), ignore_frame=False)
    m = np.kron(np.asarray(with_frame.steps[-1].mask, bool), np.ones((side, side), bool))
    assert with_frame.ious[-1] == pytest.approx((m & true).sum() / max((m | true).sum(), 1))
    assert np.array_equal(with_frame.result.images[1], tr.result.images[1])  # the same edit, seeded alike


# ------------------------------------------------------------------ the sd15 code path


def test_vimaedit_runs_on_the_sd15_shaped_profile():
    from editnb import runtime
    from editnb.bench.runner import Context
    from editnb.methods import get

    saved = runtime._CURRENT
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rt = editnb.setup(profile="sd15-shaped", device="cpu", verbose=False)
        item = next(i for i in load_pie_bench(data_dir() / "bench" / "toy-pie") if i.editing_type == "1")
        ctx = Context()
        out = get("vimaedit").run(ctx, item, rt.generator(0), 2)
        side = ctx.model("ip-adapter").unet.config.sample_size * 8
        assert out.size == (side, side)
        from editnb.sd15_shaped import SAMPLE_SIZE

        assert grounding_resolutions(ctx.model("ip-adapter").unet) == (SAMPLE_SIZE // 4, SAMPLE_SIZE // 2)  # SD: 16, 32 of 64
    finally:
        runtime._CURRENT = saved


def test_bad_settings_are_refused_before_any_compute(adapter, items):
    item = items[0]
    args = (adapter, item.source_prompt, item.target_prompt, item.image, ("triangle", "circle"))
    for bad, match in (({"variance": "high"}, "variance must be one of"), ({"grounding": "sam"}, "grounding must be"),
                       ({"gamma": 2.0}, "gamma"), ({"rounds": -1}, "rounds"), ({"delta": 0.9}, "delta' "),
                       ({"start": 1.0}, "start")):
        with pytest.raises(ValueError, match=match):
            vimaedit(*args, steps=STEPS, **bad)
    with pytest.raises(ValueError, match="not in the prompt"):
        vimaedit(adapter, item.source_prompt, item.target_prompt, item.image, ("dog", "cat"), steps=STEPS)


# ------------------------------------------------------------------ chapter 04's helpers


def test_paper_tables_use_the_benchmark_columns_and_methods():
    from editnb.bench import runner
    from editnb.methods import registry
    from editnb.methods.vimaedit import paper

    assert list(paper.COLUMNS) == [label for _, label in runner.COLUMNS]
    assert set(paper.TABLE_2) <= set(registry.METHODS)
    t = paper.table(paper.TABLE_2)
    assert t.loc["vimaedit-ca"].isna().sum() == 2 and not t.loc["vimaedit"].isna().any()
    assert paper.table(paper.TABLE_1_PNP_INVERSION).loc["ViMAEdit", "BG PSNR ↑"] == 28.75


def test_agreement_names_what_follows_and_what_is_reversed():
    from editnb.methods.vimaedit import paper

    cols = list(paper.COLUMNS)
    book = paper.table({"base": (10, 20, 50, 30, 80, 25, 22), "new": (12, 25, 40, 20, 85, 26, None)})
    # toy: "new" is worse on structure (as the paper), worse on PSNR (reversed), better elsewhere
    import pandas as pd

    toy = pd.DataFrame([[5, 30, 60, 40, 70, 20, 20], [6, 29, 50, 30, 80, 21, 21]], index=["base", "new"], columns=cols)
    v = paper.agreement(book, toy, baseline="base")
    assert list(v.index) == ["new"]
    assert v.loc["new", cols[0]] == "follows" and v.loc["new", cols[1]] == "reversed"
    assert v.loc["new", cols[2]] == "follows" and v.loc["new", cols[6]] == "missing"


def test_objects_found_needs_every_object_of_the_scene():
    from editnb.toy import oracle, world

    two = world.scene_for("test", 0, n_objects=2)
    image = world.render(two)
    assert oracle.objects_found(image, two)
    one = world.Scene(objects=two.objects[:1], background=two.background)
    assert oracle.objects_found(image, one)  # extra objects are allowed
    assert not oracle.objects_found(world.render(one), two)


def test_sample_from_embedding_depends_on_the_embedding(adapter):
    from editnb.methods.vimaedit.embeddings import image_embedding, sample_from_embedding
    from editnb.toy import world

    a = image_embedding(adapter, world.render(world.scene_for("test", 0)))
    b = image_embedding(adapter, world.render(world.scene_for("test", 1)))
    assert a.shape[0] == 1
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    sa = sample_from_embedding(adapter, a, 2, steps=STEPS, generator=gen())
    sb = sample_from_embedding(adapter, b, 2, steps=STEPS, generator=gen())
    assert len(sa) == 2
    import numpy as np

    assert np.abs(np.asarray(sa[0], float) - np.asarray(sb[0], float)).mean() > 1.0
    assert np.array_equal(np.asarray(sa[0]), np.asarray(sample_from_embedding(adapter, a, 2, steps=STEPS, generator=gen())[0]))
    with pytest.raises(ValueError, match="one image embedding"):
        sample_from_embedding(adapter, torch.cat([a, b]), 2, steps=STEPS)


def test_p2p_pie_reads_blend_words_given_as_strings_or_lists(toy, items):
    """The target word is reweighted x2 whole: ("triangle", "circle") and (["triangle"], ["circle"])
    are one edit (a string's first letter is no word)."""
    import numpy as np

    from editnb.methods.vimaedit.edit import p2p_pie

    sd = models.load("sd", profile="toy", device="cpu", dtype=torch.float32)
    item = next(i for i in items if all(_words(sd, i) or ([], [])))
    src, tgt = _words(sd, item)
    run = lambda words: p2p_pie(sd, item.source_prompt, item.target_prompt, item.image, words, steps=STEPS,  # noqa: E731
                                generator=torch.Generator().manual_seed(0)).images[1]
    assert np.array_equal(np.asarray(run((src[0], tgt[0]))), np.asarray(run((src, tgt))))
    plain = p2p_pie(sd, item.source_prompt, item.target_prompt, item.image, None, steps=STEPS,
                    generator=torch.Generator().manual_seed(0)).images[1]
    assert not np.array_equal(np.asarray(plain), np.asarray(run((src, tgt))))


def test_attention_uniformity_is_one_for_uniform_rows_and_lower_for_peaked_ones():
    from editnb.methods.vimaedit.grounding import attention_uniformity

    assert abs(attention_uniformity(torch.full((4, 4), 0.25)) - 1.0) < 1e-6
    assert attention_uniformity(torch.eye(4)) < 1e-6
    assert 0 < attention_uniformity(torch.softmax(torch.eye(4) * 3, -1)) < 1


def test_a_grounding_step_reads_the_conditional_rows_and_follows_eq9_and_eq10():
    """One step of Grounding by hand in plain torch: the blend words' cross-attention of the text-
    conditioned rows (never the unconditional ones) at P1, upsampled to P2, refined five times by
    s <- g s + (1 - g) Q s with Q the conditional self-attention (rows: queries), normalised per
    branch, combined by the max of the branches (Eq. 10), thresholded at delta (mask) and delta'
    (critical region).  The data are chosen so that each wrong equation changes the answer."""
    import torch.nn.functional as F

    from editnb.attention.controller import Site
    from editnb.layout import BatchLayout
    from editnb.methods.vimaedit.grounding import Grounding, StepAttention

    p1, p2, keys = 2, 4, 3
    alpha = torch.zeros(2, keys)
    alpha[0, 1] = alpha[1, 2] = 1.0  # the source's word is token 1, the target's token 2
    layout = BatchLayout(("uncond", "cond"), ("source", "target"))  # rows: uncond src, uncond tgt, cond src, cond tgt
    g = torch.Generator().manual_seed(0)
    cross = (4 * torch.randn(4, p1 * p1, keys, generator=g)).softmax(-1)
    self_attn = (4 * torch.randn(4, p2 * p2, p2 * p2, generator=g)).softmax(-1)
    recorder = StepAttention(alpha, coarse=p1, fine=p2, start=0)
    recorder.forward(cross, Site("down.attn2", "down", "cross", p1, 1, 0, layout))
    recorder.forward(self_attn, Site("up.attn1", "up", "self", p2, 1, 0, layout))
    ground = Grounding(recorder, mode="iterative", gamma=0.5, rounds=5, delta=0.5, delta_critical=0.8, keep_history=True)
    ground.update(0, (p2, p2))

    word = torch.stack([cross[2] @ alpha[0], cross[3] @ alpha[1]])  # (branches, P1*P1)
    s = F.interpolate(word.reshape(2, 1, p1, p1), size=(p2, p2), mode="nearest").reshape(2, -1)
    s0 = s.clone()
    for _ in range(5):  # Eq. 9
        s = 0.5 * s + 0.5 * torch.einsum("bpq,bq->bp", self_attn[2:], s)
    lo, hi = s.amin(-1, keepdim=True), s.amax(-1, keepdim=True)
    per_branch = (s - lo) / (hi - lo)
    combined = per_branch.amax(0).reshape(p2, p2)  # Eq. 10
    torch.testing.assert_close(ground.history[0].saliency, combined)
    assert torch.equal(ground.history[0].mask, combined > 0.5)
    assert torch.equal(ground.history[0].critical, combined > 0.8)
    # the data tell each wrong equation apart: the branches differ, Eq. 9 moves s_0, and some
    # patches fall between delta and delta'
    assert not torch.allclose(per_branch[0], per_branch[1], atol=0.05)
    norm0 = (s0 - s0.amin(-1, keepdim=True)) / (s0.amax(-1, keepdim=True) - s0.amin(-1, keepdim=True))
    assert ((norm0.amax(0).reshape(p2, p2) > 0.5) != (combined > 0.5)).any()
    assert ((combined > 0.5) & (combined <= 0.8)).any()


@pytest.mark.parametrize("image_guidance, image_scale, expected", [(True, None, 0.4), (True, 0.7, 0.7), (False, None, 0.0)])
def test_the_image_embedding_weight_lambda_holds_during_the_whole_edit(adapter, image_guidance, image_scale, expected):
    """Eq. 8: the IP-Adapter's image cross-attention enters with lambda = 0.4 (Appendix C) in every
    UNet call of the edit, inversion included, and the cached pipeline gets its own scale back."""
    from editnb.toy import world

    def scales():
        procs = [getattr(p, "inner", p) for p in adapter.unet.attn_processors.values()]
        return {float(v) for p in procs if hasattr(p, "scale") for v in (p.scale if isinstance(p.scale, list) else [p.scale])}

    before = scales()
    seen = []
    hook = adapter.unet.register_forward_pre_hook(lambda *a, **k: seen.append(scales()))
    edit = world.edit_for("test", 0, kind="recolor")
    options = {} if image_scale is None else {"image_scale": image_scale}
    try:
        vimaedit(adapter, edit.source_caption, edit.target_caption, edit.source_image(), edit.blend_words,
                 image_guidance=image_guidance, steps=STEPS, generator=torch.Generator().manual_seed(0), **options)
    finally:
        hook.remove()
    assert seen and all(s == {expected} for s in seen)
    assert scales() == before


def test_image_attention_replacement_copies_the_source_rows_of_the_conditional_branch():
    from editnb.attention.controller import Site
    from editnb.layout import BatchLayout
    from editnb.methods.vimaedit.embeddings import ImageAttentionReplace

    layout = BatchLayout(("uncond", "cond"), ("source", "target"))
    replace = ImageAttentionReplace(steps=50, latent_side=64)  # SD 1.5: steps 0-4, levels 32 and coarser
    at = lambda step, res, kind="cross": Site("l", "down", kind, res, 2, step, layout)  # noqa: E731
    assert replace.wants(at(4, 32)) and replace.wants(at(0, 8))
    assert not replace.wants(at(5, 32)) and not replace.wants(at(0, 64)) and not replace.wants(at(0, 16, "self"))
    probs = torch.rand(4 * 2, 6, 4).softmax(-1)  # (batch*heads, queries, image tokens)
    out = replace.image_forward(probs, at(0, 16)).reshape(4, 2, 6, 4)
    before = probs.reshape(4, 2, 6, 4)
    assert torch.equal(out[3], before[2])  # cond target <- cond source
    assert torch.equal(out[:3], before[:3])  # the unconditional rows and the source keep theirs


def test_materialised_image_attention_equals_the_adapters_own(adapter):
    """An image_forward that changes nothing gives the UNet output of diffusers' IP-Adapter processor."""
    from editnb.attention import IMAGE_PROBS, Controller, attach

    class Identity(Controller):
        def wants(self, site):
            return frozenset({IMAGE_PROBS})

    unet, g = adapter.unet, torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    image = [torch.randn(2, 1, adapter.image_encoder.config.projection_dim, generator=g)]
    kwargs = {"encoder_hidden_states": text, "added_cond_kwargs": {"image_embeds": image}}
    plain = unet(x, 500, **kwargs).sample
    with attach(unet, Identity()):
        observed = unet(x, 500, **kwargs).sample
    torch.testing.assert_close(observed, plain, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("image_replace, steps_replaced", [(0.1, {0}), (0.3, {0, 1, 2}), (0.0, set())])
def test_vimaedit_replaces_the_image_attention_for_its_first_steps(adapter, monkeypatch, image_replace, steps_replaced):
    from editnb.methods.vimaedit.embeddings import ImageAttentionReplace
    from editnb.toy import world

    seen = []
    original = ImageAttentionReplace.image_forward
    monkeypatch.setattr(ImageAttentionReplace, "image_forward",
                        lambda self, probs, site: seen.append((site.step, site.resolution)) or original(self, probs, site))
    edit = world.edit_for("test", 0, kind="recolor")
    vimaedit(adapter, edit.source_caption, edit.target_caption, edit.source_image(), edit.blend_words, steps=10,
             image_replace=image_replace, generator=torch.Generator().manual_seed(0))
    assert {step for step, _ in seen} == steps_replaced
    assert {res for _, res in seen} <= {8, 4}  # toy-sd's 16x16 latents: half the side and coarser


def test_grounding_comparison_reads_the_last_step_and_the_steps_above_the_baseline():
    from editnb.methods.vimaedit import GroundingComparison

    ious = {"cross-attention": np.array([[0.2, 0.5, 0.6], [0.4, 0.5, 0.4]]),  # means per step 0.3, 0.5, 0.5
            "iterative": np.array([[0.4, 0.4, 0.7], [0.4, 0.5, 0.5]])}  # means per step 0.4, 0.45, 0.6
    c = GroundingComparison(ious)
    assert c.final("iterative") == pytest.approx(0.6) and c.final("cross-attention") == pytest.approx(0.5)
    assert c.steps_above("iterative") == pytest.approx(2 / 3)  # above at the first and last step, below at the second


def test_refine_defaults_to_the_papers_gamma_and_rounds_and_names_bad_shapes():
    """gamma = 0.5 and N = 5 (Sec. 4.3) when not given; N = 0 is no refinement; a Q that does not
    match the saliency is refused with both shapes named."""
    g = torch.Generator().manual_seed(0)
    Q, s0 = torch.rand(4, 4, generator=g).softmax(-1), torch.rand(4, generator=g)
    closed = torch.linalg.matrix_power(0.5 * torch.eye(4) + 0.5 * Q, 5) @ s0
    rounds = refine(s0, Q)
    assert len(rounds) == 5
    torch.testing.assert_close(rounds[-1], closed)
    assert refine(s0, Q, rounds=0) == []
    with pytest.raises(ValueError, match=r"got Q \(4, 3\), s_0 \(4,\)"):
        refine(s0, Q[:, :3])
    with pytest.raises(ValueError, match=r"got Q \(4, 4\), s_0 \(3,\)"):
        refine(s0[:3], Q)


def test_grounding_comparison_reads_the_mean_curves_by_hand():
    """Figure 6a's summary: the last step's mean IoU, and the share of steps where a mode's mean
    IoU (over edits) is strictly above the baseline's (a tie is not above)."""
    from editnb.methods.vimaedit.edit import GroundingComparison

    ious = {"cross-attention": np.array([[0.25, 0.5, 0.5, 0.75], [0.25, 0.5, 0.5, 0.25]]),   # mean .25 .5 .5 .5
            "iterative": np.array([[0.5, 0.25, 0.75, 1.0], [0.25, 0.75, 0.25, 0.25]])}       # mean .375 .5 .5 .625
    c = GroundingComparison(ious)
    assert c.final("cross-attention") == 0.5 and c.final("iterative") == 0.625
    assert c.steps_above("iterative") == pytest.approx(0.5)  # steps 1 and 4; steps 2 and 3 are ties
    assert c.steps_above("cross-attention", baseline="iterative") == 0.0


@pytest.mark.slow
def test_iterative_grounding_beats_cross_attention_on_held_out_toy_pie_object_edits(adapter, items):
    """The paper's Figure 6a on toy-pie: its object edits of scenes 3-8 (a reshape and a recolour each;
    chapter 04 shows scenes 0-2), 25 steps.  The final mask of the iterative grounding (Eq. 9) has a
    mean IoU with the exact mask at least 0.05 above cross-attention alone (measured: +0.13, and
    +0.12 over all 34 held-out object edits of toy-pie), and its mean IoU is above at >= 80 % of the
    grounded steps (measured: all).  Fails when Eq. 9 does nothing (a uniform or identity Q), when
    grounding reads the wrong rows, or when toy-sd's 16x16 self-attention stops following objects."""
    from editnb.bench.data import TOY_TYPES
    from editnb.methods.vimaedit import compare_groundings
    from editnb.toy import world

    edits = [world.edit_for("test", k, kind) for k in range(3, 9) for kind in ("reshape", "recolor")]
    by_id = {item.id: item for item in items}
    for k, kind in ((k, kind) for k in range(3, 9) for kind in ("reshape", "recolor")):  # the same items as toy-pie's
        e = edits[2 * (k - 3) + (kind == "recolor")]
        assert by_id[f"{TOY_TYPES[kind]}{k:05d}"].source_prompt == e.source_caption
    c = compare_groundings(adapter, edits, steps=25, modes=("cross-attention", "iterative"))
    gain = c.final("iterative") - c.final("cross-attention")
    assert gain >= 0.05, (c.final("iterative"), c.final("cross-attention"))
    assert c.steps_above("iterative") >= 0.8


def test_compare_groundings_traces_every_mode_on_every_edit_with_its_own_seed(adapter):
    """Figure 6a's data: for each grounding mode, edit k traced with seed generator_seed + k and its
    blend words as present in the prompts; ``ious[mode]`` is (edits, grounded steps)."""
    from editnb.methods.vimaedit.edit import compare_groundings, present_blend_words
    from editnb.toy import world

    edits = [world.edit_for("test", i, kind="recolor") for i in (3, 4)]
    c = compare_groundings(adapter, edits, steps=3, modes=("cross-attention", "iterative"), generator_seed=5)
    assert set(c.ious) == {"cross-attention", "iterative"} and c.ious["iterative"].shape == (2, 3 - int(0.2 * 3))
    for mode in c.ious:
        e = edits[1]
        blend = present_blend_words(adapter.tokenizer, e.source_caption, e.target_caption, e.blend_words)
        alone = trace_grounding(adapter, e.source_caption, e.target_caption, e.source_image(), blend, true_mask=e.mask(),
                                grounding=mode, steps=3, generator=torch.Generator().manual_seed(6))
        assert np.allclose(c.ious[mode][1], alone.ious)


def test_figure_5_samples_the_embedding_alone_with_an_empty_prompt_and_the_adapter_at_one(adapter, monkeypatch):
    """Figure 5's protocol: n empty prompts, the embedding repeated once per sample as one image token
    set (n, 1, dim), the adapter weight 1 while sampling (and restored after), the caller's guidance,
    steps and generator; n < 1 refused with the reason."""
    from editnb import diffusion
    from editnb.methods.vimaedit.embeddings import sample_from_embedding

    seen = {}

    def fake_text_to_image(pipe, prompts, **kwargs):
        scales = {p.scale if not isinstance(p.scale, list) else p.scale[0]
                  for p in pipe.unet.attn_processors.values() if hasattr(p, "scale")}
        seen.update(prompts=prompts, scales=scales, **kwargs)
        return SimpleNamespace(images=["sample"] * len(prompts))

    monkeypatch.setattr(diffusion, "text_to_image", fake_text_to_image)
    e = torch.randn(1, adapter.image_encoder.config.projection_dim)
    gen = torch.Generator()
    before = [p.scale for p in adapter.unet.attn_processors.values() if hasattr(p, "scale")]
    assert sample_from_embedding(adapter, e, 3, steps=7, guidance=4.0, generator=gen) == ["sample"] * 3
    assert seen["prompts"] == ["", "", ""] and seen["guidance"] == 4.0 and seen["steps"] == 7
    assert seen["generator"] is gen and seen["scales"] == {1.0}
    (embeds,) = seen["image_embeds"]
    assert embeds.shape == (3, 1, e.shape[1]) and torch.equal(embeds[2, 0], e[0])
    assert [p.scale for p in adapter.unet.attn_processors.values() if hasattr(p, "scale")] == before
    assert sample_from_embedding(adapter, e, 1, steps=7) == ["sample"]  # one sample is allowed
    with pytest.raises(ValueError, match=r"n \(the number of samples\) is a positive integer, got 0"):
        sample_from_embedding(adapter, e, 0)


@pytest.mark.parametrize("blend, reweighted", [(("triangle", "circle"), {"circle": 2.0}), (None, None),
                                               ((["triangle"], ["circle", "red"]), {"circle": 2.0})])
def test_p2p_pie_is_prompt_to_prompt_with_pie_benchs_settings(adapter, monkeypatch, blend, reweighted):
    """PIE-Bench's P2P (ViMAEdit's Table 1 baseline): word swap for prompts of as many words, cross
    replace 0.4, self replace 0.6, the (first) target blend word reweighted x2, local blend on the blend
    words, and the caller's image, guidance, steps and generator passed through."""
    from editnb.methods import p2p
    from editnb.methods.vimaedit.edit import p2p_pie

    seen = {}
    monkeypatch.setattr(p2p, "prompt_to_prompt", lambda pipe, src, tgt, **kw: seen.update(src=src, tgt=tgt, **kw) or "result")
    image, gen = np.zeros((64, 64, 3), np.uint8), torch.Generator()
    assert p2p_pie(adapter, "a red triangle", "a red circle", image, blend, guidance=6.0, steps=9, generator=gen) == "result"
    assert (seen["src"], seen["tgt"], seen["mode"]) == ("a red triangle", "a red circle", "replace")
    assert (seen["cross_replace"], seen["self_replace"], seen["equalizer"]) == (0.4, 0.6, reweighted)
    assert seen["blend_words"] == blend
    assert (seen["guidance"], seen["steps"], seen["generator"], seen["image"]) == (6.0, 9, gen, image)
    p2p_pie(adapter, "a red triangle", "a big red circle", image, blend)
    assert seen["mode"] == "refine" and seen["guidance"] == 7.5 and seen["steps"] == 50  # PIE-Bench's defaults


def test_trace_grounding_is_the_edit_vimaedit_runs_with_its_history_kept(monkeypatch):
    """trace_grounding runs vimaedit with the caller's settings (its defaults are vimaedit's, so a
    trace is the edit as the chapter runs it) and keep_history, refuses an edit that grounded
    nothing, and scores each step's mask against the true mask with its one-pixel frame left out."""
    import inspect

    from editnb.methods.vimaedit import edit as E

    defaults = inspect.signature(E.vimaedit).parameters  # vimaedit's own, before it is replaced below
    for name in ("grounding", "steps", "start"):
        assert inspect.signature(E.trace_grounding).parameters[name].default == defaults[name].default, name
    masks = [np.zeros((8, 8), bool), np.ones((8, 8), bool)]
    masks[0][2:5, 2:5] = True
    ground = SimpleNamespace(history=[SimpleNamespace(mask=m) for m in masks],
                             recorder=SimpleNamespace(coarse="P1", fine="P2"))
    seen = {}

    def fake(pipe, source, target, image, blend, **kw):
        seen.update(kw, args=(source, target, image, blend))
        return SimpleNamespace(found={"grounding": ground})

    monkeypatch.setattr(E, "vimaedit", fake)
    gen = torch.Generator()
    true = np.zeros((8, 8), bool)
    true[2:5, 2:5] = True
    true[0, :] = True  # the frame: PIE-Bench's decoder sets it; no part of the edit
    tr = E.trace_grounding("pipe", "a cat", "a dog", "img", (["cat"], ["dog"]), true_mask=true, grounding="dpl",
                           steps=7, start=0.3, generator=gen, image_guidance=False)
    assert seen == {"grounding": "dpl", "steps": 7, "start": 0.3, "generator": gen, "keep_history": True,
                    "image_guidance": False, "args": ("a cat", "a dog", "img", (["cat"], ["dog"]))}
    assert tr.ious == pytest.approx([1.0, 9 / 64])  # the frame left out: the 3x3 square is the true mask
    framed = E.trace_grounding("pipe", "a cat", "a dog", "img", None, true_mask=true, ignore_frame=False)
    assert framed.ious == pytest.approx([9 / (9 + 8), 17 / 64])
    assert (seen["grounding"], seen["steps"], seen["start"]) == tuple(defaults[k].default for k in ("grounding", "steps", "start"))
    as_levels = E.trace_grounding("pipe", "a cat", "a dog", "img", None, true_mask=true.astype(np.uint8) * 255)
    assert as_levels.ious == pytest.approx(tr.ious)  # a 0/255 mask is read as the boolean mask
    assert E.trace_grounding("pipe", "a cat", "a dog", "img", None).ious == []
    monkeypatch.setattr(E, "vimaedit", lambda *a, **k: SimpleNamespace(found={}))
    with pytest.raises(ValueError, match="^no grounding ran: give blend words present in the prompts$"):
        E.trace_grounding("pipe", "a cat", "a dog", "img", None)


def test_compare_groundings_gives_each_edit_its_own_seed_and_every_mode_the_same(monkeypatch):
    """Edit k of every mode runs with a generator seeded generator_seed + k (the modes compared on the
    same noise), the mode as its grounding and the caller's steps and options; the IoUs stack as
    (edits, steps) per mode."""
    from editnb.methods.vimaedit import edit as E
    from editnb.toy import world

    calls = []

    def fake(pipe, source, target, image, blend, true_mask=None, grounding=None, steps=None, generator=None, **kw):
        calls.append((grounding, steps, generator.initial_seed(), kw))
        return SimpleNamespace(ious=[float(generator.initial_seed()), float(steps)])

    monkeypatch.setattr(E, "trace_grounding", fake)
    pipe = SimpleNamespace(tokenizer=models.load("sd", profile="toy", device="cpu", dtype=torch.float32).tokenizer)
    edits = [world.edit_for("test", i, "recolor") for i in range(2)]
    c = E.compare_groundings(pipe, edits, steps=4, modes=("cross-attention", "iterative"), generator_seed=10, gamma=0.3)
    assert calls == [(m, 4, 10 + k, {"gamma": 0.3}) for m in ("cross-attention", "iterative") for k in range(2)]
    assert c.ious["iterative"].tolist() == [[10.0, 4.0], [11.0, 4.0]]
