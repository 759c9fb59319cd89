"""iEdit's dataset construction, losses (Eq. 2-13) and masked inference."""
import numpy as np
import pytest
import torch

from editnb import metrics as M
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
