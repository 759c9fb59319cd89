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
        diffusion.sdedit(unet_never_runs, image, "a red circle", guidance=value, steps=2, generator=gen())
    with pytest.raises(ValueError, match=f"guidance.*{message}"):
        diffusion.text_to_image(unet_never_runs, ["a red circle"], guidance=value, steps=2, generator=gen())
    with pytest.raises(ValueError, match=f"guidance.*{message}"):  # with an image: before its inversion
        prompt_to_prompt(unet_never_runs, "a red circle", "a blue circle", guidance=value, steps=2, image=image)


@pytest.mark.parametrize("value, message", [(math.nan, "must be finite"), ("abc", "must be a number")])
def test_strength_must_be_a_finite_number(unet_never_runs, value, message):
    with pytest.raises(ValueError, match=f"strength {message}"):
        diffusion.sdedit(unet_never_runs, np.zeros((64, 64, 3), np.uint8), "a red circle", strength=value, steps=2)


def test_a_per_pixel_guidance_map_of_finite_numbers_still_runs(random_pipe):
    """The check keeps what guidance may be: a number per item, or a map (ViMAEdit's, LIME's)."""
    out = diffusion.text_to_image(random_pipe, ["a red circle", "a blue square"], guidance=torch.tensor([1.0, 7.5]),
                                  steps=2, generator=gen())
    assert len(out.images) == 2
