"""The ``sd15-shaped`` profile: the sd15 models' exact architectures with random weights, built offline.

Each registry name of the ``sd15`` profile gets a folder in the layout of its Hub repository,
written once into a cache folder and then loaded by the SAME ``from_pretrained`` calls as the
real weights, so the code path that Colab users take runs here without the Hub:

- ``sd`` / ``ip2p``: SD 1.5's UNet2DConditionModel (levels CrossAttn x3 + Down, 2 layers per
  block, 8 heads, cross-attention 768 over 77 tokens; InstructPix2Pix's has 8 input channels),
  SD's AutoencoderKL (4 levels, factor 8, 4 latent channels, scaling 0.18215), a CLIPTextModel of
  ViT-L/14's width (768, 12 heads, quick-GELU) and the real CLIP tokenizer; the real schedulers.
- ``clip`` (ViT-L/14), ``clip-b32``, ``clipseg`` (rd64-refined), ``dino`` / ``dino-s16`` and
  ``ip-adapter`` (the ``ip-adapter_sd15`` layout: 4 image tokens from a ViT-H/14-wide encoder).

Depths (number of transformer layers) and, unless ``full_width=True``, channel widths (the image
towers' at a quarter of the real width) are scaled down so that a CPU runs a step in milliseconds; everything a method reads from a model (levels,
heads, context length, text width, resolution ratios) is SD 1.5's.  ``full_width=True`` gives
SD 1.5's real widths (UNet 320/640/1280/1280, VAE 128/256/512/512, 12 text layers) for GPU memory
measurements.  ``sample_size`` is the latent side (SD 1.5: 64, i.e. 512x512 images); the default
of the scaled profile, 16 (128x128 images), is a size no toy model has, so that code assuming the
toy geometry fails on it.  The pictures are noise: only shapes, code paths and memory are real.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from filelock import FileLock

from .clip_bpe import CONTEXT, clip_tokenizer

#: the latent side of the scaled profile (images of 8x that: 128x128; 24 ran the sd15-shaped chapters 1.6-1.9x slower)
SAMPLE_SIZE = 16
SEED = 0
SD15_UNET_WIDTHS = (320, 640, 1280, 1280)
SD15_VAE_WIDTHS = (128, 256, 512, 512)
SCALED_UNET_WIDTHS = (32, 64, 128, 128)
SCALED_VAE_WIDTHS = (32, 64, 64, 64)
IP_ADAPTER_FILE = "ip-adapter_sd15.bin"
EDITCLIP_PROJECTION_FILE = "image_proj_model.pt"  # beside unet/ in QWW/EditCLIP-IP2P (models.EDITCLIP_PROJECTION)
#: the folders store weights in fp16 (half the disk); the loaders cast them to the runtime's dtype
HALF = torch.float16
OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
#: registry names with a stand-in (the others have no loader or no public weights)
#: bumped when a stand-in's build changes, so that caches built before are rebuilt (2 for sd/ip2p: the
#: pipelines' scheduler configs gained the Hub's "clip_sample": false; 2 for the image towers: their
#: scaled width fell to a quarter of the real one)
_BUILD_VERSIONS = {"sd": 2, "ip2p": 2, "clip": 2, "clip-b32": 2, "editclip": 2, "clipseg": 2, "dino": 2, "dino-s16": 2,
                   "ip-adapter": 2, "clip-h14": 2}
NAMES = ("sd", "ip2p", "clip", "clip-b32", "editclip", "editclip-ip2p", "clipseg", "dino", "dino-s16", "ip-adapter",
         "clip-h14")


def cache_dir() -> Path:
    """Where the built folders live: ``EDITNB_CACHE`` or ``$XDG_CACHE_HOME/editnb`` (``~/.cache/editnb``)."""
    root = os.environ.get("EDITNB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "editnb"
    return Path(root) / "sd15-shaped"


def folder(name: str, full_width: bool = False, sample_size: int = SAMPLE_SIZE) -> Path:
    """The folder of registry model `name`, built on first use (once, under a file lock, and
    atomically, so concurrent processes never build it twice nor see half a folder).  Its name carries a hash of the build settings."""
    if name not in NAMES:
        raise ValueError(f"the sd15-shaped profile has no stand-in for {name!r}; it has {list(NAMES)}")
    if sample_size % 8:
        raise ValueError(f"sample_size must be a multiple of 8 (SD's UNet halves the latent 3 times), got {sample_size}")
    settings = {"name": name, "full_width": full_width, "sample_size": sample_size, "seed": SEED,
                "v": _BUILD_VERSIONS.get(name, 1)}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    out = cache_dir() / f"{name}-{key}"
    if (out / ".complete").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # one builder per folder: parallel test workers wait for the first one instead of building twice
    with FileLock(str(out.parent / f".{name}-{key}.lock")):
        if (out / ".complete").exists():
            return out
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{name}-"))
        try:
            with torch.random.fork_rng(devices=[]):  # seeded builds leave the caller's random state alone
                _BUILDERS[name](tmp, full_width=full_width, sample_size=sample_size)
            (tmp / ".complete").write_text(json.dumps(settings))
            try:
                tmp.rename(out)
            except OSError:  # a process without the lock (an older editnb) finished first: its folder is as good
                if not (out / ".complete").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# ------------------------------------------------------------------ the architectures


def _seeded():
    torch.manual_seed(SEED)


def unet_config(in_channels: int = 4, full_width: bool = False, sample_size: int = SAMPLE_SIZE) -> dict:
    """SD 1.5's ``unet/config.json`` at `sample_size` (SD: 64), scaled widths unless `full_width`.
    ``attention_head_dim=8`` is diffusers' legacy name for 8 heads at every level: the heads keep
    SD's count and their width scales with the channels."""
    return dict(sample_size=sample_size, in_channels=in_channels, out_channels=4, layers_per_block=2,
                block_out_channels=SD15_UNET_WIDTHS if full_width else SCALED_UNET_WIDTHS, attention_head_dim=8,
                cross_attention_dim=768, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32)


def unet(in_channels: int = 4, full_width: bool = False, sample_size: int = SAMPLE_SIZE):
    from diffusers import UNet2DConditionModel

    _seeded()
    return UNet2DConditionModel(**unet_config(in_channels, full_width, sample_size))


def vae(full_width: bool = False, sample_size: int = SAMPLE_SIZE):
    from diffusers import AutoencoderKL

    _seeded()
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=8 * sample_size,
        block_out_channels=SD15_VAE_WIDTHS if full_width else SCALED_VAE_WIDTHS, scaling_factor=0.18215,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def _text_config(width: int, heads: int, layers: int, projection: int):
    from transformers import CLIPTextConfig

    # SD 1.5's text_encoder/config.json keeps the legacy ids (eos 2): transformers then pools at the
    # highest token id, which is <|endoftext|>, as the real checkpoint does
    return CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_attention_heads=heads,
                          num_hidden_layers=layers, max_position_embeddings=CONTEXT, hidden_act="quick_gelu",
                          projection_dim=projection, bos_token_id=0, eos_token_id=2, pad_token_id=1)


def _image_width(width: int, full_width: bool) -> int:
    """An image tower's width: the real one, or a quarter of it on the scaled profile (heads kept, so
    every head is 16-20 wide).  The towers read 224-352 px images as 256-784 tokens: at the real
    widths, chapter 06's two cells that embed pairs and images took 218 s of its 423 s sd15-shaped run."""
    return width if full_width else width // 4


def _vision_config(width: int, heads: int, layers: int, patch: int, image: int, projection: int, channels: int = 3):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_attention_heads=heads,
                            num_hidden_layers=layers, patch_size=patch, image_size=image, hidden_act="quick_gelu",
                            projection_dim=projection, num_channels=channels)


def text_encoder(full_width: bool = False):
    """CLIP ViT-L/14's text tower (width 768, 12 heads; 12 layers at full width, 2 scaled)."""
    from transformers import CLIPTextModel

    _seeded()
    return CLIPTextModel(_text_config(768, 12, 12 if full_width else 2, 768))


def _image_processor(size: int, mean=OPENAI_MEAN, std=OPENAI_STD):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=mean, image_std=std, do_convert_rgb=True)


# ------------------------------------------------------------------ the pipelines and folders


def pipeline(kind: str = "sd", full_width: bool = False, sample_size: int = SAMPLE_SIZE):
    """An SD 1.5-shaped (``kind="sd"``) or InstructPix2Pix-shaped (``"ip2p"``) pipeline in memory, fp32,
    on the CPU: what the GPU memory benchmark uses at full width (no 2 GB cache folder)."""
    if kind not in ("sd", "ip2p"):
        raise ValueError(f"kind is 'sd' or 'ip2p', got {kind!r}")
    from diffusers import (EulerAncestralDiscreteScheduler, PNDMScheduler, StableDiffusionInstructPix2PixPipeline,
                           StableDiffusionPipeline)

    schedule = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if kind == "ip2p":  # timbrooks/instruct-pix2pix ships Euler ancestral, SD 1.5 PNDM (both as on the Hub)
        cls, scheduler = StableDiffusionInstructPix2PixPipeline, EulerAncestralDiscreteScheduler(**schedule)
    else:
        cls = StableDiffusionPipeline
        scheduler = PNDMScheduler(**schedule, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    # SD 1.5's scheduler config on the Hub says "clip_sample": false, a key PNDM does not take but a
    # DDIM scheduler built from the config reads; without it DDIM would clip x0 to [-1, 1], which SD
    # 1.5 never does (the InstructPix2Pix stand-in gets the same)
    scheduler.register_to_config(clip_sample=False)
    with torch.random.fork_rng(devices=[]):
        return cls(vae=vae(full_width, sample_size), text_encoder=text_encoder(full_width), tokenizer=clip_tokenizer(),
                   unet=unet(8 if kind == "ip2p" else 4, full_width, sample_size), scheduler=scheduler,
                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _pipeline(out: Path, kind: str, full_width: bool, sample_size: int) -> None:
    pipe = pipeline(kind, full_width, sample_size)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        torch.nn.Module.to(module, HALF)  # plain cast: diffusers' own .to() warns about fp32-kept modules here
    pipe.save_pretrained(str(out))


def _clip(out: Path, text: tuple, vision: tuple, projection: int, image: int, processor: bool = True) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    _seeded()
    *vision, channels = vision if len(vision) == 5 else (*vision, 3)
    config = CLIPConfig(text_config=_text_config(*text, projection).to_dict(), projection_dim=projection,
                        vision_config=_vision_config(*vision, image, projection, channels).to_dict())
    CLIPModel(config).to(HALF).save_pretrained(str(out))
    if processor:
        CLIPProcessor(image_processor=_image_processor(image), tokenizer=clip_tokenizer()).save_pretrained(str(out))


def _depth(full_width: bool) -> int:
    return 12 if full_width else 2


def build_sd(out, full_width=False, sample_size=SAMPLE_SIZE):
    _pipeline(out, "sd", full_width, sample_size)


def build_ip2p(out, full_width=False, sample_size=SAMPLE_SIZE):
    _pipeline(out, "ip2p", full_width, sample_size)


def build_clip_l14(out, full_width=False, sample_size=SAMPLE_SIZE):
    """openai/clip-vit-large-patch14: text 768/12 heads, vision 1024/16 heads, patch 14, 224, projection 768."""
    _clip(out, (768, 12, _depth(full_width)), (_image_width(1024, full_width), 16, _depth(full_width), 14), 768, 224)


def build_clip_b32(out, full_width=False, sample_size=SAMPLE_SIZE):
    """openai/clip-vit-base-patch32: text 512/8 heads, vision 768/12 heads, patch 32, 224, projection 512."""
    _clip(out, (512, 8, _depth(full_width)), (_image_width(768, full_width), 12, _depth(full_width), 32), 512, 224)


def build_clip_h14(out, full_width=False, sample_size=SAMPLE_SIZE):
    """laion/CLIP-ViT-H-14-laion2B-s32B-b79K: text 1024/16 heads, vision 1280/16 heads, patch 14, 224,
    projection 1024 (the space of ip-adapter_sd15's image encoder)."""
    _clip(out, (1024, 16, _depth(full_width)), (_image_width(1280, full_width), 16, _depth(full_width), 14), 1024, 224)


def build_editclip(out, full_width=False, sample_size=SAMPLE_SIZE):
    """QWW/EditCLIP: CLIP ViT-L/14 whose vision tower reads 6 channels (input and edited image
    stacked); like the Hub checkpoint, no processor files (the loader takes CLIP L/14's)."""
    _clip(out, (768, 12, _depth(full_width)), (_image_width(1024, full_width), 16, _depth(full_width), 14, 6), 768, 224,
          processor=False)


def build_editclip_ip2p(out, full_width=False, sample_size=SAMPLE_SIZE):
    """QWW/EditCLIP-IP2P, the layout its authors' evaluation reads: ``unet/`` (an InstructPix2Pix UNet,
    8 input channels, cross-attention 768) and ``image_proj_model.pt`` (their ImageProjModel with one
    token per hidden state: ``proj`` Linear from EditCLIP's vision width to 768, ``norm`` LayerNorm(768),
    as a torch.save'd state dict); the rest of the pipeline is InstructPix2Pix's."""
    unet(8, full_width, sample_size).to(HALF).save_pretrained(str(out / "unet"))
    vision, text_width = _image_width(1024, full_width), 768
    state = {"proj.weight": torch.randn(text_width, vision) * 0.02, "proj.bias": torch.zeros(text_width),
             "norm.weight": torch.ones(text_width), "norm.bias": torch.zeros(text_width)}
    torch.save({k: v.to(HALF) for k, v in state.items()}, out / EDITCLIP_PROJECTION_FILE)


def build_clipseg(out, full_width=False, sample_size=SAMPLE_SIZE):
    """CIDAS/clipseg-rd64-refined: CLIP B/16 (text 512, vision 768 at 224 with patch 16) read at
    352x352, activations of 3 vision layers reduced to 64 channels, the refined (complex) decoder."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    _seeded()
    layers = _depth(full_width) if full_width else 3
    config = CLIPSegConfig(text_config=_text_config(512, 8, layers, 512).to_dict(),
                           vision_config=_vision_config(_image_width(768, full_width), 12, layers, 16, 224, 512).to_dict(),
                           projection_dim=512,
                           extract_layers=[3, 6, 9] if full_width else [0, 1, 2], reduce_dim=64,
                           decoder_num_attention_heads=4, decoder_intermediate_size=2048, conditional_layer=0,
                           use_complex_transposed_convolution=True)
    CLIPSegForImageSegmentation(config).to(HALF).save_pretrained(str(out))
    images = ViTImageProcessor(do_resize=True, size={"height": 352, "width": 352}, resample=2,
                               image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    CLIPSegProcessor(image_processor=images, tokenizer=clip_tokenizer()).save_pretrained(str(out))


def _dino(out: Path, width: int, heads: int, patch: int, full_width: bool) -> None:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    _seeded()
    width = _image_width(width, full_width)
    config = ViTConfig(hidden_size=width, intermediate_size=4 * width, num_attention_heads=heads,
                       num_hidden_layers=_depth(full_width), patch_size=patch, image_size=224)
    ViTModel(config, add_pooling_layer=False).to(HALF).save_pretrained(str(out))
    ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=IMAGENET_MEAN,
                      image_std=IMAGENET_STD).save_pretrained(str(out))


def build_dino_b8(out, full_width=False, sample_size=SAMPLE_SIZE):
    """facebook/dino-vitb8: ViT-B (768, 12 heads), patch 8, 224."""
    _dino(out, 768, 12, 8, full_width)


def build_dino_s16(out, full_width=False, sample_size=SAMPLE_SIZE):
    """facebook/dino-vits16: ViT-S (384, 6 heads), patch 16, 224."""
    _dino(out, 384, 6, 16, full_width)


def build_ip_adapter(out, full_width=False, sample_size=SAMPLE_SIZE):
    """h94/IP-Adapter's ``models/`` folder: ``ip-adapter_sd15.bin`` (``image_proj``: Linear 1024 -> 4 x 768
    and LayerNorm(768); ``ip_adapter.{1,3,5,...}.to_k_ip/to_v_ip``: 768 -> each cross-attention layer's
    width) and ``image_encoder/`` (OpenCLIP ViT-H/14: width 1280, 16 heads, patch 14, projection 1024)."""
    from transformers import CLIPVisionModelWithProjection

    models = out / "models"
    _seeded()
    CLIPVisionModelWithProjection(_vision_config(_image_width(1280, full_width), 16, 32 if full_width else 2, 14, 224,
                                                 1024)).to(HALF).save_pretrained(
        str(models / "image_encoder"))
    _image_processor(224).save_pretrained(str(models / "image_encoder"))
    tokens, text_width = 4, 768
    state = {"image_proj": {"proj.weight": torch.randn(tokens * text_width, 1024) * 0.02,
                            "proj.bias": torch.zeros(tokens * text_width),
                            "norm.weight": torch.ones(text_width), "norm.bias": torch.zeros(text_width)},
             "ip_adapter": {}}
    u = unet(4, full_width, sample_size)
    modules = dict(u.named_modules())
    cross = [modules[n.removesuffix(".processor")] for n in u.attn_processors if n.endswith("attn2.processor")]
    for i, attn in enumerate(cross):
        for which in ("to_k", "to_v"):
            weight = getattr(attn, which).weight
            state["ip_adapter"][f"{2 * i + 1}.{which}_ip.weight"] = torch.randn_like(weight) * 0.02
    torch.save({part: {k: v.to(HALF) for k, v in d.items()} for part, d in state.items()}, models / IP_ADAPTER_FILE)


_BUILDERS = {"sd": build_sd, "ip2p": build_ip2p, "clip": build_clip_l14, "clip-b32": build_clip_b32, "editclip": build_editclip,
             "editclip-ip2p": build_editclip_ip2p, "clipseg": build_clipseg, "dino": build_dino_b8, "dino-s16": build_dino_s16,
             "ip-adapter": build_ip_adapter, "clip-h14": build_clip_h14}
