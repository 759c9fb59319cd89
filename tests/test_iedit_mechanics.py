"""iEdit's dataset construction, losses (Eq. 2-13) and masked inference."""
import numpy as np
import pytest
import torch

from editnb import diffusion, metrics as M
from editnb.methods import iedit
from editnb.toy import architectures as arch, world


def test_edit_prompts_change_exactly_one_word_of_the_right_kind():
    rng = np.random.default_rng(0)
    for i in range(60):
        cap = world.scene_for("test", i).caption
        ep = iedit.toy_edit_prompt(cap, rng)
        a, b = cap.split(), ep.prompt.split()
        changed = [(x, y) for x, y in zip(a, b) if x != y]
        assert len(a) == len(b) and len(changed) == 1
        group = next(g for g, ws in iedit.TOY_LEXICON.items() if ep.old in ws and ep.new in ws)
        assert ep.new not in cap.replace(",", " ").split() and group
        assert world.parse_caption(ep.prompt) is not None  # still a valid ToyWorld scene
        assert ep.new in ep.difference


def test_retrieval_returns_the_nearest_neighbour_of_the_mean_embedding():
    feats = M.clip_features("clip", profile="toy")
    rng = np.random.default_rng(1)
    sources = [world.scene_for("test", i) for i in range(6)]
    prompts = [iedit.toy_edit_prompt(s.caption, rng).prompt for s in sources]
    pool = [world.render(world.scene_for("val", i)) for i in range(80)]
    got = iedit.retrieve_pseudo_targets(feats, [world.render(s) for s in sources], prompts, pool)
    # brute force
    q = (feats.images([world.render(s) for s in sources]) + feats.texts(prompts)).numpy() / 2
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    p = feats.images(pool).numpy()
    assert np.array_equal(got, (q @ p.T).argmax(1))


def test_losses_vanish_where_they_should():
    sched = arch.new_scheduler()
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(2, 4, 16, 16, generator=g)
    eps1 = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([10, 900])
    z_t = iedit.noisy_source(sched, z1, t, eps1)
    assert torch.allclose(iedit.predict_z0(sched, z_t, eps1, t), z1, atol=1e-4)  # Eq. 7 inverts Eq. 2
    eps2 = iedit.target_noise(sched, z_t, z1, t)  # pseudo-target == source
    assert torch.allclose(eps2, eps1, atol=1e-4)
    assert iedit.loss_paired(eps1, eps2) < 1e-8  # the prediction is the true noise
    m = torch.zeros(2, 1, 16, 16)
    m[..., 4:8, 4:8] = 1
    z2 = z1 + 3 * m  # the target differs only inside the mask
    eps2 = iedit.target_noise(sched, z_t, z2, t)
    ideal = eps2 * m + eps1 * (1 - m)
    assert iedit.loss_mask(ideal, eps1, eps2, m, m) < 1e-10
    assert iedit.loss_mask(eps1, eps1, eps2, m, m) > 0.01
    w_clip, w_noise = iedit.time_weights(t)
    assert torch.allclose(w_clip + w_noise, torch.ones(2)) and w_clip[0] > w_clip[1]


def test_objective_backpropagates_into_the_unet(random_pipe):
    clip = M.clip_features("clip", profile="toy")  # the metrics' CLIP wrapper, differentiable in the image
    e = world.edit_for("test", 0, "recolor")
    x1 = torch.from_numpy(e.source_image()).permute(2, 0, 1)[None].float() / 127.5 - 1
    x2 = torch.from_numpy(e.edited_image()).permute(2, 0, 1)[None].float() / 127.5 - 1
    m = torch.from_numpy(e.mask()).float()[None, None]
    from editnb.diffusion import encode_prompt

    states = encode_prompt(random_pipe, [e.target_caption])
    unet = random_pipe.unet
    unet.zero_grad()
    terms = iedit.objective(unet, random_pipe.vae, random_pipe.scheduler, clip, states, [e.target_caption],
                            ["blue circle"], x1, x2, m, m, generator=torch.Generator().manual_seed(0))
    terms.total.backward()
    inp, mid = iedit.trainable_groups(unet)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in inp)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mid)
    assert all(torch.isfinite(v) for v in (terms.total, terms.mask, terms.global_, terms.loc, terms.perc))
    unet.zero_grad()


def _eq12_from_the_pieces(pipe, clip, states, prompts, diffs, x1, x2, m1, m2, t, eps1, lambda_perc=0.1):
    """Eq. 12 rebuilt from the loss pieces, as chapter 02 wrote it before `objective` took t and eps1."""
    import torch.nn.functional as F

    sched, vae = pipe.scheduler, pipe.vae
    sf = vae.config.scaling_factor
    z1, z2 = (vae.encode(x).latent_dist.mean * sf for x in (x1, x2))
    lm1, lm2 = (F.interpolate(m, size=z1.shape[-2:], mode="area") for m in (m1, m2))
    z_t = iedit.noisy_source(sched, z1, t, eps1)
    eps2 = iedit.target_noise(sched, z_t, z2, t)
    eps_pred = pipe.unet(z_t, t, encoder_hidden_states=states).sample
    x_hat = vae.decode(iedit.predict_z0(sched, z_t, eps_pred, t).clamp(-20, 20) / sf).sample.clamp(-1, 1)
    w_clip, w_noise = iedit.time_weights(t, sched.config.num_train_timesteps)
    return (w_clip * (iedit.loss_loc(clip, x_hat, m1, diffs) + iedit.loss_global(clip, x_hat, prompts))
            + w_noise * iedit.loss_mask(eps_pred, eps1, eps2, lm1, lm2, reduction="none")
            + lambda_perc * iedit.loss_perc(clip, x_hat, x2, m1, m2)).mean()


def test_objective_at_a_given_t_and_noise_is_eq12_from_the_pieces(random_pipe):
    """t and eps1 given: the same value on every call, equal to Eq. 12 built by hand; not given:
    drawn from the generator as before (t, then eps_1), with the same value."""
    from editnb.diffusion import encode_prompt

    clip = M.clip_features("clip", profile="toy")
    edits = [world.edit_for("test", k, "recolor") for k in range(2)]
    to_tensor = lambda im: torch.from_numpy(im).permute(2, 0, 1).float() / 127.5 - 1  # noqa: E731
    x1 = torch.stack([to_tensor(e.source_image()) for e in edits])
    x2 = torch.stack([to_tensor(e.edited_image()) for e in edits])
    m = torch.stack([torch.from_numpy(e.mask()).float()[None] for e in edits])
    prompts, diffs = [e.target_caption for e in edits], ["blue circle", "red square"]
    states = encode_prompt(random_pipe, prompts)
    pipe = random_pipe
    batch = (clip, states, prompts, diffs, x1, x2, m, m)
    with torch.no_grad():
        z_shape = pipe.vae.encode(x1).latent_dist.mean.shape
        t = torch.tensor([150, 800])
        eps1 = torch.randn(z_shape, generator=torch.Generator().manual_seed(1))
        first, second = (iedit.objective(pipe.unet, pipe.vae, pipe.scheduler, *batch, t=t, eps1=eps1)
                         for _ in range(2))
        assert torch.equal(first.total, second.total)
        assert torch.allclose(first.total, _eq12_from_the_pieces(pipe, *batch, t, eps1), rtol=1e-5)
        at_300 = iedit.objective(pipe.unet, pipe.vae, pipe.scheduler, *batch, t=300, eps1=eps1)  # one t for every item
        at_300_by_hand = _eq12_from_the_pieces(pipe, *batch, torch.tensor([300, 300]), eps1)
        assert torch.allclose(at_300.total, at_300_by_hand, rtol=1e-5)

        gen = torch.Generator().manual_seed(7)
        t_drawn = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (2,), generator=gen)
        eps_drawn = torch.randn(z_shape, generator=gen)
        drawn = iedit.objective(pipe.unet, pipe.vae, pipe.scheduler, *batch, generator=torch.Generator().manual_seed(7))
        assert torch.allclose(drawn.total, _eq12_from_the_pieces(pipe, *batch, t_drawn, eps_drawn), rtol=1e-5)
        assert not torch.allclose(drawn.total, first.total)  # the draws differ from the fixed t and noise

        with pytest.raises(ValueError, match="one per batch item"):
            iedit.objective(pipe.unet, pipe.vae, pipe.scheduler, *batch, t=torch.tensor([1, 2, 3]))
        with pytest.raises(ValueError, match=r"in \[0, 1000\)"):
            iedit.objective(pipe.unet, pipe.vae, pipe.scheduler, *batch, t=1000)
        with pytest.raises(ValueError, match="integers"):
            iedit.objective(pipe.unet, pipe.vae, pipe.scheduler, *batch, t=0.5)
        with pytest.raises(ValueError, match="shaped like the latent"):
            iedit.objective(pipe.unet, pipe.vae, pipe.scheduler, *batch, eps1=eps1[:1])


def test_eq13_keeps_the_latent_outside_the_mask_equal_to_the_noised_source(random_pipe):
    e = world.edit_for("test", 2, "recolor")
    mask = np.zeros((64, 64), bool)
    mask[16:40, 16:40] = True
    r = iedit.edit(random_pipe, e.source_image(), e.target_caption, mask=mask, strength=0.7, steps=10,
                   generator=torch.Generator().manual_seed(0))
    trace = r.found["trace"]
    assert len(trace) == 7  # 0.7 of 10 steps
    for out, z_src, m in trace:
        assert torch.equal(out * (1 - m), z_src * (1 - m))
    assert (trace[0][2] == 0).any() and (trace[0][2] == 1).any()
    with pytest.raises(ValueError, match="the mask is 8x8 but the image is 64x64"):
        iedit.edit(random_pipe, e.source_image(), e.target_caption, mask=np.ones((8, 8)), steps=4)


def test_eq13_blends_the_model_latent_inside_and_the_source_noised_to_the_next_step_outside(random_pipe):
    """Eq. 13 recomputed: with z_1 the source latent and eps the one noise draw (the first of the
    generator), the start is z_1 noised to the first edited step, and after step i the background is
    z_1 noised to timestep t_(i+1) (the clean z_1 after the last step).  A full mask leaves every
    step to the model (plain DDIM from the same start); an empty mask gives back z_1 exactly."""
    e = world.edit_for("test", 2, "recolor")
    image, prompt, steps, strength = e.source_image(), e.target_caption, 6, 0.5
    run = lambda mask: iedit.edit(random_pipe, image, prompt, mask=mask, strength=strength, steps=steps,  # noqa: E731
                                  guidance=7.5, generator=torch.Generator().manual_seed(0))
    z1 = diffusion.encode_image(random_pipe, image)
    eps = diffusion.initial_noise(random_pipe, 1, torch.Generator().manual_seed(0))
    sched = diffusion.make_scheduler(random_pipe)
    sched.set_timesteps(steps)
    start = steps - round(strength * steps)

    empty = run(np.zeros((64, 64), bool))
    assert torch.equal(empty.latents, z1)
    trace = empty.found["trace"]
    for k, (out, z_src, m) in enumerate(trace[:-1]):
        assert torch.allclose(z_src, sched.add_noise(z1, eps, sched.timesteps[start + k + 1].reshape(1)), atol=1e-6), k
    assert torch.equal(trace[-1][1], z1)

    full = run(np.ones((64, 64), bool))
    zt = sched.add_noise(z1, eps, sched.timesteps[start].reshape(1))
    cond, uncond = diffusion.encode_prompt(random_pipe, [prompt]), diffusion.encode_prompt(random_pipe, [""])
    z, _ = diffusion.denoise(random_pipe, zt, cond, uncond, 7.5, steps, start=start)
    assert torch.allclose(full.latents, z, atol=1e-5)


def test_iedit_m_cuts_a_soft_mask_at_one_half(random_pipe):
    """A probability mask (0.05 outside, 0.95 inside) confines the edit like the hard mask does,
    instead of reading as "edit everywhere" (issue 18)."""
    e = world.edit_for("test", 2, "recolor")
    hard = np.zeros((64, 64), bool)
    hard[16:40, 16:40] = True
    r = iedit.edit(random_pipe, e.source_image(), e.target_caption, mask=np.where(hard, 0.95, 0.05), strength=0.5,
                   steps=4, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(r.masks["edit"], hard)
    latent_mask = r.found["trace"][0][2]
    assert (latent_mask == 0).any() and (latent_mask == 1).any()


class _StubVAE:
    """Latents are the images themselves (scaling 1): the objective's arithmetic in the open."""

    class config:
        scaling_factor = 1.0

    def encode(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    def decode(self, z):
        from types import SimpleNamespace

        return SimpleNamespace(sample=z)


class _StubUNet:
    def __call__(self, z_t, t, encoder_hidden_states=None):
        from types import SimpleNamespace

        return SimpleNamespace(sample=0.5 * z_t)


class _StubClip:
    def __init__(self, per_item):
        self.per_item = per_item

    def distance(self, x, texts):
        return self.per_item.to(x)


def test_eq12_weights_each_item_by_its_own_noise_level():
    """A hand-made batch of two: the objective equals mean_i[(1 - t_i/T) L_global,i + (t_i/T) L_noise,i]
    with L_LDM (Eq. 1, the source's own noise), L_paired and L_mask as the noise term."""
    from editnb.methods.iedit import losses

    sched = arch.new_scheduler()
    T = sched.config.num_train_timesteps
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(2, 3, 8, 8, generator=g)
    x2 = x1.clone()
    x2[1] += 4.0  # the second item's pseudo-target is far away: a much larger paired error
    m = torch.zeros(2, 1, 8, 8)
    m[..., 2:6, 2:6] = 1
    clip_d = torch.tensor([0.3, 0.9])
    seed = 5
    # what the objective draws with this seed, in its order
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, T, (2,), generator=gen)
    eps1 = torch.randn(x1.shape, generator=gen)
    assert abs(int(t[0]) - int(t[1])) > 100  # the two items sit at clearly different noise levels
    z_t = losses.noisy_source(sched, x1, t, eps1)
    eps2 = losses.target_noise(sched, z_t, x2, t)
    pred = 0.5 * z_t
    r = t.float() / T
    per_item = lambda e: e.flatten(1).mean(1)  # noqa: E731
    noise_of = {
        ("global", "ldm"): per_item((pred - eps1) ** 2),
        ("global",): per_item((pred - eps2) ** 2),
        ("global", "mask"): per_item((eps2 * m - pred * m) ** 2) + per_item((eps1 * (1 - m) - pred * (1 - m)) ** 2),
    }
    for use, noise in noise_of.items():
        terms = losses.objective(_StubUNet(), _StubVAE(), sched, _StubClip(clip_d), None, ["p", "p"], ["d", "d"],
                                 x1, x2, m, m, generator=torch.Generator().manual_seed(seed), use=use)
        expected = ((1 - r) * clip_d + r * noise).mean()
        assert torch.allclose(terms.total, expected, atol=1e-6), use
        batch_means = (1 - r).mean() * clip_d.mean() + r.mean() * noise.mean()  # the old, batch-mean weighting
        assert not torch.allclose(terms.total, batch_means, atol=1e-4), use
    ldm = losses.objective(_StubUNet(), _StubVAE(), sched, _StubClip(clip_d), None, ["p", "p"], ["d", "d"], x1, x2,
                           m, m, generator=torch.Generator().manual_seed(seed), use="L_global + L_LDM + L_loc")
    assert ldm.ldm > 0 and ldm.mask == 0


def test_table2_rows_and_bad_loss_terms():
    from editnb.methods.iedit import losses

    assert losses.check_use("L_global + L_LDM + L_loc + L_perc") == ("global", "ldm", "loc", "perc")
    assert losses.check_use("L_global + L_mask + L_loc + L_perc") == losses.DEFAULT_USE
    with pytest.raises(ValueError, match="one of 'mask' or 'ldm'"):
        losses.check_use(("mask", "ldm"))
    with pytest.raises(ValueError, match="unknown loss terms"):
        losses.check_use(("global", "vgg"))
    with pytest.raises(ValueError, match="unknown Table 2 row"):
        losses.check_use("L_global")
    with pytest.raises(ValueError, match="reduction"):
        losses.loss_ldm(torch.zeros(1, 1), torch.zeros(1, 1), reduction="sum")


def test_the_training_task_takes_a_table2_row_as_an_option():
    from types import SimpleNamespace

    from editnb.methods.iedit.task import IEditTask

    with pytest.raises(ValueError, match="unknown Table 2 row"):  # checked before the set-up's minutes
        IEditTask("cpu", SimpleNamespace(batch_size=1), 0, pairs=1, pool=1, use="L_global + L_LDM")


def test_caption_roles_mark_modifiers_head_nouns_and_nothing_for_stop_words():
    """Sec. 3.4's noun phrases, by hand: a content word followed by another is a modifier ("a"), the
    last one of a phrase its head ("n"); stop words and punctuation-only tokens get None; trailing
    punctuation does not stop a word from counting, and a comma ends a phrase."""
    from editnb.methods.iedit.masks import caption_roles, is_content

    assert caption_roles("a red circle on a white background".split()) == [None, "a", "n", None, None, "a", "n"]
    assert caption_roles("a red circle.".split()) == [None, "a", "n"]
    assert caption_roles("a small, blue circle".split()) == [None, "n", "a", "n"]
    assert is_content("circle!") and not is_content("the") and not is_content("3") and not is_content("on,")


def test_timesteps_are_integers_in_the_training_range_and_ldm_loss_defaults_to_the_mean():
    """t of Eq. 2 indexes the scheduler's training steps: 0 and T - 1 are valid, -1, T, floats and
    booleans are not; L_LDM (Eq. 1) is the mean squared error unless asked per item."""
    from editnb.methods.iedit.losses import _timesteps, loss_ldm

    assert _timesteps(0, 2, 1000).tolist() == [0, 0] and _timesteps(torch.tensor([0, 999]), 2, 1000).tolist() == [0, 999]
    for bad in (-1, 1000, torch.tensor([3, -2])):
        with pytest.raises(ValueError, match=r"timesteps t are in \[0, 1000\)"):
            _timesteps(bad, 2, 1000)
    for bad in (0.5, torch.tensor([True, False])):
        with pytest.raises(ValueError, match="integers"):
            _timesteps(bad, 2, 1000)
    a, b = torch.zeros(2, 1, 2, 2), torch.tensor([1.0, 3.0]).reshape(2, 1, 1, 1).expand(2, 1, 2, 2)
    assert loss_ldm(a, b).item() == pytest.approx(5.0)  # (1 + 9) / 2
    assert loss_ldm(a, b, reduction="none").tolist() == pytest.approx([1.0, 9.0])


def test_iedit_m_queries_clipseg_with_the_source_difference_words(monkeypatch):
    """iEdit-M's inference mask (Sec. 3.4): CLIPSeg of the SOURCE image on y_1^diff; on y_2^diff
    without its function words when the edit only adds words; no mask when nothing differs or
    CLIPSeg finds nothing (the edit then runs unmasked)."""
    from editnb.methods.iedit import masks

    asked = []
    found = np.zeros((4, 4), bool)
    found[1:3, 1:3] = True

    def clipseg_masks(clipseg, images, texts):
        asked.append((images[0], texts[0]))
        return np.stack([found if "circle" in texts[0] else np.zeros((4, 4), bool)])

    monkeypatch.setattr(masks, "clipseg_masks", clipseg_masks)
    src = np.zeros((4, 4, 3), np.uint8)
    m = masks.mask_for_item("clipseg", src, "a red circle on a white background", "a blue circle on a white background")
    assert np.array_equal(m, found) and asked[-1][0] is src and asked[-1][1] == "red circle"
    m = masks.mask_for_item("clipseg", src, "a white background", "a white background and a blue circle")
    assert asked[-1][1] == "blue circle" and np.array_equal(m, found)
    assert masks.mask_for_item("clipseg", src, "a red square", "a blue square") is None  # CLIPSeg found nothing
    n = len(asked)
    assert masks.mask_for_item("clipseg", src, "a red circle", "a red circle") is None and len(asked) == n


def test_reconstruction_psnr_by_hand():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a + 10
    assert diffusion.psnr(a, b) == pytest.approx(20 * np.log10(255 / 10))
    assert diffusion.psnr(a, a) == float("inf")
