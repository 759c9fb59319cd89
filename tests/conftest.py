# The suite's environment (toy profile, offline, no progress bars) and its parallel mechanics are
# set in the repository's top conftest.py.
import pytest


@pytest.fixture(scope="session")
def random_pipe(tmp_path_factory):
    """A StableDiffusionPipeline of the toy architecture with random weights: for tests of
    mechanics (hooks, shapes, determinism) that must not depend on training."""
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    from editnb.toy import architectures as arch
    from editnb.toy.vocab import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer(tmp_path_factory.mktemp("tok"))
    clip = arch.new_clip(tok)
    text = CLIPTextModel(clip.config.text_config)
    pipe = StableDiffusionPipeline(vae=arch.new_vae().eval(), text_encoder=text.eval(), tokenizer=tok,
                                   unet=arch.new_unet().eval(), scheduler=arch.new_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def random_ip2p(random_pipe):
    """An InstructPix2Pix pipeline of the toy architecture (8 input channels), random weights."""
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from editnb.toy import architectures as arch

    torch.manual_seed(1)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=random_pipe.vae, text_encoder=random_pipe.text_encoder, tokenizer=random_pipe.tokenizer,
        unet=arch.new_unet(in_channels=8).eval(), scheduler=random_pipe.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def _restore_runtime():
    """Tests that call editnb.setup() must not leave their choice to the tests after them."""
    from editnb import runtime

    saved = runtime._CURRENT
    yield
    runtime._CURRENT = saved
