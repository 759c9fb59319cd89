"""Architectures of the ToyWorld models: the SAME diffusers/transformers classes as Stable
Diffusion 1.5 and friends, only smaller.  Shapes here are the single source of truth for the
training recipes in :mod:`editnb.toy.train`."""
from __future__ import annotations

from .vocab import MAX_LENGTH
from .world import RESOLUTION

LATENT_CHANNELS = 4
VAE_DOWNSAMPLING = 4  # 64x64 pixels -> 16x16 latents
TEXT_DIM = 128        # hidden size of the text tower = cross-attention dim of the UNets
IMAGE_EMBED_DIM = 128  # CLIP projection dim = IP-Adapter image embedding dim


def new_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=RESOLUTION,
    )


def new_clip(tokenizer):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_DIM,
            intermediate_size=4 * TEXT_DIM,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=RESOLUTION,
            patch_size=8,
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=3,
            num_attention_heads=4,
        ),
        projection_dim=IMAGE_EMBED_DIM,
    )
    return CLIPModel(config)


def new_image_processor():
    from transformers import CLIPImageProcessor

    # ToyWorld images are already 64x64; mean/std map [0, 1] to [-1, 1].
    return CLIPImageProcessor(
        size={"shortest_edge": RESOLUTION},
        crop_size={"height": RESOLUTION, "width": RESOLUTION},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=3,
    )


#: the shipped toy-sd's shape; the candidates of the attention study vary these (``editnb toy train
#: sd --option levels=3``): see :func:`new_unet`
UNET_SHAPE = {"levels": 2, "heads": 4, "layers": 1}


def new_unet(in_channels: int = LATENT_CHANNELS, levels: int = 2, heads: int = 4, layers: int = 1):
    """UNet2DConditionModel on 16x16 latents with self- and cross-attention at `levels` resolutions
    (2: 16x16 and 8x8, the shipped toy-sd; 3: also 4x4, as SD 1.5 attends at three of its four),
    `heads` attention heads (diffusers' ``attention_head_dim`` is the number of heads) and `layers`
    resnet + transformer layers per block."""
    from diffusers import UNet2DConditionModel

    if levels not in (2, 3) or heads < 1 or layers < 1:
        raise ValueError(f"a toy UNet has 2 or 3 attention levels and at least one head and layer; got "
                         f"levels={levels}, heads={heads}, layers={layers}")
    return UNet2DConditionModel(
        sample_size=RESOLUTION // VAE_DOWNSAMPLING,
        in_channels=in_channels,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D",) * levels,
        up_block_types=("CrossAttnUpBlock2D",) * levels,
        block_out_channels=(64, 128, 128)[:levels],
        layers_per_block=layers,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=heads,
        norm_num_groups=32,
    )


def new_scheduler():
    """Stable Diffusion 1.5's noise schedule, with DDIM as the pipelines' default sampler."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def new_clipseg(clip):
    """CLIPSegForImageSegmentation on top of a trained toy-clip (copied in; CLIPSeg keeps its CLIP
    frozen): FiLM-conditioned decoder over all three vision layers, 8x8 patches -> 64x64 logits."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    vision = clip.config.vision_config
    config = CLIPSegConfig(
        text_config=clip.config.text_config.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=clip.config.projection_dim,
        extract_layers=list(range(vision.num_hidden_layers)),
        reduce_dim=64,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=256,
        conditional_layer=0,
        use_complex_transposed_convolution=False,
    )
    model = CLIPSegForImageSegmentation(config)
    model.clip.load_state_dict(clip.state_dict())
    return model


def new_clipseg_processor(tokenizer):
    from transformers import CLIPSegProcessor, ViTImageProcessor

    image_processor = ViTImageProcessor(do_resize=True, size={"height": RESOLUTION, "width": RESOLUTION},
                                        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=3)
    return CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)
