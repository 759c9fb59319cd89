"""Issue "nothing silently wrong, round two": each case of the issue that ran to a wrong result or
failed where the user cannot act; each test asserts the right result or an error that says what was
wrong before any compute.  Random-weight toy pipelines."""
import math

import numpy as np
import pytest
import torch

from editnb import diffusion
from editnb.methods.p2p import prompt_to_prompt


def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def unet_never_runs(random_pipe, monkeypatch):
    """Fails the test if the UNet is called: the argument must be refused before any sampling."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the UNet ran before the bad argument was refused")

    monkeypatch.setattr(random_pipe.unet, "forward", forbidden)
    return random_pipe


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize("value, message", [(math.nan, "must be finite"), (math.inf, "must be finite"),
                                            ("7.5", "must be a number"), (None, "must be a number"),
                                            (True, "must be a number"), ([1.0, math.nan], "finite numbers")])
def test_guidance_must_be_finite_numbers_before_any_sampling(unet_never_runs, value, message):
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=f"guidance.*{message}"):
        diffusion.sdedit(unet_never_runs, image, "a red circle", guidance=value, steps=4, generator=gen())
    with pytest.raises(ValueError, match=f"guidance.*{message}"):
        diffusion.text_to_image(unet_never_runs, ["a red circle"], guidance=value, steps=2, generator=gen())
    with pytest.raises(ValueError, match=f"guidance.*{message}"):  # with an image: before its inversion
        prompt_to_prompt(unet_never_runs, "a red circle", "a blue circle", guidance=value, steps=2, image=image)


@pytest.mark.parametrize("value, message", [(math.nan, "must be finite"), ("abc", "must be a number")])
def test_strength_must_be_a_finite_number(unet_never_runs, value, message):
    with pytest.raises(ValueError, match=f"strength {message}"):
        diffusion.sdedit(unet_never_runs, np.zeros((64, 64, 3), np.uint8), "a red circle", strength=value, steps=2)


def test_one_step_from_noise_is_refused_because_ddims_leading_spacing_runs_only_t_1(unet_never_runs):
    """SD 1.5's DDIM spacing is "leading" with steps_offset 1: steps=N runs t = 1 + k*1000/N, so a
    one-step schedule is t = 1 alone, and sampling would hand back the noise."""
    sched = diffusion.make_scheduler(unet_never_runs)
    sched.set_timesteps(1)
    assert sched.timesteps.tolist() == [1]
    sched.set_timesteps(4)
    assert sched.timesteps.tolist() == [751, 501, 251, 1]
    with pytest.raises(ValueError, match="steps=1 starts sampling at t=1 of 1000"):
        diffusion.text_to_image(unet_never_runs, ["a red circle"], steps=1, generator=gen())


def test_one_step_instructpix2pix_is_refused(random_ip2p, monkeypatch):
    monkeypatch.setattr(random_ip2p.unet, "forward", lambda *a, **k: pytest.fail("the UNet ran"))
    with pytest.raises(ValueError, match="steps >= 2"):
        diffusion.instruct_pix2pix(random_ip2p, np.zeros((64, 64, 3), np.uint8), "make it red", steps=1)


@pytest.mark.parametrize("strength, steps", [(0.6, 1), (1.0, 1), (0.3, 4), (0.05, 20)])
def test_sdedit_that_would_start_at_t_1_is_refused(unet_never_runs, strength, steps):
    """round(strength * steps) steps start at t = 1 + (run - 1) * 1000 / steps: one step adds no noise."""
    assert diffusion.strength_steps(strength, steps) == 1
    with pytest.raises(ValueError, match=f"runs 1 denoising step.*unchanged; raise steps to at least {math.ceil(1.5 / strength)}"):
        diffusion.sdedit(unet_never_runs, np.zeros((64, 64, 3), np.uint8), "a red circle", strength=strength,
                         steps=steps, generator=gen())


def test_sdedit_noises_to_the_first_of_its_steps(random_pipe):
    """strength 0.5 of 4 steps runs the last two, from t = 251: the latent is q(z_251 | z_0)."""
    z0 = torch.zeros(diffusion.latent_shape(random_pipe, 1))
    zt, start = diffusion.noise_to_strength(random_pipe, z0, 0.5, 4, gen())
    alpha_bar = random_pipe.scheduler.alphas_cumprod[251]
    assert start == 2
    torch.testing.assert_close(zt, (1 - alpha_bar).sqrt() * diffusion.initial_noise(random_pipe, 1, gen()))


def test_a_per_pixel_guidance_map_of_finite_numbers_still_runs(random_pipe):
    """The check keeps what guidance may be: a number per item, or a map (ViMAEdit's, LIME's)."""
    out = diffusion.text_to_image(random_pipe, ["a red circle", "a blue square"], guidance=torch.tensor([1.0, 7.5]),
                                  steps=2, generator=gen())
    assert len(out.images) == 2


# ------------------------------------------------------------------ set-up, loading, training arguments


def test_setup_refuses_profile_none_and_load_refuses_a_device_this_machine_lacks():
    import editnb
    from editnb import models

    with pytest.raises(ValueError, match="unknown profile None"):
        editnb.setup(profile=None, verbose=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available; use device='cpu'"):
            models.load("sd", profile="toy", device="cuda")


@pytest.mark.parametrize("setting, message", [({"batch_size": 0}, "--batch-size must be a positive integer"),
                                              ({"steps": -1}, "--steps must be a positive integer"),
                                              ({"lr": float("nan")}, "lr must be finite"),
                                              ({"ema_decay": 1.5}, r"--ema-decay must be in \(0, 1\)")])
def test_training_arguments_are_checked_before_any_model_is_built(tmp_path, setting, message):
    from editnb.toy.train import train

    with pytest.raises(ValueError, match=message):
        train("vae", work_dir=tmp_path / "work", export=False, **{"steps": 2, "batch_size": 2, **setting})
    assert not (tmp_path / "work").exists()


def test_training_without_out_never_replaces_a_shipped_model(tmp_path):
    from editnb.models import models_dir
    from editnb.toy.train import train

    shipped = models_dir() / "toy-vae" / "training.json"
    before = shipped.read_bytes()
    train("vae", steps=1, batch_size=2, work_dir=tmp_path / "work", checkpoint_minutes=0)
    assert shipped.read_bytes() == before
    assert (tmp_path / "work" / "out" / "toy-vae" / "training.json").exists()


def test_a_wrongly_typed_option_is_one_line_naming_it(capsys, tmp_path):
    from editnb import cli

    code = cli.main(["bench", "run", "--method", "sdedit", "--out", str(tmp_path / "run"), "--limit", "1",
                     "--steps", "2", "--option", "strength=abc"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "strength must be a number" in err


# ------------------------------------------------------------------ words and tokens


@pytest.mark.parametrize("prompt, word", [
    ("a crème brûlée next to a dog", "dog"), ("a café au lait beside a cat", "cat"),
    ("the dog's toy and a red ball", "ball"), ("a t-shirt with 42 stars on a flag", "flag"),
    ("naïve art: a fox, a hen (and eggs)", "eggs"), ("straße in münchen with a tram", "tram"),
])
def test_words_align_with_the_real_clip_tokenizer_beyond_ascii(prompt, word):
    """Each word's token positions hold exactly the tokens CLIP gives that word inside the prompt."""
    from editnb.attention.words import token_indices, word_tokens
    from editnb.clip_bpe import clip_tokenizer

    tok = clip_tokenizer()
    ids = tok(prompt).input_ids  # [start, ..., end]
    words = word_tokens(tok, prompt)
    assert words[-1][1][-1] == len(ids) - 2  # the words cover every token between start and end
    for w, positions in words:
        assert tok.decode(ids[positions[0]:positions[-1] + 1]).replace(" ", "") == w.replace(" ", ""), (w, positions)
    assert tok.decode([ids[i] for i in token_indices(tok, prompt, word)]).strip() == word


def test_a_photo_with_an_exif_orientation_is_loaded_upright(tmp_path):
    from PIL import Image

    from editnb import images

    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display", as a phone held upright writes it
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = images.to_numpy(tmp_path / "phone.jpg")
    assert upright.shape == (60, 40, 3)  # turned: portrait
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50  # the band is now on top
    assert images.to_numpy(Image.open(tmp_path / "phone.jpg")).shape == (60, 40, 3)  # an opened PIL image too


def test_a_capitalised_blended_word_keeps_p2ps_local_blend(random_pipe, monkeypatch):
    """PIE-Bench's blended_word "Triangle Triangle" is the prompts' "triangle": the p2p method blends
    on it, as p2p-pie and vimaedit do (all three read blend words through present_blend_words)."""
    from types import SimpleNamespace

    from editnb.methods import baselines

    seen = {}
    monkeypatch.setattr(baselines, "prompt_to_prompt",
                        lambda *a, **kw: seen.update(kw) or SimpleNamespace(images=[None, "edited"]))
    item = SimpleNamespace(source_prompt="a red triangle", target_prompt="a blue triangle", image=None,
                           blend_words=("Triangle", "Triangle"))
    ctx = SimpleNamespace(model=lambda name: random_pipe)
    assert baselines.run_p2p(ctx, item, gen(), 2) == "edited"
    assert seen["blend_words"] == (["Triangle"], ["Triangle"])


@pytest.mark.parametrize("width", [1, 2])
def test_a_lime_mask_thinner_than_an_attention_cell_is_dilated_with_a_warning_not_dropped(random_ip2p, width):
    """A 1-pixel line or 2-pixel stripe vanished when pooled to the attention resolution and the
    output was plain InstructPix2Pix's, bit for bit."""
    from editnb.methods import lime

    image = np.full((64, 64, 3), 128, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[30:30 + width, 10:50] = True
    with pytest.warns(UserWarning, match="dilated to the"):
        limed = lime.edit(random_ip2p, image, "make the circle blue", mask=mask, steps=2, generator=gen()).image
    plain = diffusion.instruct_pix2pix(random_ip2p, image, "make the circle blue", text_guidance=2.0, steps=2,
                                       generator=gen()).image
    assert not np.array_equal(np.asarray(limed), np.asarray(plain))


def test_an_edit_pair_of_two_sizes_is_aligned_before_clips_centre_crop():
    """Each image of a pair through CLIP's processor alone crops two different regions when their
    aspect ratios differ; the edited image is resized to its input's size first (stretched, with a
    warning, when the ratios differ)."""
    from PIL import Image

    from editnb.methods import editclip
    from editnb.toy import world

    encoder = editclip.load_editor("toy", device="cpu", dtype=torch.float32).encoder
    e = world.edit_for("test", 5, "recolor")
    src, dst = e.source_image(), e.edited_image()
    wide = np.asarray(Image.fromarray(dst).resize((96, 64), Image.BICUBIC))  # another aspect ratio
    with pytest.warns(UserWarning, match="another aspect ratio; it was stretched"):
        got = encoder.pixels([src], [wide])
    back = np.asarray(Image.fromarray(wide).resize((64, 64), Image.BICUBIC))
    assert torch.equal(got, encoder.pixels([src], [back]))  # the pair as if the edited image had its input's size
    big = np.asarray(Image.fromarray(dst).resize((128, 128), Image.BICUBIC))  # same ratio: no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.pixels([src], [big])


# ------------------------------------------------------------------ controllers that meet


def test_a_store_around_prompt_to_prompt_records_every_layer_and_sees_p2ps_maps(random_pipe):
    """An AttentionStore attached around prompt_to_prompt missed every layer where P2P computes the
    maps itself (7 of 28 per step).  Nested, the store runs after P2P: at a cross-replace step the
    target's cross-attention it records IS the source's (a word swap of equal length copies it)."""
    from editnb.attention import AttentionStore, attach

    store = AttentionStore(kinds=("cross", "self"))
    n_layers = len(random_pipe.unet.attn_processors)
    with attach(random_pipe.unet, store):
        prompt_to_prompt(random_pipe, "a red circle", "a blue circle", steps=3, generator=gen(), cross_replace=1.0)
    for step in range(3):
        assert len({layer for layer, s in store.maps if s == step}) == n_layers
    for layer in store.layers("cross"):
        source, target = store.maps[(layer, 0)]  # the conditional rows: [source, target]
        assert torch.allclose(source, target), layer


def test_contexts_closed_out_of_order_leave_the_unets_own_processors(random_pipe):
    from editnb.attention import AttentionStore, ObservedAttnProcessor, attach

    own = dict(random_pipe.unet.attn_processors)
    outer, inner = attach(random_pipe.unet, AttentionStore()), attach(random_pipe.unet, AttentionStore())
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # the outer one first
    assert all(isinstance(p, ObservedAttnProcessor) for p in random_pipe.unet.attn_processors.values())
    inner.__exit__(None, None, None)
    assert not any(isinstance(p, ObservedAttnProcessor) for p in random_pipe.unet.attn_processors.values())
    assert {k: type(v) for k, v in random_pipe.unet.attn_processors.items()} == {k: type(v) for k, v in own.items()}


def test_an_instructpix2pix_pipeline_given_to_a_text_to_image_method_is_refused_by_name(random_ip2p):
    image = np.zeros((64, 64, 3), np.uint8)
    for run in (lambda: diffusion.sdedit(random_ip2p, image, "a red circle", steps=4),
                lambda: diffusion.text_to_image(random_ip2p, ["a red circle"], steps=2),
                lambda: prompt_to_prompt(random_ip2p, "a red circle", "a blue circle", steps=2, image=image)):
        with pytest.raises(ValueError, match="an InstructPix2Pix UNet .* needs a text-to-image pipeline"):
            run()


def test_vimaedit_without_image_guidance_runs_on_a_pipeline_with_an_ip_adapter():
    """Its docstring says any SD pipeline works with image_guidance=False; with the adapter loaded it
    failed deep in diffusers.  It gives the same edit as the same UNet without the adapter."""
    from editnb import models
    from editnb.methods.vimaedit import edit as vm

    with_adapter, plain = models.load("ip-adapter", profile="toy", device="cpu", dtype=torch.float32), \
        models.load("sd", profile="toy", device="cpu", dtype=torch.float32)
    args = ("a red circle", "a blue circle", None, ("circle", "circle"))
    a = vm.vimaedit(with_adapter, *args, image_guidance=False, steps=3, generator=gen()).images[1]
    b = vm.vimaedit(plain, *args, image_guidance=False, steps=3, generator=gen()).images[1]
    assert np.abs(np.asarray(a, float) - np.asarray(b, float)).max() <= 1


def test_adapter_scale_restores_the_cached_pipelines_scale():
    """diffusers writes the new scale into each processor's list in place; restoring the saved
    lists themselves left every later use of the cached pipeline at the edit's weight."""
    from editnb import models
    from editnb.methods.vimaedit.embeddings import adapter_scale

    pipe = models.load("ip-adapter", profile="toy", device="cpu", dtype=torch.float32)
    scales = lambda: [list(p.scale) for p in pipe.unet.attn_processors.values() if hasattr(p, "scale")]  # noqa: E731
    before = scales()
    with adapter_scale(pipe, 0.25):
        assert all(s == [0.25] for s in scales())
    assert scales() == before


def test_sampling_keeps_no_autograd_graph(random_pipe):
    """Every sampler runs without gradients: a graph kept by the result holds every step's attention
    (gigabytes over a chapter's edits)."""
    out = diffusion.text_to_image(random_pipe, ["a red circle"], steps=2, generator=gen())
    assert out.latents.grad_fn is None and not out.latents.requires_grad
    p2p = prompt_to_prompt(random_pipe, "a red circle", "a blue circle", steps=2, image=np.zeros((64, 64, 3), np.uint8))
    assert p2p.latents.grad_fn is None


# ------------------------------------------------------------------ non-square generation


def test_a_non_square_generation_names_each_level_and_aggregates_its_maps(random_pipe):
    """toy-sd's own latents are 16x16 (64 px, VAE factor 4); a 48x80-px image has 12x20 latents, so
    its levels are 12x20, 6x10 and 3x5 (the UNet halves them), named 16, 8 and 4 as at 64 px, where
    isqrt(queries) would have called them 15, 7 and 3."""
    from editnb.attention import AttentionStore, attach

    store = AttentionStore(max_self_resolution=None)
    with attach(random_pipe.unet, store):
        out = diffusion.text_to_image(random_pipe, ["a red circle"], steps=2, generator=gen(), size=(48, 80))
    assert np.asarray(out.images[0]).shape[:2] == (48, 80)
    expected = {16: (12, 20), 8: (6, 10), 4: (3, 5)}
    assert store.sites and {s.resolution: s.hw for s in store.sites.values()}.items() <= expected.items()
    assert store.aggregate("cross", resolution=8).shape[1:3] == (6, 10)
    assert store.aggregate("self", resolution=8).shape[1:] == (6, 10, 60)


def test_prompt_to_prompt_blends_a_non_square_pair_at_its_own_shape(random_pipe):
    out = prompt_to_prompt(random_pipe, "a red circle", "a blue circle", blend_words=("circle", "circle"),
                           steps=3, generator=gen(), size=(48, 80))
    assert out.latents.shape[-2:] == (12, 20) and out.masks["blend"].shape == (12, 20)
    with pytest.raises(ValueError, match="size is for generated pairs"):
        prompt_to_prompt(random_pipe, "a red circle", "a blue circle", steps=3, size=(48, 80),
                         image=np.zeros((64, 64, 3), np.uint8))


@pytest.mark.parametrize("size", [(50, 80), (48,), "48x80", (48, 0)])
def test_a_bad_size_is_refused_before_sampling(unet_never_runs, size):
    with pytest.raises(ValueError, match=r"size must be \(height, width\) in pixels, each a positive multiple of 4"):
        diffusion.text_to_image(unet_never_runs, ["a red circle"], steps=2, generator=gen(), size=size)


def test_a_unet_with_a_non_square_sample_size_generates_at_it(random_pipe):
    from editnb.images import model_resolution

    config = dict(random_pipe.unet.config)
    random_pipe.unet.register_to_config(sample_size=(12, 20))
    try:
        assert diffusion.latent_shape(random_pipe, 1) == (1, 4, 12, 20)
        out = diffusion.text_to_image(random_pipe, ["a red circle"], steps=2, generator=gen())
        assert np.asarray(out.images[0]).shape[:2] == (48, 80)
        with pytest.raises(ValueError, match="12x20 latents, not square"):
            model_resolution(random_pipe)
    finally:
        random_pipe.unet.register_to_config(sample_size=config["sample_size"])
