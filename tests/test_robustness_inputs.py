"""Issue 18, "nothing silently wrong": images, masks, prompts and arguments of the library calls.

Each test is a case of the issue that gave a wrong result or an unclear error; it asserts the
right result or an error that says what was wrong and how to fix it.  Random-weight toy
pipelines, two steps."""
import numpy as np
import pytest
import torch
from PIL import Image

import editnb
from editnb import diffusion, images, models, runtime
from editnb.methods import lime
from editnb.methods.p2p import prompt_to_prompt


def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def scene():
    from editnb.toy import world

    return Image.fromarray(world.edit_for("test", 0, "recolor").source_image())


# ------------------------------------------------------------------ images


def test_tensors_in_0_1_warn_and_uint8_tensors_convert(scene):
    arr = np.array(scene)
    u8 = torch.from_numpy(arr).permute(2, 0, 1)
    assert np.array_equal(images.to_numpy(u8), arr)  # was clamped as if in [-1, 1]: all white
    with pytest.warns(UserWarning, match=r"no negative values .* x \* 2 - 1"):
        images.to_numpy(u8.float() / 255)
    with pytest.raises(ValueError, match=r"float image tensors are in \[-1, 1\].* x / 127.5 - 1"):
        images.to_numpy(u8.float())


def test_pil_to_tensor_output_goes_back_into_a_method(scene, random_pipe):
    t = images.pil_to_tensor(scene)  # (1, 3, H, W): a list came back before
    assert np.array_equal(images.to_numpy(t), np.asarray(scene))
    assert torch.allclose(diffusion.encode_image(random_pipe, t), diffusion.encode_image(random_pipe, scene))
    with pytest.raises(ValueError, match="a batch of 2 images"):
        images.load_image(torch.cat([t, t]))


def test_16_bit_greyscale_png_keeps_its_greys(tmp_path):
    grey = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    rgb = images.to_numpy(tmp_path / "g16.png")
    assert rgb.shape == (64, 64, 3) and abs(rgb.mean() - 127.5) < 1 and rgb.min() == 0 and rgb.max() == 255
    assert np.array_equal(images.to_numpy(grey), rgb)  # uint16 arrays too


# ------------------------------------------------------------------ masks


def soft_mask(size=64):
    m = np.full((size, size), 0.05, np.float32)
    m[16:40, 20:44] = 0.95
    return m


def test_soft_masks_are_cut_at_one_half():
    hard = images.as_mask(soft_mask())
    assert hard.dtype == bool and hard.sum() == 24 * 24 and hard[16:40, 20:44].all()
    assert np.array_equal(images.as_mask((soft_mask() * 255).astype(np.uint8)), hard)
    assert np.array_equal(images.as_mask(torch.from_numpy(soft_mask())[None, None]), hard)
    with pytest.raises(ValueError, match="apply a sigmoid"):
        images.as_mask(soft_mask() * 8 - 4)
    with pytest.raises(ValueError, match="must be 32x32"):
        images.as_mask(soft_mask(), shape=(32, 32))


def test_lime_reads_soft_masks_and_mask_paths(random_ip2p, tmp_path):
    Image.fromarray((soft_mask() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    for mask in (soft_mask(), tmp_path / "mask.png"):
        roi = lime._check_mask(mask, random_ip2p)  # was all True: "edit everywhere"
        assert roi.sum() == 24 * 24


# ------------------------------------------------------------------ prompts and arguments


@pytest.mark.parametrize("steps", [0, -1, 2.5, "2"])
def test_steps_must_be_a_positive_integer(random_pipe, steps):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        diffusion.text_to_image(random_pipe, "a red circle", steps=steps, generator=gen())


@pytest.mark.parametrize("prompts, message", [(None, "must be a string or a list"), ([], "an empty list")])
def test_text_to_image_needs_a_prompt(random_pipe, prompts, message):
    with pytest.raises(ValueError, match=message):
        diffusion.text_to_image(random_pipe, prompts, steps=2, generator=gen())


def test_one_prompt_per_image(random_pipe, scene):
    with pytest.raises(ValueError, match="3 prompts for 2 images"):
        diffusion.sdedit(random_pipe, [scene, scene], ["a", "b", "c"], steps=2, generator=gen())


def test_p2p_blend_words_are_a_pair_and_prompts_need_words(random_pipe):
    with pytest.raises(ValueError, match=r"blend_words is a pair .*\('red', 'red'\)"):
        prompt_to_prompt(random_pipe, "a red circle", "a blue circle", blend_words="red", steps=2, generator=gen())
    with pytest.raises(ValueError, match="an empty P2P prompt"):
        prompt_to_prompt(random_pipe, "", "", steps=2, generator=gen())


def test_n_clusters_larger_than_the_feature_grid():
    features = np.random.default_rng(0).random((32 * 32, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"from 1 to 1024, the number of points of the 32x32 feature grid"):
        lime.cluster(features, n_clusters=2000)


def test_setup_refuses_bad_seed_and_missing_device(monkeypatch):
    monkeypatch.delenv("EDITNB_PROFILE", raising=False)
    for seed in (None, -1, 1.5):
        with pytest.raises(ValueError, match="seed must be an integer"):
            editnb.setup(seed=seed, verbose=False)
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="no Apple MPS backend; use device='cpu'"):
            editnb.setup(device="mps", verbose=False)
    with pytest.raises(ValueError, match="not a torch device"):
        editnb.setup(device="gpu", verbose=False)


def test_explicit_profile_beats_the_environment(monkeypatch):
    monkeypatch.setenv("EDITNB_PROFILE", "sd15")
    with pytest.warns(UserWarning, match="EDITNB_PROFILE='sd15' is ignored"):
        assert editnb.setup(profile="toy", verbose=False).profile == "toy"
    assert runtime._requested_profile("auto") == ("sd15", "set by EDITNB_PROFILE")


# ------------------------------------------------------------------ the toy vocabulary


def test_toy_tokenizers_refuse_unknown_characters_and_warn_on_unknown_words():
    from editnb import metrics as M
    from editnb.toy import vocab

    pipe = models.load("sd", profile="toy")
    feats = M.clip_features("clip", profile="toy")
    for call in (lambda t: pipe.tokenizer(t), lambda t: diffusion.encode_prompt(pipe, t),
                 lambda t: M.clip_similarity(feats, [np.zeros((64, 64, 3), np.uint8)], [t])):
        # "é" became the end-of-text token: the prompt embedded exactly as "a red"
        with pytest.raises(ValueError, match=r"characters the toy tokenizer lacks: \['é'\]"):
            call("a red é blue square")
    vocab._WARNED.discard("xylophone")
    with pytest.warns(UserWarning, match=r"never saw the words \['xylophone'\].*vocab.WORDS"):
        pipe.tokenizer("a xylophone circle")
    assert vocab.unknown("A Red circle, on a white background.") == ([], [])


def test_iedit_m_reads_soft_masks(random_pipe, scene):
    from editnb.methods import iedit

    out = iedit.edit(random_pipe, scene, "a blue circle", mask=soft_mask(), strength=0.5, steps=4, generator=gen())
    assert out.masks["edit"].sum() == 24 * 24  # "> 0" made every pixel editable
