"""Training toy-ip-adapter: the dropout of captions and images, a training step reaching the
adapter, and the exported file loading back into diffusers with the trained weights."""
import copy

import pytest
import torch

from editnb import models
from editnb.toy.tasks import IMAGE_DROPOUT, IPAdapterTask, ip_adapter_dropout, scene_batch
from editnb.toy.train import RECIPES, recipe_for

D = models.models_dir()
needs_models = pytest.mark.skipif(not (D / "toy-sd" / "unet").is_dir() or not (D / "toy-clip").is_dir(),
                                  reason="toy-sd and toy-clip are not in data/models")


def test_dropout_leaves_the_image_alone_for_most_examples():
    r = torch.linspace(0, 1, 100_001)[:-1]
    drop_caption, drop_image = ip_adapter_dropout(r, 0.9)
    image_alone = drop_caption & ~drop_image
    assert abs(image_alone.float().mean() - (0.9 - IMAGE_DROPOUT)) < 1e-3
    assert abs((drop_caption & drop_image).float().mean() - IMAGE_DROPOUT) < 1e-3  # unconditional, for guidance
    assert abs((~drop_caption & drop_image).float().mean() - IMAGE_DROPOUT) < 1e-3
    assert abs((~drop_caption & ~drop_image).float().mean() - (1 - 0.9 - IMAGE_DROPOUT)) < 1e-3


@pytest.mark.parametrize("p", [0.0, 0.99, -1.0])
def test_dropout_refuses_impossible_fractions(p):
    with pytest.raises(ValueError, match="caption_dropout must lie in"):
        ip_adapter_dropout(torch.rand(8), p)


def test_recipe_trains_the_image_branch_mostly_without_captions():
    # the image branch never sees the caption; with captions that name every object it learns to
    # add little unless most examples drop them (IPAdapterTask's docstring)
    assert RECIPES["ip-adapter"].caption_dropout >= 0.5


def _prediction(unet, embeds):
    """toy-sd's noise prediction at a fixed noisy latent, empty prompt replaced by zeros, with `embeds`."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(len(embeds), 4, 16, 16, generator=g)
    text = torch.randn(len(embeds), 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(latents, torch.full((len(embeds),), 900), text,
                    added_cond_kwargs={"image_embeds": [embeds[:, None]]}).sample


@needs_models
def test_training_step_reaches_the_adapter_and_export_round_trips(tmp_path):
    from diffusers import StableDiffusionPipeline

    recipe = recipe_for("ip-adapter", batch_size=4)
    task = IPAdapterTask(torch.device("cpu"), recipe, seed=0)
    adapter = task.trainable()
    images, _ = scene_batch(0, 4)
    with torch.no_grad():
        embeds = task.image_encoder(pixel_values=images).image_embeds
    before = _prediction(task.unet, embeds)
    initial = copy.deepcopy(adapter.state_dict())

    params = [p for p in adapter.parameters() if p.requires_grad]
    assert {id(p) for p in params} >= {id(p) for proc in adapter["layers"] for p in proc.parameters()}
    opt = torch.optim.AdamW(params, lr=1e-3)
    for step in range(3):
        loss = task.loss(scene_batch(step, 4), torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in adapter.named_parameters():
        assert not torch.equal(p, initial[name]), f"{name} did not move"
    after = _prediction(task.unet, embeds)
    assert (after - before).abs().max() > 1e-3

    task.export(adapter, tmp_path)
    pipe = StableDiffusionPipeline.from_pretrained(str(D / "toy-sd"), dtype=torch.float32)
    pipe.load_ip_adapter(str(tmp_path), subfolder="models", weight_name=models.IP_ADAPTER_WEIGHTS)
    loaded = _prediction(pipe.unet, embeds)
    # the file stores fp16: equal to the trained adapter up to that rounding, far from the untrained one
    assert (loaded - after).abs().max() < 0.1 * (after - before).abs().max()
    with torch.no_grad():
        assert torch.allclose(pipe.image_encoder(pixel_values=images).image_embeds, embeds, atol=1e-2)


@needs_models
def test_export_writes_the_module_it_is_given(tmp_path):
    """An EMA copy (what fit returns with --ema-decay) is what gets written, not the live weights."""
    from safetensors.torch import load_file

    task = IPAdapterTask(torch.device("cpu"), recipe_for("ip-adapter"), seed=0)
    ema = copy.deepcopy(task.trainable())
    with torch.no_grad():
        ema["layers"][0].to_k_ip[0].weight.fill_(0.25)
    task.export(ema, tmp_path)
    state = load_file(str(tmp_path / "models" / models.IP_ADAPTER_WEIGHTS))
    assert torch.all(state["ip_adapter.1.to_k_ip.weight"] == 0.25)
