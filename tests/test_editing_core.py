"""The editing core: Conditioning, the published batch layout, and the dual-branch editor."""
import pytest
import torch

from editnb import diffusion, editing, layout
from editnb.attention import attach
from editnb.attention.p2p import PromptToPrompt
from editnb.methods.p2p import prompt_to_prompt

SRC, TGT = "a red circle on a white background", "a blue circle on a white background"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def capture_unet_calls(unet):
    """Record (published layout, UNet sample, text states) of every UNet call."""
    calls = []

    def hook(module, args, kwargs):
        calls.append((layout.published(module), args[0], kwargs["encoder_hidden_states"]))

    return calls, unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_t2i_layout_names_the_rows_the_unet_sees(random_pipe):
    calls, handle = capture_unet_calls(random_pipe.unet)
    try:
        diffusion.text_to_image(random_pipe, [SRC, TGT], steps=2, generator=gen())
    finally:
        handle.remove()
    lay, _, states = calls[0]
    assert lay.guidance == ("uncond", "cond") and lay.cond_rows() == [2, 3]
    cond, empty = diffusion.encode_prompt(random_pipe, [SRC, TGT]), diffusion.encode_prompt(random_pipe, "")
    assert torch.equal(states[lay.rows(guidance="cond", branch="1")], cond[1:])
    assert all(torch.equal(states[r], empty[0]) for r in lay.rows(guidance="uncond"))
    assert layout.published(random_pipe.unet) is None  # withdrawn after the loop


def test_ip2p_layout_names_the_rows_the_unet_sees(random_ip2p):
    from PIL import Image

    calls, handle = capture_unet_calls(random_ip2p.unet)
    try:
        diffusion.instruct_pix2pix(random_ip2p, Image.new("RGB", (64, 64), "red"), "make it blue", steps=2,
                                   generator=gen())
    finally:
        handle.remove()
    lay, sample, states = calls[0]
    assert lay.guidance == ("cond", "image", "uncond")
    c = sample.shape[1] // 2
    uncond, image = lay.rows(guidance="uncond"), lay.rows(guidance="image")
    assert sample[uncond, c:].abs().max() == 0 and sample[image, c:].abs().max() > 0
    assert torch.equal(states[lay.cond_rows()], diffusion.encode_prompt(random_ip2p, "make it blue"))
    assert torch.equal(states[image], diffusion.encode_prompt(random_ip2p, ""))


def test_dual_branch_layout_and_no_control_gives_two_independent_samples(random_pipe):
    calls, handle = capture_unet_calls(random_pipe.unet)
    try:
        r = editing.dual_branch(random_pipe, SRC, TGT, steps=3, guidance=5.0, generator=gen(3))
    finally:
        handle.remove()
    lay, _, states = calls[0]
    assert lay == layout.BatchLayout(("uncond", "cond"), ("source", "target"))
    target_row = lay.rows(guidance="cond", branch="target")
    assert target_row == [3] and torch.equal(states[target_row], diffusion.encode_prompt(random_pipe, TGT))
    noise = diffusion.initial_noise(random_pipe, 1, gen(3))
    for k, prompt in enumerate((SRC, TGT)):
        alone = diffusion.text_to_image(random_pipe, prompt, guidance=5.0, steps=3, latents=noise).latents
        # a batch of four rounds float32 convolutions differently from a batch of two (up to 2e-5
        # measured on latents reaching 11); the branches themselves differ by order 1
        assert torch.allclose(r.latents[k:k + 1], alone, atol=1e-4)
    assert not torch.allclose(r.latents[0], r.latents[1])


def test_constant_guidance_map_equals_the_scalar_and_a_split_map_guides_each_half(random_pipe):
    z = diffusion.initial_noise(random_pipe, 1, gen(1))
    cond, uncond = diffusion.encode_prompt(random_pipe, SRC), diffusion.encode_prompt(random_pipe, "")
    h, w = z.shape[-2:]

    def one_step(g):  # the last step of a 4-step schedule: one UNet call, one update
        c = diffusion.Conditioning(cond, uncond, g)
        return diffusion.denoise(random_pipe, z, c, steps=4, start=3)[0]

    assert torch.equal(one_step(torch.full((1, 1, h, w), 5.0)), one_step(5.0))
    split = torch.full((1, 1, h, w), 1.0)
    split[..., w // 2:] = 5.0
    mixed, low, high = one_step(split), one_step(1.0), one_step(5.0)
    assert torch.equal(mixed[..., :w // 2], low[..., :w // 2]) and torch.equal(mixed[..., w // 2:], high[..., w // 2:])
    assert not torch.allclose(low, high)
    with pytest.raises(ValueError, match="does not broadcast"):
        one_step(torch.ones(1, 1, h + 1, w))


def test_region_noise_is_zero_outside_its_region_and_shared_by_both_branches(random_pipe):
    steps = 4
    region = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    region[..., 4:10, 4:10] = True
    last_only = lambda i, t, z: region if i == steps - 1 else None  # noqa: E731
    plain = editing.dual_branch(random_pipe, SRC, SRC, steps=steps, generator=gen(2)).latents
    noisy = editing.dual_branch(random_pipe, SRC, SRC, steps=steps, generator=gen(2), noise=last_only).latents
    diff = (noisy - plain).abs().amax(1, keepdim=True)
    assert diff[~region.expand_as(diff)].max() == 0 and diff[region.expand_as(diff)].min() > 0
    # the same prompt in both branches and the same noise: the branches stay equal
    assert torch.equal(noisy[0], noisy[1])
    with pytest.raises(ValueError, match="DDIM"):
        editing.dual_branch(random_pipe, SRC, TGT, steps=2, scheduler="dpm++", noise=last_only)


def test_dpm_solver_dual_branch_runs_and_matches_its_plain_sample(random_pipe):
    r = editing.dual_branch(random_pipe, SRC, TGT, steps=4, guidance=5.0, generator=gen(4), scheduler="dpm++")
    noise = diffusion.initial_noise(random_pipe, 1, gen(4))
    alone = diffusion.text_to_image(random_pipe, SRC, guidance=5.0, steps=4, latents=noise, scheduler="dpm++")
    # random weights give latents of magnitude ~30: compare relative to that (batch of 4 vs 2)
    assert torch.isfinite(r.latents).all() and torch.allclose(r.latents[:1], alone.latents, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(r.latents[1:], alone.latents, rtol=1e-2, atol=1e-2)


def test_direct_inversion_holds_the_source_branch_on_the_trajectory(random_pipe):
    from PIL import Image

    image = Image.new("RGB", (64, 64), "white")
    r = editing.dual_branch(random_pipe, SRC, TGT, steps=3, image=image, inversion="direct")
    assert torch.equal(r.latents[:1], r.found["inversion"][0])
    free = editing.dual_branch(random_pipe, SRC, TGT, steps=3, image=image, inversion="ddim")
    assert not torch.equal(free.latents[:1], free.found["inversion"][0])


def _p2p_before_the_editor(pipe, prompts, steps, generator, image, blend_words, guidance=5.0):
    """Prompt-to-Prompt as methods/p2p.py ran it before the dual-branch editor (direct inversion)."""
    ctrl = PromptToPrompt(pipe.tokenizer, prompts, steps, blend_words=blend_words).configure(pipe.unet)
    cond, uncond = diffusion.encode_prompt(pipe, prompts), diffusion.encode_prompt(pipe, ["", ""])
    trajectory = None
    if image is None:
        z = diffusion.initial_noise(pipe, 1, generator).repeat(2, 1, 1, 1)
    else:
        trajectory = diffusion.ddim_invert(pipe, image, prompts[0], steps)
        z = trajectory[-1].repeat(2, 1, 1, 1)

    def on_step(i, t, latents):
        out = ctrl.local_blend(i, t, latents)
        latents = out if out is not None else latents
        return latents if trajectory is None else torch.cat([trajectory[steps - i - 1], latents[1:]])

    with attach(pipe.unet, ctrl):
        return diffusion.denoise(pipe, z, cond, uncond, guidance, steps, on_step=on_step)[0], ctrl.last_mask


@pytest.mark.parametrize("real", [False, True])
def test_p2p_on_the_editor_gives_the_latents_of_the_old_loop(random_pipe, real):
    from PIL import Image

    image = Image.new("RGB", (64, 64), "white") if real else None
    blend = ("circle", "circle")
    old, old_mask = _p2p_before_the_editor(random_pipe, [SRC, TGT], 4, gen(5), image, blend)
    new = prompt_to_prompt(random_pipe, SRC, TGT, steps=4, generator=gen(5), image=image, blend_words=blend,
                           guidance=5.0)
    assert torch.equal(new.latents, old) and torch.equal(new.found["controller"].last_mask, old_mask)
    assert new.masks["blend"].dtype == bool and new.masks["blend"].shape == old_mask.shape[-2:]


def test_ip_adapter_embeddings_give_diffusers_own_image():
    from editnb import models

    pipe = models.load("ip-adapter", profile="toy")
    from PIL import Image

    device = diffusion.execution_device(pipe)
    both = pipe.prepare_ip_adapter_image_embeds(Image.new("RGB", (64, 64), "blue"), None, device, 1, True)[0]
    negative, embeds = both.chunk(2)
    noise = diffusion.initial_noise(pipe, 1, gen(6))
    ours = diffusion.text_to_image(pipe, SRC, guidance=5.0, steps=4, latents=noise, image_embeds=[embeds]).latents
    theirs = pipe(SRC, num_inference_steps=4, guidance_scale=5.0, latents=noise.clone(), output_type="latent",
                  ip_adapter_image_embeds=[both]).images
    assert torch.allclose(ours, theirs, atol=1e-5)
    without = diffusion.text_to_image(pipe, SRC, guidance=5.0, steps=4, latents=noise, image_embeds=[negative]).latents
    assert not torch.allclose(ours, without, atol=1e-3)  # the embeddings reach the UNet


def test_local_blend_map_is_what_its_mask_thresholds(random_pipe):
    """``last_map`` (the accumulated blend-word attention, scaled to its maximum, source and target
    united) is the picture of the local-blend mask: thresholding it gives ``last_mask`` exactly."""
    r = prompt_to_prompt(random_pipe, SRC, TGT, steps=4, generator=gen(5), blend_words=("circle", "circle"))
    ctrl = r.found["controller"]
    assert ctrl.last_map.shape == ctrl.last_mask.shape
    assert float(ctrl.last_map.min()) >= 0 and float(ctrl.last_map.max()) == pytest.approx(1.0)
    assert torch.equal((ctrl.last_map > ctrl.blend_threshold).to(ctrl.last_mask.dtype), ctrl.last_mask)
    ctrl.reset()
    assert ctrl.last_map is None and ctrl.last_mask is None


def test_sdedit_is_ddim_from_the_image_noised_to_its_strength(random_pipe):
    """SDEdit (Meng et al. 2022) recomputed: z_0 = E(image), one noise draw from the generator,
    z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps at the first of the last strength x steps, then guided
    DDIM with the prompt against the empty prompt from that step on."""
    import numpy as np

    image = np.full((64, 64, 3), 120, np.uint8)
    image[20:40, 20:40] = (200, 30, 30)
    steps, strength, guidance = 6, 0.5, 5.0
    r = diffusion.sdedit(random_pipe, image, "a blue square", strength=strength, guidance=guidance, steps=steps,
                         generator=torch.Generator().manual_seed(3))
    z0 = diffusion.encode_image(random_pipe, image)
    eps = diffusion.initial_noise(random_pipe, 1, torch.Generator().manual_seed(3))
    sched = diffusion.make_scheduler(random_pipe, "ddim")
    sched.set_timesteps(steps)
    start = steps - diffusion.strength_steps(strength, steps)
    a = sched.alphas_cumprod[sched.timesteps[start]]
    zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
    z, _ = diffusion.denoise(random_pipe, zt, diffusion.encode_prompt(random_pipe, ["a blue square"]),
                             diffusion.encode_prompt(random_pipe, [""]), guidance, steps, "ddim", start=start)
    assert start == 3 and torch.allclose(r.latents, z, atol=1e-5)
    assert np.asarray(r.image).shape == (64, 64, 3)


@pytest.mark.parametrize("strength, message", [(0.0, r"strength must be in \(0, 1\], got 0.0"),
                                               (1.5, r"strength must be in \(0, 1\], got 1.5"),
                                               ("strong", r"strength must be a number, e.g. strength=0.6")])
def test_sdedit_strength_is_a_fraction_of_the_schedule(random_pipe, strength, message):
    side = random_pipe.unet.config.sample_size
    z0 = torch.zeros(1, 4, side, side)
    with pytest.raises(ValueError, match=message):
        diffusion.noise_to_strength(random_pipe, z0, strength, 10, None)
    zt, start = diffusion.noise_to_strength(random_pipe, z0, 1.0, 10, torch.Generator().manual_seed(0))
    assert start == 0  # strength 1: the whole schedule, from pure noise


def test_instruct_pix2pix_conditions_on_the_unscaled_image_latents_and_the_empty_instruction(random_ip2p, monkeypatch):
    """Brooks et al. 2023, Eq. 3: the three predictions need the instruction's states, the empty
    instruction's (c_T = empty) and the source latents as the image condition c_I, which InstructPix2Pix
    concatenates UNSCALED (the VAE mode, no scaling factor); s_T = 7.5 and s_I = 1.5, 50 steps, DDIM
    by default; the generator and scheduler reach the sampler; the final latent comes back."""
    calls = {}
    monkeypatch.setattr(diffusion, "encode_image", lambda pipe, image, scaled: calls.update(scaled=scaled) or torch.zeros(2, 4, 8, 8))
    encoded = []  # the prompts of each encode_prompt call; states (n, 3, 2) holding the call's index
    monkeypatch.setattr(diffusion, "encode_prompt", lambda pipe, prompts: encoded.append(list(prompts)) or
                        torch.full((len(prompts), 3, 2), float(len(encoded) - 1)))
    monkeypatch.setattr(diffusion, "starting_noise", lambda pipe, n, gen, steps, sched: calls.update(n=n, gen=gen, sched0=sched) or "z_T")
    monkeypatch.setattr(diffusion, "denoise", lambda pipe, z, c, steps, scheduler, on_step: calls.update(
        z=z, c=c, steps=steps, sched=scheduler, on_step=on_step) or ("z_0", None))
    monkeypatch.setattr(diffusion, "decode", lambda pipe, z: ["image"])
    gen, hook = torch.Generator(), lambda *a: None
    r = diffusion.instruct_pix2pix(random_ip2p, "two images", ["make it red", "make it blue"], generator=gen, on_step=hook)
    c = calls["c"]
    assert calls["scaled"] is False and encoded == [["make it red", "make it blue"], ["", ""]]
    assert (c.cond == 0).all() and (c.uncond == 1).all()  # the instructions' states, then the empty ones
    assert (c.guidance, c.image_guidance) == (7.5, 1.5) and c.image_latents.shape == (2, 4, 8, 8)
    assert (calls["n"], calls["gen"], calls["sched0"], calls["z"]) == (2, gen, "ddim", "z_T")
    assert (calls["steps"], calls["sched"], calls["on_step"]) == (50, "ddim", hook)
    assert r.latents == "z_0" and r.images == ["image"]
    diffusion.instruct_pix2pix(random_ip2p, "two images", ["a", "b"], text_guidance=5.0, image_guidance=1.2, steps=9,
                               scheduler="dpm")
    assert (calls["c"].guidance, calls["c"].image_guidance, calls["steps"], calls["sched"], calls["sched0"]) == (5.0, 1.2, 9, "dpm", "dpm")
    with pytest.raises(ValueError, match=r"^3 instructions for 2 images; pass one instruction per image"):
        diffusion.instruct_pix2pix(random_ip2p, "two images", ["a", "b", "c"])
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        diffusion.instruct_pix2pix(random_ip2p, "two images", ["a", "b"], generator=1)


def test_instruct_pix2pix_refuses_a_unet_without_image_channels_naming_both_counts(random_pipe):
    with pytest.raises(ValueError, match=r"^this pipeline's UNet does not take an input image \(InstructPix2Pix UNets "
                                         r"have 8 input channels, this one 4\); load the 'ip2p' model$"):
        diffusion.instruct_pix2pix(random_pipe, torch.zeros(1, 3, 64, 64), "make it red")


def test_sdedit_hands_its_scheduler_generator_and_hook_to_both_halves(random_pipe, monkeypatch):
    """SDEdit = noise to the strength with the chosen sampler's schedule, then denoise from there with
    the same sampler; the generator draws the noise, the hook sees every step; a bad generator is
    refused first."""
    calls = {}
    monkeypatch.setattr(diffusion, "noise_to_strength", lambda pipe, z0, strength, steps, gen, sched: calls.update(
        strength=strength, gen=gen, sched0=sched) or ("z_t", 3))
    monkeypatch.setattr(diffusion, "denoise", lambda pipe, z, cond, uncond, guidance, steps, scheduler, start, on_step: calls.update(
        z=z, sched=scheduler, start=start, on_step=on_step, guidance=guidance, steps=steps) or (torch.zeros(1, 4, 8, 8), None))
    gen, hook = torch.Generator(), lambda *a: None
    diffusion.sdedit(random_pipe, torch.zeros(1, 3, 64, 64), "a red circle", strength=0.4, steps=7, generator=gen,
                     scheduler="dpm", on_step=hook)
    assert (calls["strength"], calls["gen"], calls["sched0"]) == (0.4, gen, "dpm")
    assert (calls["z"], calls["sched"], calls["start"], calls["on_step"], calls["steps"], calls["guidance"]) == (
        "z_t", "dpm", 3, hook, 7, 7.5)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        diffusion.sdedit(random_pipe, torch.zeros(1, 3, 64, 64), "a red circle", generator="seed 0")
