"""Training recipes of the ToyWorld model family (``editnb toy train MODEL``).

Order matters: ``vae`` and ``clip`` first (independent), then ``sd`` (needs both), then ``ip2p``
(starts from toy-sd's UNet, as InstructPix2Pix starts from SD) and ``ip-adapter`` (trains only
the adapter of a frozen toy-sd).

Every run is seeded; the data of step k is a pure function of k (ToyWorld indices), so a run
that is killed resumes from its last checkpoint (written every few minutes under ``work_dir``)
and continues the same stream.  The final weights are written with ``save_pretrained`` into
``data/models/toy-*`` together with a model card.
"""
from __future__ import annotations

import copy
import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime import data_dir, progress
from . import architectures as arch
from . import world
from .data import segmentation_batch, to_tensor
from .vocab import build_tokenizer

MODELS = ("vae", "clip", "sd", "ip2p", "ip-adapter", "clipseg", "iedit")
IP_ADAPTER_WEIGHTS = "ip-adapter_toy.safetensors"


@dataclass
class Recipe:
    steps: int
    batch_size: int
    lr: float
    warmup: int = 100
    ema_decay: float | None = None
    weight_decay: float = 0.0
    init: str | None = None  # continue from the UNet of this pipeline folder (sd, ip2p)


# The shipped runs (see each model card).  vae and clip were trained on the 2-core CPU; the rest on
# a lent GPU, where each takes minutes (on the CPU, expect about 1 s per step at batch 32).
RECIPES = {
    "vae": Recipe(steps=1200, batch_size=16, lr=1e-3),
    "clip": Recipe(steps=1200, batch_size=128, lr=5e-4, weight_decay=0.05),
    "sd": Recipe(steps=3900, batch_size=128, lr=7e-4, ema_decay=0.999),
    "ip2p": Recipe(steps=3200, batch_size=128, lr=5e-4, ema_decay=0.999),  # then continued, see the script
    "ip-adapter": Recipe(steps=3400, batch_size=128, lr=5e-4),
    "clipseg": Recipe(steps=3500, batch_size=128, lr=1e-3, weight_decay=0.01),
    "iedit": Recipe(steps=1100, batch_size=32, lr=2e-4, warmup=20),
}


# ------------------------------------------------------------------ data of step k


def scene_batch(step: int, batch_size: int, seed: int = 0):
    start = (seed * 7919 + step * batch_size) % 9_000_000
    scenes = [world.scene_for("train", start + i) for i in range(batch_size)]
    images = torch.stack([to_tensor(world.render(s)) for s in scenes])
    return images, [s.caption for s in scenes]


def edit_batch(step: int, batch_size: int, seed: int = 0):
    start = (seed * 7919 + step * batch_size) % 9_000_000
    edits = [world.edit_for("train", start + i) for i in range(batch_size)]
    src = torch.stack([to_tensor(e.source_image()) for e in edits])
    tgt = torch.stack([to_tensor(e.edited_image()) for e in edits])
    return src, tgt, [e.instruction for e in edits]


def models_dir() -> Path:
    return data_dir() / "models"


def _load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(models_dir() / "toy-clip"))


def _load_frozen(name: str, device):
    """Load a shipped toy model needed by a later recipe, frozen, in fp32."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    folder = models_dir() / name
    try:
        if name == "toy-vae":
            m = AutoencoderKL.from_pretrained(str(folder), dtype=torch.float32)
        else:
            m = CLIPTextModel.from_pretrained(str(folder), dtype=torch.float32)
    except OSError as e:
        raise RuntimeError(f"{name} is missing in {folder}; train it first with `editnb toy train "
                           f"{name.removeprefix('toy-')}`") from e
    return m.to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------ recipes


class _Task:
    """What a recipe provides to the generic loop."""

    name: str

    data_fn = staticmethod(scene_batch)  # (step, batch_size, seed) -> CPU batch; runs in loader workers

    def trainable(self) -> torch.nn.Module: ...
    def loss(self, batch, gen: torch.Generator) -> torch.Tensor: ...
    def export(self, module: torch.nn.Module, out: Path) -> None: ...


class VAETask(_Task):
    name = "vae"

    def __init__(self, device, recipe, seed):
        self.device, self.recipe, self.seed = device, recipe, seed
        self.vae = arch.new_vae().to(device)

    def trainable(self):
        return self.vae

    def loss(self, batch, gen):
        images, _ = batch
        images = images.to(self.device)
        posterior = self.vae.encode(images).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(self.device)
        recon = self.vae.decode(z).sample
        # L1 keeps flat colours crisp; the tiny KL keeps the latent space smooth (as SD's VAE)
        return F.mse_loss(recon, images) + 0.5 * F.l1_loss(recon, images) + 1e-6 * posterior.kl().mean()

    def export(self, module, out):
        # scaling factor from the data, as SD does: latents * factor have unit variance
        with torch.no_grad():
            images, _ = scene_batch(10_000, 256, seed=1)
            z = module.encode(images.to(self.device)).latent_dist.sample()
        module.register_to_config(scaling_factor=float(1.0 / z.std()))
        module.to(torch.float16).save_pretrained(str(out))


class CLIPTask(_Task):
    name = "clip"

    def __init__(self, device, recipe, seed):
        self.device, self.recipe, self.seed = device, recipe, seed
        import tempfile

        self.tok = build_tokenizer(tempfile.mkdtemp(prefix="editnb-tok-"))
        self.clip = arch.new_clip(self.tok).to(device)

    def trainable(self):
        return self.clip

    def loss(self, batch, gen):
        images, captions = batch
        ids = self.tok(captions, padding="max_length", max_length=self.tok.model_max_length,
                       truncation=True, return_tensors="pt").input_ids.to(self.device)
        # several scenes in a batch can share a caption: treat them all as positives
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32, device=self.device)
        out = self.clip(input_ids=ids, pixel_values=images.to(self.device))
        target = same / same.sum(1, keepdim=True)
        return (F.cross_entropy(out.logits_per_image, target) + F.cross_entropy(out.logits_per_text, target)) / 2

    def export(self, module, out):
        module.to(torch.float16).save_pretrained(str(out))
        self.tok.save_pretrained(str(out))
        arch.new_image_processor().save_pretrained(str(out))


def _encode_text(tok, text_encoder, texts, device):
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(device)
    return text_encoder(ids).last_hidden_state


def _min_snr_weight(scheduler, t, gamma=5.0):
    """Min-SNR-gamma loss weighting (Hang et al. 2023) for epsilon prediction: faster convergence."""
    alphas = scheduler.alphas_cumprod.to(t.device)[t]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


class SDTask(_Task):
    name = "sd"
    caption_dropout = 0.1

    def __init__(self, device, recipe, seed):
        self.device, self.recipe, self.seed = device, recipe, seed
        self.tok = _load_tokenizer()
        self.text_encoder = _load_frozen("toy-clip", device)
        self.vae = _load_frozen("toy-vae", device)
        self.scheduler = arch.new_scheduler()
        self.previous = None
        if recipe.init:  # continue a shipped model: its UNet, and its training record for the card
            from diffusers import UNet2DConditionModel

            self.unet = UNet2DConditionModel.from_pretrained(recipe.init, subfolder="unet",
                                                             dtype=torch.float32).to(device)
            record = Path(recipe.init) / "training.json"
            if record.exists():
                prev = json.loads(record.read_text())
                self.previous = {k: prev[k] for k in ("steps", "recipe", "seed", "train_seconds", "device",
                                                      "continued_from") if k in prev}
        else:
            self.unet = self.new_unet().to(device)

    def new_unet(self):
        return arch.new_unet()

    def trainable(self):
        return self.unet

    def diffusion_loss(self, latents, cond, gen, extra=None, added_cond_kwargs=None):
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        inp = noisy if extra is None else torch.cat([noisy, extra], 1)
        pred = self.unet(inp, t, cond, added_cond_kwargs=added_cond_kwargs).sample
        per_item = F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3))
        return (per_item * _min_snr_weight(self.scheduler, t)).mean()

    @torch.no_grad()
    def latents(self, images):
        z = self.vae.encode(images.to(self.device)).latent_dist.sample()
        return z * self.vae.config.scaling_factor

    def loss(self, batch, gen):
        images, captions = batch
        drop = torch.rand(len(captions), generator=gen) < self.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop)]
        with torch.no_grad():
            cond = _encode_text(self.tok, self.text_encoder, captions, self.device)
        return self.diffusion_loss(self.latents(images), cond, gen)

    pipeline_class = "StableDiffusionPipeline"

    def export(self, module, out):
        """Save a whole pipeline folder (unet, vae, text_encoder, tokenizer, scheduler) in fp16."""
        import diffusers
        from transformers import CLIPTextModel

        text_encoder = CLIPTextModel.from_pretrained(str(models_dir() / "toy-clip"), dtype=torch.float16)
        pipe = getattr(diffusers, self.pipeline_class)(
            vae=self.vae.to(torch.float16), text_encoder=text_encoder, tokenizer=self.tok,
            unet=module.to(torch.float16), scheduler=self.scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(str(out))


class IP2PTask(SDTask):
    """InstructPix2Pix (Brooks et al. 2023): the UNet sees [noisy target latent, source latent]
    and the instruction; 5% text dropped, 5% image dropped, 5% both (their Sec. 3.2.1)."""

    name = "ip2p"
    dropout = 0.05
    pipeline_class = "StableDiffusionInstructPix2PixPipeline"

    def new_unet(self):
        from diffusers import UNet2DConditionModel

        unet = arch.new_unet(in_channels=2 * arch.LATENT_CHANNELS)
        try:  # start from toy-sd, extra input channels zero-initialised, as InstructPix2Pix does
            sd = UNet2DConditionModel.from_pretrained(str(models_dir() / "toy-sd"), subfolder="unet",
                                                      dtype=torch.float32)
        except OSError as e:
            raise RuntimeError("toy-sd is missing; train it first with `editnb toy train sd`") from e
        state = sd.state_dict()
        w = state["conv_in.weight"]
        state["conv_in.weight"] = torch.cat([w, torch.zeros_like(w)], 1)
        unet.load_state_dict(state)
        return unet

    data_fn = staticmethod(edit_batch)

    def loss(self, batch, gen):
        src, tgt, instructions = batch
        r = torch.rand(len(instructions), generator=gen)
        drop_text = r < 2 * self.dropout
        drop_image = (r >= self.dropout) & (r < 3 * self.dropout)
        instructions = ["" if d else s for s, d in zip(instructions, drop_text)]
        with torch.no_grad():
            cond = _encode_text(self.tok, self.text_encoder, instructions, self.device)
            # the pipeline feeds the UNSCALED mode of the source latent (diffusers' IP2P pipeline)
            src_latents = self.vae.encode(src.to(self.device)).latent_dist.mode()
        src_latents = src_latents * (~drop_image).float().to(self.device)[:, None, None, None]
        return self.diffusion_loss(self.latents(tgt), cond, gen, extra=src_latents)


class IPAdapterTask(SDTask):
    """IP-Adapter (Ye et al. 2023) for toy-sd: a projection of the CLIP image embedding to 4
    tokens and decoupled key/value projections in every cross-attention layer; the UNet stays
    frozen.  Trained on (image, caption) with 5% of captions and 5% of images dropped."""

    name = "ip-adapter"

    def __init__(self, device, recipe, seed):
        from diffusers import StableDiffusionPipeline

        import tempfile

        self.device, self.recipe, self.seed = device, recipe, seed
        folder = Path(tempfile.mkdtemp(prefix="editnb-ip-adapter-"))
        _write_initial_ip_adapter(folder)
        pipe = StableDiffusionPipeline.from_pretrained(str(models_dir() / "toy-sd"), dtype=torch.float32)
        pipe.load_ip_adapter(str(folder), subfolder="models", weight_name=IP_ADAPTER_WEIGHTS)
        pipe.to(device)
        self.pipe, self.tok, self.text_encoder, self.vae = pipe, pipe.tokenizer, pipe.text_encoder, pipe.vae
        self.unet, self.scheduler = pipe.unet, arch.new_scheduler()
        self.image_encoder = pipe.image_encoder.to(torch.float32)
        for m in (self.unet, self.text_encoder, self.vae, self.image_encoder):
            m.requires_grad_(False)
        self.adapter = torch.nn.ModuleDict({
            "image_proj": self.unet.encoder_hid_proj,
            "layers": torch.nn.ModuleList([p for p in self.unet.attn_processors.values()
                                           if hasattr(p, "to_k_ip")]),
        })
        self.adapter.requires_grad_(True)

    def trainable(self):
        return self.adapter

    def loss(self, batch, gen):
        images, captions = batch
        r = torch.rand(len(captions), generator=gen)
        captions = ["" if x < 0.05 else c for c, x in zip(captions, r)]
        with torch.no_grad():
            text = _encode_text(self.tok, self.text_encoder, captions, self.device)
            embeds = self.image_encoder(pixel_values=images.to(self.device)).image_embeds
        embeds = embeds * ((r < 0.05) | (r >= 0.10)).float().to(self.device)[:, None]
        # diffusers' UNet projects the image embedding itself (encoder_hid_proj) and hands the
        # tokens to the IP-Adapter attention processors
        return self.diffusion_loss(self.latents(images), text, gen,
                                   added_cond_kwargs={"image_embeds": [embeds[:, None]]})

    def export(self, module, out):
        _write_image_encoder(out / "models" / "image_encoder")
        _save_ip_adapter(self.unet, out)


def _ip_adapter_state(image_proj, processors) -> dict:
    """The original IP-Adapter file layout that diffusers' ``load_ip_adapter`` reads."""
    state = {f"image_proj.{k.replace('image_embeds', 'proj')}": v for k, v in image_proj.state_dict().items()}
    for i, proc in enumerate(processors):
        k = 2 * i + 1  # the original numbering counts self- and cross-attention: 1, 3, 5, ...
        state[f"ip_adapter.{k}.to_k_ip.weight"] = proc.to_k_ip[0].weight
        state[f"ip_adapter.{k}.to_v_ip.weight"] = proc.to_v_ip[0].weight
    return {key: v.detach().to(torch.float16).contiguous() for key, v in state.items()}


def _write_initial_ip_adapter(folder: Path) -> None:
    """An untrained adapter (keys/values copied from the UNet's text projections, as in the
    IP-Adapter paper) plus toy-clip's vision tower as image encoder."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import ImageProjection
    from safetensors.torch import save_file

    models = folder / "models"
    clip = _write_image_encoder(models / "image_encoder")
    unet = UNet2DConditionModel.from_pretrained(str(models_dir() / "toy-sd"), subfolder="unet", dtype=torch.float32)
    proj = ImageProjection(image_embed_dim=clip.config.projection_dim, cross_attention_dim=arch.TEXT_DIM,
                           num_image_text_embeds=4)
    state = {f"image_proj.{k.replace('image_embeds', 'proj')}": v for k, v in proj.state_dict().items()}
    cross = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    modules = dict(unet.named_modules())
    for i, name in enumerate(cross):
        attn = modules[name.removesuffix(".processor")]
        state[f"ip_adapter.{2 * i + 1}.to_k_ip.weight"] = attn.to_k.weight.detach().clone()
        state[f"ip_adapter.{2 * i + 1}.to_v_ip.weight"] = attn.to_v.weight.detach().clone()
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(models / IP_ADAPTER_WEIGHTS))


def _write_image_encoder(folder: Path):
    """toy-clip's vision tower + projection as the CLIPVisionModelWithProjection diffusers reads."""
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


def _save_ip_adapter(unet, out: Path) -> None:
    from safetensors.torch import save_file

    procs = [p for p in unet.attn_processors.values() if hasattr(p, "to_k_ip")]
    state = _ip_adapter_state(unet.encoder_hid_proj.image_projection_layers[0], procs)
    save_file(state, str(out / "models" / IP_ADAPTER_WEIGHTS))


class CLIPSegTask(_Task):
    """CLIPSeg (Lueddecke & Ecker 2022) for ToyWorld: toy-clip's towers, frozen as CLIPSeg freezes
    CLIP, and the FiLM-conditioned decoder trained with binary cross-entropy on exact masks of
    text queries ('red circle', 'circle', 'green background', absent objects -> empty)."""

    name = "clipseg"
    data_fn = staticmethod(segmentation_batch)

    def __init__(self, device, recipe, seed):
        from transformers import CLIPModel

        self.device, self.recipe, self.seed = device, recipe, seed
        self.tok = _load_tokenizer()
        clip = CLIPModel.from_pretrained(str(models_dir() / "toy-clip"), dtype=torch.float32)
        self.model = arch.new_clipseg(clip).to(device)
        self.model.clip.requires_grad_(False)

    def trainable(self):
        return self.model

    def loss(self, batch, gen):
        images, queries, masks = batch
        ids = self.tok(queries, padding="max_length", max_length=self.tok.model_max_length, truncation=True,
                       return_tensors="pt").input_ids.to(self.device)
        logits = self.model(input_ids=ids, pixel_values=images.to(self.device)).logits
        return F.binary_cross_entropy_with_logits(logits, masks.to(self.device))

    def export(self, module, out):
        module.to(torch.float16).save_pretrained(str(out))
        arch.new_clipseg_processor(self.tok).save_pretrained(str(out))


class IEditTask(_Task):
    """iEdit (Bodur et al. 2024) fine-tune of toy-sd: a pseudo-paired ToyWorld set (Sec. 3.1,
    toy-clip retrieval, toy-clipseg masks) and the objective of Eq. 12, updating the UNet's input
    blocks on even steps and its middle block on odd steps (Sec. 4.1)."""

    name = "iedit"
    pairs, pool = 4096, 8192  # the training set; the smoke test makes them small
    loader_workers = 0        # batches are slices of the prebuilt set, nothing to render

    def __init__(self, device, recipe, seed):
        from diffusers import StableDiffusionPipeline

        from ..metrics import ClipFeatures
        from ..methods import iedit
        from ..models import load

        # a private fp32 copy of toy-sd to fine-tune (models.load's cached pipeline is shared)
        self.device, self.recipe, self.seed, self.iedit = device, recipe, seed, iedit
        pipe = StableDiffusionPipeline.from_pretrained(str(models_dir() / "toy-sd"), dtype=torch.float32,
                                                       safety_checker=None, requires_safety_checker=False)
        pipe.to(device)
        self.unet, self.vae, self.tok, self.text_encoder = pipe.unet, pipe.vae, pipe.tokenizer, pipe.text_encoder
        self.scheduler = arch.new_scheduler()
        for m in (self.vae, self.text_encoder, self.unet):
            m.requires_grad_(False)
        self.groups = iedit.trainable_groups(self.unet)
        for group in self.groups:
            for p in group:
                p.requires_grad_(True)
        clip_model, processor = load("clip", profile="toy", device=str(device), dtype=torch.float32)
        self.clip = iedit.DifferentiableCLIP(clip_model, processor)
        clipseg = load("clipseg", profile="toy", device=str(device), dtype=torch.float32)
        t0 = time.time()
        self.paired = iedit.toy_paired_set(self.pairs, self.pool, seed=seed,
                                           features=ClipFeatures(clip_model, processor), clipseg=clipseg)
        self.dataset_stats = {"pairs": self.pairs, "pool": self.pool, "build_seconds": round(time.time() - t0, 1),
                              "pseudo_target_accuracy": round(iedit.pseudo_target_accuracy(self.paired), 3)}
        print(f"iEdit paired set: {self.dataset_stats}")

    def data_fn(self, step, batch_size, seed):
        idx = np.random.default_rng([seed, step]).choice(len(self.paired), size=batch_size, replace=False)
        return step, self.paired.batch(idx)

    def trainable(self):
        return self.unet

    def loss(self, batch, gen):
        step, (x1, x2, m1, m2, prompts, differences) = batch
        active = self.groups[step % 2]  # input blocks on even steps, the middle block on odd ones
        for group in self.groups:
            for p in group:
                p.requires_grad_(group is active)
        with torch.no_grad():
            text = _encode_text(self.tok, self.text_encoder, prompts, self.device)
        d = self.device
        terms = self.iedit.objective(self.unet, self.vae, self.scheduler, self.clip, text, prompts, differences,
                                     x1.to(d), x2.to(d), m1.to(d), m2.to(d), generator=gen)
        return terms.total

    def export(self, module, out):
        from safetensors.torch import save_file

        from ..models import IEDIT_WEIGHTS

        names = {id(p) for group in self.groups for p in group}
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in module.named_parameters() if id(v) in names}
        save_file(state, str(out / IEDIT_WEIGHTS))
        (out / "paired_set.json").write_text(json.dumps(self.dataset_stats, indent=1))


TASKS = {"vae": VAETask, "clip": CLIPTask, "sd": SDTask, "ip2p": IP2PTask, "ip-adapter": IPAdapterTask,
         "clipseg": CLIPSegTask, "iedit": IEditTask}


# ------------------------------------------------------------------ the loop


class _StepBatches(torch.utils.data.Dataset):
    """The batches of steps [start, end): item k is ``data_fn(start + k, ...)``, a pure function
    of the step, so loader workers can render ToyWorld ahead of the GPU without changing the data."""

    def __init__(self, data_fn, start: int, end: int, batch_size: int, seed: int):
        self.data_fn, self.start, self.end, self.batch_size, self.seed = data_fn, start, end, batch_size, seed

    def __len__(self):
        return self.end - self.start

    def __getitem__(self, k):
        return self.data_fn(self.start + k, self.batch_size, self.seed)


def _batches(task, start: int, end: int, recipe: Recipe, seed: int, workers: int):
    data = _StepBatches(task.data_fn, start, end, recipe.batch_size, seed)
    if workers == 0:
        return (data[k] for k in range(len(data)))
    return iter(torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, prefetch_factor=4,
                                            persistent_workers=False))


def _lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    progress_ = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))


def train(model: str, steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
          device: str | None = None, seed: int = 0, work_dir: str | Path = ".editnb-train",
          checkpoint_minutes: float = 2.0, out_dir: str | Path | None = None, export: bool = True,
          workers: int | None = None, ema_decay: float | None = None, init: str | None = None) -> dict:
    """Train one ToyWorld model; resume from ``work_dir`` if a checkpoint is there.

    ``workers`` render ToyWorld batches in background processes (default: none on CPU, where the
    cores are busy with the model; up to 8 on CUDA, where rendering would starve the GPU).

    Returns a summary (steps, final loss, wall time) that also goes into the model card.
    """
    if model not in TASKS:
        raise ValueError(f"unknown toy model {model!r}; choose one of {MODELS}")
    recipe = copy.copy(RECIPES[model])
    if steps is not None:
        recipe.steps = steps
    if batch_size is not None:
        recipe.batch_size = batch_size
    if lr is not None:
        recipe.lr = lr
    if ema_decay is not None:
        recipe.ema_decay = ema_decay
    if init is not None:
        if model not in ("sd", "ip2p"):
            raise ValueError(f"--init continues a UNet (sd or ip2p), not {model!r}")
        if not (Path(init) / "unet").is_dir():
            raise ValueError(f"--init needs a pipeline folder with a unet/ subfolder, got {init}")
        recipe.init = str(init)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    task = TASKS[model](device, recipe, seed)
    module = task.trainable()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    ema = copy.deepcopy(module).requires_grad_(False) if recipe.ema_decay else None

    ckpt_path = Path(work_dir) / model / "checkpoint.pt"
    step, elapsed, history = 0, 0.0, []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        module.load_state_dict(ckpt["module"])
        opt.load_state_dict(ckpt["opt"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        step, elapsed, history = ckpt["step"], ckpt["elapsed"], ckpt["history"]
        print(f"resuming {model} from step {step} ({ckpt_path})")

    def save_checkpoint():
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"module": module.state_dict(), "opt": opt.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None, "step": step,
                    "elapsed": elapsed, "history": history, "recipe": asdict(recipe)}, tmp)
        tmp.replace(ckpt_path)  # atomic: a kill never leaves a half-written checkpoint

    if workers is None:
        workers = 0 if device.type == "cpu" else max(0, min(8, (os.cpu_count() or 1) - 2))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batches = _batches(task, step, recipe.steps, recipe, seed, getattr(task, "loader_workers", workers))
    module.train()
    bar = progress(total=recipe.steps, initial=step, desc=f"train {model}")
    last_save = time.time()
    while step < recipe.steps:
        t0 = time.time()
        for group in opt.param_groups:
            group["lr"] = recipe.lr * _lr_factor(step, recipe)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        loss = task.loss(next(batches), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if ema is not None:
            decay = min(recipe.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), module.parameters()):
                    pe.lerp_(pm, 1 - decay)
        step += 1
        elapsed += time.time() - t0
        if step % 10 == 0 or step == 1:
            history.append((step, loss.item()))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if time.time() - last_save > checkpoint_minutes * 60:
            save_checkpoint()
            last_save = time.time()
    bar.close()
    save_checkpoint()
    summary = {
        "model": model, "steps": step, "recipe": asdict(recipe), "seed": seed,
        "final_loss": float(np.mean([l for _, l in history[-20:]])) if history else None,
        "train_seconds": round(elapsed, 1), "device": _hardware(device),
    }
    if getattr(task, "previous", None):
        summary["continued_from"] = task.previous
    if export:
        out = Path(out_dir) if out_dir else models_dir() / f"toy-{model}"
        out.mkdir(parents=True, exist_ok=True)
        final = ema if ema is not None else module
        final.eval()
        task.export(final, out)
        (out / "training.json").write_text(json.dumps({**summary, "loss_history": history}, indent=1))
        write_card(out, summary)
        if out.parent == models_dir():
            share_weights()
    return summary


def share_weights(root: Path | None = None) -> None:
    """Store each weight tensor of the family once, so data/models stays small: toy-clip becomes a
    sharded checkpoint whose text shard is exactly a CLIPTextModel and whose vision shard is exactly
    a CLIPVisionModelWithProjection, and the pipelines' copies (text encoders, the IP-Adapter's
    image encoder, the VAEs) become relative symbolic links to those files when, and only when,
    they hold the same tensors.  Idempotent; every folder still loads with from_pretrained."""
    from safetensors.torch import load_file, save_file

    root = Path(root) if root else models_dir()
    clip = root / "toy-clip"
    whole = clip / "model.safetensors"
    if whole.exists() and not whole.is_symlink():
        state = load_file(str(whole))
        shards = {"model-text.safetensors": lambda k: k.startswith("text_model."),
                  "model-vision.safetensors": lambda k: k.startswith(("vision_model.", "visual_projection.")),
                  "model-heads.safetensors": lambda k: not k.startswith(("text_model.", "vision_model.",
                                                                         "visual_projection."))}
        weight_map = {}
        for name, belongs in shards.items():
            part = {k: v for k, v in state.items() if belongs(k)}
            save_file(part, str(clip / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in part})
        total = sum(v.numel() * v.element_size() for v in state.values())
        (clip / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=1))
        whole.unlink()

    def same_tensors(a: Path, b: Path) -> bool:
        if not (a.exists() and b.exists()):
            return False
        x, y = load_file(str(a)), load_file(str(b))
        return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)

    def link(path: Path, target: Path) -> None:
        if path.is_symlink() or not same_tensors(path, target):
            return
        path.unlink()
        path.symlink_to(os.path.relpath(target, path.parent))

    for pipe in ("toy-sd", "toy-ip2p"):
        link(root / pipe / "text_encoder" / "model.safetensors", clip / "model-text.safetensors")
        vae = root / pipe / "vae"
        if vae.is_dir() and not vae.is_symlink() and same_tensors(vae / "diffusion_pytorch_model.safetensors",
                                                                root / "toy-vae" / "diffusion_pytorch_model.safetensors"):
            shutil.rmtree(vae)
            vae.symlink_to("../toy-vae")
    link(root / "toy-ip-adapter" / "models" / "image_encoder" / "model.safetensors", clip / "model-vision.safetensors")


def _hardware(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


CARD_DESCRIPTIONS = {
    "vae": "AutoencoderKL, 64x64 RGB -> 16x16x4 latents (downsampling 4); scaling factor from the data.",
    "clip": "CLIPModel (text and vision towers) trained contrastively on ToyWorld images and captions; "
            "one token per word (hand-made BPE vocabulary).",
    "sd": "Text-to-image StableDiffusionPipeline: UNet2DConditionModel on 16x16 latents with self- and "
          "cross-attention at 16x16 and 8x8, toy-vae, toy-clip's text tower, DDIM.",
    "ip2p": "StableDiffusionInstructPix2PixPipeline: 8-channel UNet (noisy latent + source latent) trained "
            "on ToyWorld edit triplets with the instruction as text, started from toy-sd.",
    "ip-adapter": "IP-Adapter for toy-sd (image projection to 4 tokens + decoupled cross-attention), "
                  "toy-clip's vision tower as image encoder.",
    "clipseg": "CLIPSegForImageSegmentation: toy-clip's text and vision towers (frozen) and a FiLM-conditioned "
               "decoder trained on exact ToyWorld masks of text queries; the masks of iEdit.",
    "iedit": "iEdit fine-tune of toy-sd (Bodur et al. 2024): the UNet's input and middle blocks, updated "
             "alternately with the objective of Eq. 12 on a pseudo-paired ToyWorld set; the file holds those "
             "blocks only (load with editnb.models.load('iedit')).",
}


def write_card(folder: Path, summary: dict, evaluation: dict | None = None) -> None:
    """Model card: what it is, the recipe, steps, wall time, hardware, evaluation figures."""
    model = summary["model"]
    lines = [f"# toy-{model}", "", CARD_DESCRIPTIONS[model], "",
             "Part of the editnb ToyWorld family; trained by `editnb toy train "
             f"{model}` (see `editnb/toy/train.py`).", "", "## Training", ""]
    r = summary["recipe"]
    lines += [f"- steps: {summary['steps']} at batch {r['batch_size']}, AdamW lr {r['lr']} "
              f"(warm-up {r['warmup']}, cosine to 10%)" + (f", EMA {r['ema_decay']}" if r.get("ema_decay") else ""),
              f"- seed: {summary['seed']}",
              f"- wall time: {summary['train_seconds'] / 60:.1f} min on {summary['device']}",
              f"- final training loss (mean of last 20 logged): {summary['final_loss']:.4f}"]
    prev = summary.get("continued_from")
    while prev:  # a continued run lists the runs it built on
        lines.append(f"- continued from a run of {prev['steps']} steps at batch {prev['recipe']['batch_size']} "
                     f"(seed {prev['seed']}, {prev['train_seconds'] / 60:.1f} min on {prev['device']})")
        prev = prev.get("continued_from")
    if evaluation:
        lines += ["", "## Evaluation (`editnb toy eval`)", ""]
        lines += [f"- {k}: {v}" for k, v in evaluation.items()]
    (folder / "README.md").write_text("\n".join(lines) + "\n")
