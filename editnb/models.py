"""The model registry: one place that names every model of the course, per profile.

``load("sd")`` gives Stable Diffusion 1.5 in the ``sd15`` profile and the ToyWorld miniature in
``toy``; both are the same diffusers/transformers classes loaded with ``from_pretrained``, so
everything downstream is profile-agnostic.  Loading is lazy and cached per process.  Offline, a
model that is not in the local cache fails at once with a message that names it and points to the
toy profile; nothing waits on the network.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .runtime import MODEL_HOOKS, check_device, current, data_dir, hub_reachable


@dataclass(frozen=True)
class ModelSpec:
    """Where a model lives in each profile and how to load it.

    ``kind`` picks the loader; ``sd15`` is a Hub id (with an optional file inside it), ``toy`` a
    folder under ``data/models`` or None when the toy profile has no such model.
    """

    kind: str
    sd15: str
    toy: str | None
    sd15_file: str | None = None
    note: str = ""


#: the projection file of EditCLIP's released exemplar editor (QWW/EditCLIP-IP2P, beside its unet/)
EDITCLIP_PROJECTION = "image_proj_model.pt"

REGISTRY: dict[str, ModelSpec] = {
    "sd": ModelSpec("sd-pipeline", "stable-diffusion-v1-5/stable-diffusion-v1-5", "toy-sd",
                    note="text-to-image latent diffusion"),
    "ip2p": ModelSpec("ip2p-pipeline", "timbrooks/instruct-pix2pix", "toy-ip2p",
                      note="instruction-based editing (InstructPix2Pix)"),
    "clip": ModelSpec("clip", "openai/clip-vit-large-patch14", "toy-clip", note="CLIP ViT-L/14"),
    "clip-b32": ModelSpec("clip", "openai/clip-vit-base-patch32", "toy-clip",
                          note="CLIP ViT-B/32 (MagicBrush's CLIP-I / CLIP-T); toy-clip in the toy profile"),
    "clipseg": ModelSpec("clipseg", "CIDAS/clipseg-rd64-refined", "toy-clipseg", note="text-prompted masks"),
    "iedit": ModelSpec("iedit", "", "toy-iedit", note="iEdit fine-tune of the 'sd' UNet's input and middle blocks "
                       "(the paper released no weights; train your own with editnb.methods.iedit)"),
    "ip-adapter": ModelSpec("ip-adapter", "h94/IP-Adapter", "toy-ip-adapter", sd15_file="models/ip-adapter_sd15.bin",
                            note="image prompt adapter for the 'sd' pipeline"),
    "clip-h14": ModelSpec("clip", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "toy-clip",
                          note="OpenCLIP ViT-H/14, the embedding space of the sd15 IP-Adapter's image encoder (ViMAEdit "
                          "embeds its prompts with its text tower); toy-clip in the toy profile"),
    "blip": ModelSpec("blip", "Salesforce/blip-image-captioning-base", None,
                      note="captioning; ToyWorld scenes carry their exact captions instead"),
    "dino": ModelSpec("dino", "facebook/dino-vitb8", None,
                      note="structure distance; the toy profile uses toy-clip features under a toy-* name"),
    "dino-s16": ModelSpec("dino", "facebook/dino-vits16", None,
                          note="MagicBrush DINO similarity; toy-clip features in the toy profile"),
    "editclip": ModelSpec("editclip", "QWW/EditCLIP", "toy-editclip",
                          note="EditCLIP pair encoder: CLIP whose vision tower takes 6 channels (input + edited image)"),
    "editclip-ip2p": ModelSpec("editclip-editor", "QWW/EditCLIP-IP2P", "toy-editclip-ip2p", sd15_file=EDITCLIP_PROJECTION,
                               note="EditCLIP's exemplar editor: an InstructPix2Pix UNet conditioned on the pair "
                               "encoder's projected hidden states (sd15: the authors' unet/ and image_proj_model.pt on "
                               "timbrooks/instruct-pix2pix; toy: a whole pipeline + projection.safetensors)"),
    "uip2p": ModelSpec("ip2p-pipeline", "", "toy-uip2p",
                       note="UIP2P: an InstructPix2Pix UNet trained with the Edit Reversibility Constraint (the paper "
                       "released no weights: train your own with `editnb toy train uip2p`)"),
}

_CACHE: dict[tuple, object] = {}
#: the weight files of the toy models that are not whole diffusers/transformers folders
IP_ADAPTER_WEIGHTS = "ip-adapter_toy.safetensors"
IEDIT_WEIGHTS = "iedit_unet_blocks.safetensors"
UNET_BLOCKS_WEIGHTS = "unet_blocks.safetensors"


def models_dir() -> Path:
    return data_dir() / "models"


def tokenize(tokenizer, texts):
    """Token ids (B, model_max_length) of `texts`, padded and truncated to the tokenizer's context
    length as the CLIP text encoders of every profile expect them."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def toy_path(name: str) -> Path:
    spec = _spec(name)
    if spec.toy is None:
        raise RuntimeError(f"'{name}' has no toy version ({spec.note}); in the toy profile use what the note says")
    return models_dir() / spec.toy


def source_of(name: str, profile: str) -> str:
    """Where registry model `name` loads from in `profile`: a toy folder, a Hub id, or (sd15-shaped)
    the folder of its random-weight stand-in, built on first use (:mod:`editnb.sd15_shaped`)."""
    if profile == "toy":
        return str(toy_path(name))
    if profile == "sd15-shaped":
        from . import sd15_shaped

        return str(sd15_shaped.folder(name))
    return _spec(name).sd15


def _spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; the registry has {sorted(REGISTRY)}")
    return REGISTRY[name]


def hub_file_cached(repo_id: str, filename: str) -> bool:
    """Is `filename` of `repo_id` in the local Hugging Face cache? (no network)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename)
    return isinstance(path, str)


def _probe_file(spec: ModelSpec) -> str:
    if spec.sd15_file:
        return spec.sd15_file
    return "model_index.json" if spec.kind.endswith("pipeline") else "config.json"


def missing_offline(profile: str = "sd15") -> list[str]:
    """Models of `profile` that cannot be loaded on this machine now (Hub ids or toy folders)."""
    missing = []
    for name, spec in REGISTRY.items():
        if profile == "sd15":
            if not spec.sd15:
                continue
            if not hub_reachable() and not hub_file_cached(spec.sd15, _probe_file(spec)):
                missing.append(spec.sd15)
        elif spec.toy is not None and not (models_dir() / spec.toy).exists():
            missing.append(spec.toy)
    return sorted(set(missing))


def _offline_error(spec: ModelSpec, name: str) -> RuntimeError:
    return RuntimeError(
        f"cannot load '{name}' ({spec.sd15}): the Hugging Face Hub is unreachable and the model is not in the "
        "local cache. Use the toy profile, which needs no download: editnb.setup(profile='toy') "
        "or EDITNB_PROFILE=toy.")


def load(name: str, profile: str | None = None, device=None, dtype=None):
    """Load a registry model for a profile (default: the current runtime's), cached per process.

    Pipelines come back on `device` in `dtype`; on CUDA GPUs under 16 GB model CPU offload and VAE
    slicing are switched on so every chapter fits a free Colab T4.  CLIP-like models come back as
    ``(model, processor)``.
    """
    import torch

    rt = current()
    profile = profile or rt.profile
    device = check_device(device) if device is not None else rt.device  # a device this machine lacks: refused
    dtype = dtype or rt.dtype
    spec = _spec(name)
    key = (name, profile, str(device), str(dtype))
    if key in _CACHE:
        return _CACHE[key]
    _quiet_loading()
    if profile == "toy":
        folder = toy_path(name)
        if not folder.exists():
            raise RuntimeError(f"the toy model '{spec.toy}' is missing from {folder}; it ships with the repository "
                               f"(git checkout data/models) or can be retrained with `editnb toy train`")
        source, local_only = str(folder), True
    elif profile == "sd15":
        if not spec.sd15:
            raise RuntimeError(f"'{name}' has no public sd15 weights ({spec.note}); use the toy profile "
                               "(editnb.setup(profile='toy')), which ships toy weights for it")
        source = spec.sd15
        local_only = not hub_reachable()
        if local_only and not hub_file_cached(spec.sd15, _probe_file(spec)):
            raise _offline_error(spec, name)
    elif profile == "sd15-shaped":  # tests only: SD 1.5's architectures with random weights, built locally
        if not spec.sd15:
            raise RuntimeError(f"'{name}' has no public sd15 weights ({spec.note}), so sd15-shaped has no stand-in "
                               "for it either; use the toy profile (editnb.setup(profile='toy'))")
        source, local_only = source_of(name, profile), True
    else:
        raise ValueError(f"unknown profile {profile!r}; use 'sd15', 'toy' or 'sd15-shaped'")
    if spec.kind not in _LOADERS:
        raise RuntimeError(f"'{name}' ({spec.note}) is named in the registry but editnb has no loader for it yet; "
                           "it comes with the chapter that uses it")
    try:
        model = _LOADERS[spec.kind](source, spec, device, dtype, local_only, profile)
    except OSError as e:
        if profile == "sd15":
            raise _offline_error(spec, name) from e
        raise RuntimeError(f"cannot load the toy model {source}: {e}") from e
    from .toy.vocab import guard  # toy tokenizers refuse characters they lack, warn on unknown words

    _CACHE[key] = guard(model) if profile == "toy" else model
    return model


def load_ip2p_folder(folder, device=None, dtype=None):
    """An InstructPix2Pix pipeline from a folder of your own (a whole pipeline, or the trained UNet
    blocks UIP2P's export writes), e.g. a matched retrain that is not in the registry; cached per
    process like :func:`load`.  Toy pipelines only: the folder's parts are read locally."""
    import torch

    rt = current()
    folder = Path(folder)
    device = check_device(device) if device is not None else rt.device
    dtype = dtype or rt.dtype
    if not ((folder / "unet").is_dir() or (folder / UNET_BLOCKS_WEIGHTS).exists()):
        raise ValueError(f"{folder} is neither an InstructPix2Pix pipeline folder (unet/) nor a folder of trained UNet "
                         f"blocks ({UNET_BLOCKS_WEIGHTS}); train one with `editnb toy train ip2p --out FOLDER`")
    key = ("ip2p-folder", str(folder.resolve()), str(device), str(dtype))
    if key not in _CACHE:
        _quiet_loading()
        from .toy.vocab import guard

        _CACHE[key] = guard(_load_ip2p(str(folder), None, device, dtype, True, "toy"))
    return _CACHE[key]


def _quiet_loading() -> None:
    """No per-file loading bars from diffusers/transformers, and only their errors: notices such
    as the torchvision fallback of image processors clutter the chapters."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()


def clear_cache() -> None:
    _CACHE.clear()


def _place_pipeline(pipe, device, dtype):
    import torch

    pipe.set_progress_bar_config(disable=True)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        if total < 16 * 2 ** 30:
            pipe.enable_model_cpu_offload(device=device)
            pipe.vae.enable_slicing()
            return pipe
    pipe.to(device)
    return pipe


def _load_sd(source, spec, device, dtype, local_only, profile):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(source, dtype=dtype, local_files_only=local_only,
                                                   safety_checker=None, requires_safety_checker=False)
    return _place_pipeline(pipe, device, dtype)


def _load_ip2p(source, spec, device, dtype, local_only, profile):
    if (Path(source) / UNET_BLOCKS_WEIGHTS).exists():
        return _place_pipeline(ip2p_from_blocks(source, dtype), device, dtype)
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        source, dtype=dtype, local_files_only=local_only, safety_checker=None, requires_safety_checker=False)
    return _place_pipeline(pipe, device, dtype)


def ip2p_from_blocks(folder, dtype=None):
    """An InstructPix2Pix pipeline from a folder that stores only the UNet blocks a fine-tune
    trained (``unet_blocks.safetensors``, written by UIP2P's export): toy-sd's VAE, text encoder,
    tokenizer and scheduler, and an 8-channel UNet whose frozen blocks (named in the file's
    metadata) are toy-sd's.  Every UNet weight must come from exactly one of the two."""
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .toy import architectures as arch

    path = Path(folder) / UNET_BLOCKS_WEIGHTS
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    frozen = [b for b in meta.get("frozen", "").split(",") if b]
    sd = _load_sd(str(models_dir() / _spec("sd").toy), None, torch.device("cpu"), torch.float32, True, "toy")
    unet = arch.new_unet(in_channels=int(meta.get("in_channels", 2 * arch.LATENT_CHANNELS)))
    state = {k: v for k, v in sd.unet.state_dict().items() if k.split(".", 1)[0] in frozen}
    trained = load_file(str(path))
    overlap = sorted(set(state) & set(trained))
    missing = sorted(set(unet.state_dict()) - set(state) - set(trained))
    unknown = sorted(set(trained) - set(unet.state_dict()))
    if overlap or missing or unknown:
        raise RuntimeError(f"{path} does not fit toy-sd's UNet (frozen {frozen}; keys stored twice {overlap[:3]}, "
                           f"missing {missing[:3]}, unknown {unknown[:3]}); retrain it with `editnb toy train uip2p`")
    state.update({k: v.float() for k, v in trained.items()})
    unet.load_state_dict(state)
    pipe = StableDiffusionInstructPix2PixPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
                                                  unet=unet, scheduler=sd.scheduler, safety_checker=None,
                                                  feature_extractor=None, requires_safety_checker=False)
    if dtype is not None and dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe


def _load_clip(source, spec, device, dtype, local_only, profile):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(source, dtype=dtype, local_files_only=local_only).to(device).eval()
    return model, CLIPProcessor.from_pretrained(source, local_files_only=local_only)


def _load_clipseg(source, spec, device, dtype, local_only, profile):
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    model = CLIPSegForImageSegmentation.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    return model.to(device).eval(), CLIPSegProcessor.from_pretrained(source, local_files_only=local_only)


def _load_blip(source, spec, device, dtype, local_only, profile):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model = BlipForConditionalGeneration.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    return model.to(device).eval(), BlipProcessor.from_pretrained(source, local_files_only=local_only)


def _load_dino(source, spec, device, dtype, local_only, profile):
    from transformers import AutoImageProcessor, ViTModel

    model = ViTModel.from_pretrained(source, dtype=dtype, local_files_only=local_only, add_pooling_layer=False)
    return model.to(device).eval(), AutoImageProcessor.from_pretrained(source, local_files_only=local_only)


def _load_ip_adapter(source, spec, device, dtype, local_only, profile):
    """The 'sd' pipeline with the IP-Adapter loaded (a separate cached pipeline object)."""
    pipe = _load_sd(source_of("sd", profile), spec, device, dtype, local_only, profile)
    if profile == "toy":
        pipe.load_ip_adapter(source, subfolder="models", weight_name=IP_ADAPTER_WEIGHTS, local_files_only=True)
    else:
        sub, weight = spec.sd15_file.rsplit("/", 1)
        pipe.load_ip_adapter(source, subfolder=sub, weight_name=weight, local_files_only=local_only)
    return pipe



def _load_iedit(source, spec, device, dtype, local_only, profile):
    """A fresh copy of the toy 'sd' pipeline whose UNet input and middle blocks are replaced by
    the iEdit fine-tune (the only parts iEdit trains, so the only parts the folder holds)."""
    import torch
    from safetensors.torch import load_file

    pipe = _load_sd(str(models_dir() / _spec("sd").toy), spec, torch.device("cpu"), torch.float32, True, profile)
    state = load_file(str(Path(source) / IEDIT_WEIGHTS))
    unet_keys = set(pipe.unet.state_dict())
    unknown = sorted(k for k in state if k not in unet_keys)
    if unknown:
        raise RuntimeError(f"{source} does not fit toy-sd's UNet (unknown keys such as {unknown[:3]}); "
                           "retrain it with `editnb toy train iedit`")
    pipe.unet.load_state_dict(state, strict=False)
    if dtype is not None and dtype != torch.float32:
        pipe.to(dtype=dtype)
    return _place_pipeline(pipe, device, dtype)


def _load_editclip(source, spec, device, dtype, local_only, profile):
    """EditCLIP's pair encoder (a CLIPModel with a 6-channel vision tower) and a CLIP processor.
    The Hub checkpoint ships no processor files; its preprocessing is CLIP ViT-L/14's."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(source, dtype=dtype, local_files_only=local_only).to(device).eval()
    if model.config.vision_config.num_channels != 6:
        raise RuntimeError(f"{source} is not an EditCLIP pair encoder: its vision tower takes "
                           f"{model.config.vision_config.num_channels} channels, not 6 (input + edited image)")
    processor_source = source if profile == "toy" else source_of("clip", profile)
    return model, CLIPProcessor.from_pretrained(processor_source, local_files_only=local_only)


def _load_editclip_editor(source, spec, device, dtype, local_only, profile):
    """EditCLIP's exemplar editor as its authors' evaluation loads it: the UNet of `source`'s ``unet/``
    on the rest of the InstructPix2Pix pipeline ('ip2p': VAE, text parts, scheduler).  The toy
    folder is a whole pipeline.  The projection beside the UNet is read by
    :func:`editnb.methods.editclip.load_editor`."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

    if profile == "toy":
        return _load_ip2p(source, spec, device, dtype, local_only, profile)
    base, base_spec = source_of("ip2p", profile), _spec("ip2p")
    if profile == "sd15" and local_only and not hub_file_cached(base, _probe_file(base_spec)):
        raise _offline_error(base_spec, "ip2p")
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", dtype=dtype, local_files_only=local_only)
    if unet.config.in_channels != 8:
        raise RuntimeError(f"{source}/unet is not an InstructPix2Pix UNet: it reads {unet.config.in_channels} latent "
                           "channels, not 8 (the noisy latent and the query's)")
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        base, unet=unet, dtype=dtype, local_files_only=local_only, safety_checker=None, requires_safety_checker=False)
    return _place_pipeline(pipe, device, dtype)


_LOADERS = {
    "editclip": _load_editclip,
    "editclip-editor": _load_editclip_editor,
    "sd-pipeline": _load_sd,
    "ip2p-pipeline": _load_ip2p,
    "clip": _load_clip,
    "clipseg": _load_clipseg,
    "blip": _load_blip,
    "dino": _load_dino,
    "ip-adapter": _load_ip_adapter,
    "iedit": _load_iedit,
}

MODEL_HOOKS.update(load=load, missing_offline=missing_offline)
