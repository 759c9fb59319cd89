"""The IP-Adapter file format of toy-ip-adapter: the original layout that diffusers'
``pipe.load_ip_adapter(folder, subfolder="models", weight_name=IP_ADAPTER_WEIGHTS)`` reads.

``models/<IP_ADAPTER_WEIGHTS>`` holds ``image_proj.*`` (the projection of the CLIP image embedding
to 4 tokens) and ``ip_adapter.{k}.to_k_ip.weight`` / ``to_v_ip.weight``, k = 1, 3, 5, ... over the
UNet's cross-attention processors; ``models/image_encoder`` holds toy-clip's vision tower.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..models import IP_ADAPTER_WEIGHTS, models_dir
from . import architectures as arch


def adapter_state(image_proj_state: dict, to_k: list, to_v: list) -> dict:
    """The file's tensors (fp16) from the image projection's state and the decoupled key and value
    weights of each cross-attention layer, in ``unet.attn_processors`` order."""
    state = {f"image_proj.{k.replace('image_embeds', 'proj')}": v for k, v in image_proj_state.items()}
    for i, (k_weight, v_weight) in enumerate(zip(to_k, to_v)):
        n = 2 * i + 1  # the original numbering counts self- and cross-attention: 1, 3, 5, ...
        state[f"ip_adapter.{n}.to_k_ip.weight"] = k_weight
        state[f"ip_adapter.{n}.to_v_ip.weight"] = v_weight
    return {key: v.detach().to(torch.float16).contiguous() for key, v in state.items()}


def write_image_encoder(folder: Path):
    """toy-clip's vision tower + projection as the CLIPVisionModelWithProjection diffusers reads;
    returns the whole toy-clip model."""
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    folder.mkdir(parents=True, exist_ok=True)
    clip = CLIPModel.from_pretrained(str(models_dir() / "toy-clip"), dtype=torch.float32)
    config = clip.config.vision_config
    config.projection_dim = clip.config.projection_dim
    vision = CLIPVisionModelWithProjection(config)
    vision.vision_model.load_state_dict(clip.vision_model.state_dict())
    vision.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    vision.to(torch.float16).save_pretrained(str(folder))
    arch.new_image_processor().save_pretrained(str(folder))
    return clip


def write_initial(folder: Path) -> None:
    """An untrained adapter (keys and values copied from the UNet's text projections, as in the
    IP-Adapter paper) plus toy-clip's vision tower as image encoder."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import ImageProjection
    from safetensors.torch import save_file

    models = folder / "models"
    clip = write_image_encoder(models / "image_encoder")
    unet = UNet2DConditionModel.from_pretrained(str(models_dir() / "toy-sd"), subfolder="unet", dtype=torch.float32)
    proj = ImageProjection(image_embed_dim=clip.config.projection_dim, cross_attention_dim=arch.TEXT_DIM,
                           num_image_text_embeds=4)
    modules = dict(unet.named_modules())
    cross = [modules[name.removesuffix(".processor")] for name in unet.attn_processors
             if name.endswith("attn2.processor")]
    state = adapter_state(proj.state_dict(), [a.to_k.weight for a in cross], [a.to_v.weight for a in cross])
    save_file(state, str(models / IP_ADAPTER_WEIGHTS))


def save(image_proj, processors, out: Path) -> None:
    """Write an adapter: `image_proj` (the UNet's MultiIPAdapterImageProjection, ``encoder_hid_proj``)
    and its IP attention `processors` in ``unet.attn_processors`` order (possibly EMA copies)."""
    from safetensors.torch import save_file

    procs = [p for p in processors if hasattr(p, "to_k_ip")]
    if not procs:
        raise ValueError("no IP-Adapter attention processors (with to_k_ip) to save")
    state = adapter_state(image_proj.image_projection_layers[0].state_dict(),
                          [p.to_k_ip[0].weight for p in procs], [p.to_v_ip[0].weight for p in procs])
    save_file(state, str(out / "models" / IP_ADAPTER_WEIGHTS))
