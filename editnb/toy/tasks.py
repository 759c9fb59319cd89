"""The training tasks of the ToyWorld models (see :mod:`editnb.training` for the protocol).

Order matters: ``vae`` and ``clip`` first (independent), then ``sd`` (needs both), then ``ip2p``
(starts from toy-sd's UNet, as InstructPix2Pix starts from SD) and ``ip-adapter`` (trains only
the adapter of a frozen toy-sd).  The data of step k is a pure function of k (ToyWorld indices).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import IP_ADAPTER_WEIGHTS, models_dir, tokenize
from ..attention.words import token_indices
from ..runtime import check_number
from . import architectures as arch
from . import ip_adapter, world
from .data import segmentation_batch, to_tensor
from .vocab import build_tokenizer

# ------------------------------------------------------------------ data of step k


def scene_batch(step: int, batch_size: int, seed: int = 0):
    start = (seed * 7919 + step * batch_size) % 9_000_000
    scenes = [world.scene_for("train", start + i) for i in range(batch_size)]
    images = torch.stack([to_tensor(world.render(s)) for s in scenes])
    return images, [s.caption for s in scenes]


def segmented_scene_batch(step: int, batch_size: int, seed: int = 0):
    """:func:`scene_batch` plus each scene's exact segmentation (B, 64, 64): 0 for the background,
    k for its k-th object (objects never overlap), and the shape word of each object in that order."""
    start = (seed * 7919 + step * batch_size) % 9_000_000
    scenes = [world.scene_for("train", start + i) for i in range(batch_size)]
    images = torch.stack([to_tensor(world.render(s)) for s in scenes])
    segments = torch.from_numpy(np.stack([segmentation(s) for s in scenes]))
    return images, [s.caption for s in scenes], segments, [[o.shape for o in s.objects] for s in scenes]


def segmentation(scene: world.Scene) -> np.ndarray:
    """(64, 64) int64 labels of a scene: 0 for the background, k for its k-th object."""
    labels = np.zeros((world.RESOLUTION,) * 2, np.int64)
    for k, obj in enumerate(scene.objects, 1):
        labels[world.object_mask(obj)] = k
    return labels


def edit_batch(step: int, batch_size: int, seed: int = 0, kind_share: dict | None = None):
    """The edits of step k.  ``kind_share`` (e.g. ``{"add": 0.4}``) makes that share of the batch
    edits of the named kinds (the first items, so the shares are exact at every batch size); the
    rest keep ToyWorld's own mix of kinds."""
    start = (seed * 7919 + step * batch_size) % 9_000_000
    kinds = _batch_kinds(batch_size, kind_share)
    edits = [world.edit_for("train", start + i, kind) for i, kind in enumerate(kinds)]
    src = torch.stack([to_tensor(e.source_image()) for e in edits])
    tgt = torch.stack([to_tensor(e.edited_image()) for e in edits])
    return src, tgt, [e.instruction for e in edits]


def _batch_kinds(batch_size: int, kind_share: dict | None) -> list[str | None]:
    """The edit kind of each item of a batch: ``round(share * batch_size)`` items of each kind named
    in `kind_share`, then None (ToyWorld's own mix) for the rest."""
    kind_share = dict(kind_share or {})
    unknown = sorted(set(kind_share) - set(world.EDIT_KINDS))
    if unknown:
        raise ValueError(f"kind_share names unknown edit kinds {unknown}; the kinds are {world.EDIT_KINDS}")
    if any(not 0 <= v <= 1 for v in kind_share.values()) or sum(kind_share.values()) > 1:
        raise ValueError(f"kind_share gives each kind a share in [0, 1], summing to at most 1; got {kind_share}")
    kinds: list[str | None] = []
    for kind, share in kind_share.items():
        kinds += [kind] * round(share * batch_size)
    return (kinds + [None] * batch_size)[:batch_size]


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


# ------------------------------------------------------------------ tasks


class _Task:
    """A toy model's task: the protocol of :mod:`editnb.training` plus ``export`` (write the
    shipped folder) and ``previous`` (the record of the run it continues, for the card)."""

    name: str
    previous: dict | None = None

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
        ids = tokenize(self.tok, captions).to(self.device)
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
    return text_encoder(tokenize(tok, texts).to(device)).last_hidden_state


def _min_snr_weight(scheduler, t, gamma=5.0):
    """Min-SNR-gamma loss weighting (Hang et al. 2023) for epsilon prediction: faster convergence."""
    alphas = scheduler.alphas_cumprod.to(t.device)[t]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def _training_record(folder: Path) -> dict | None:
    """The training summary of a shipped model that a run continues (for its card)."""
    record = folder / "training.json"
    if not record.exists():
        return None
    prev = json.loads(record.read_text())
    return {k: prev[k] for k in ("steps", "recipe", "seed", "train_seconds", "device", "continued_from") if k in prev}


class SDTask(_Task):
    """Text-to-image denoising (SD's objective, Min-SNR weighted), optionally with attention objectives
    from ToyWorld's exact masks: ``object_attention`` weighs :func:`object_attention_loss` on the
    self-attention layers that train, ``word_attention`` weighs :func:`word_attention_loss` on every
    cross-attention layer; ``train_only`` (module-name patterns, e.g. ``["up_blocks.1.*.attn1"]``)
    trains those modules and freezes the rest.

    Why: in a world of flat colours the best denoiser of a background patch averages the whole
    background, so toy-sd trained on denoising alone attends almost uniformly at 16x16 (row entropy
    0.995 of uniform; the card's History), where SD 1.5, trained on textured photographs, attends
    within objects and near the query.  The course reads that self-attention (ViMAEdit's Eq. 9, P2P's
    self-attention injection), so toy-sd is taught it.  Training only the finer level's decoder
    self-attention leaves every 8x8 map (the cross-attention that grounds P2P's local blend and
    ViMAEdit's s_0) and every weight the other toy models build on exactly as they were."""

    name = "sd"
    caption_dropout = 0.1

    def __init__(self, device, recipe, seed, object_attention: float = 0.0, word_attention: float = 0.0,
                 attention_sigma: float | None = None, attention_max_t: float = 0.7, train_only=None, **shape):
        self.device, self.recipe, self.seed = device, recipe, seed
        self.object_attention = check_number(object_attention, "object_attention", "1.0")
        self.word_attention = check_number(word_attention, "word_attention", "1.0")
        self.attention_sigma = None if attention_sigma is None else check_number(attention_sigma, "attention_sigma", "6.0")
        self.attention_max_t = check_number(attention_max_t, "attention_max_t", "0.7")
        if not 0 < self.attention_max_t <= 1:
            raise ValueError(f"attention_max_t is the share of the noise schedule whose items the attention objectives "
                             f"read, in (0, 1]; got {attention_max_t!r}")
        if min(self.object_attention, self.word_attention) < 0 or (self.attention_sigma or 1) <= 0:
            raise ValueError(f"object_attention and word_attention must be >= 0 and attention_sigma > 0 (or None), got "
                             f"{object_attention!r}, {word_attention!r} and {attention_sigma!r}")
        if self.object_attention or self.word_attention:
            self.data_fn = segmented_scene_batch
        shape = {k: v for k, v in shape.items() if v is not None}  # None: the shipped shape, or --init's
        self.shape = {**arch.UNET_SHAPE, **shape}  # the UNet's levels, heads, layers
        self.tok = _load_tokenizer()
        self.text_encoder = _load_frozen("toy-clip", device)
        self.vae = _load_frozen("toy-vae", device)
        self.scheduler = arch.new_scheduler()
        self.previous = None
        if recipe.init:  # continue a shipped model: its UNet, and its training record for the card
            from diffusers import UNet2DConditionModel

            self.unet = UNet2DConditionModel.from_pretrained(recipe.init, subfolder="unet",
                                                             dtype=torch.float32).to(device)
            c = self.unet.config
            held = {"levels": len(c.down_block_types), "heads": c.attention_head_dim, "layers": c.layers_per_block}
            if any(self.shape[k] != held[k] for k in shape):
                raise ValueError(f"--init {recipe.init} continues a UNet of shape {held}; the options ask for "
                                 f"{ {k: shape[k] for k in shape} }: drop them, or train a new UNet without --init")
            self.previous = _training_record(Path(recipe.init))
        else:
            self.unet = self.new_unet().to(device)
        self.trained = train_only_modules(self.unet, train_only)

    def new_unet(self):
        return arch.new_unet(**self.shape)

    def trainable(self):
        return self.unet

    def diffusion_loss(self, latents, cond, gen, extra=None, added_cond_kwargs=None, segments=None):
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen).to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        inp = noisy if extra is None else torch.cat([noisy, extra], 1)
        store = None
        if segments is not None:
            from ..attention import AttentionStore

            # the trained self-attention layers' maps (and every cross-attention map for the word term)
            store = AttentionStore(kinds=("self", "cross"), cond_half=False, max_self_resolution=None, differentiable=True,
                                   device=None, where=lambda site: site.kind == "cross" and self.word_attention > 0 or (
                                       site.kind == "self" and self.object_attention > 0 and _trains(site.layer, self.trained)))
        pred = self._predict(inp, t, cond, added_cond_kwargs, store)
        per_item = F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3))
        loss = (per_item * _min_snr_weight(self.scheduler, t)).mean()
        if store is not None:
            loss = loss + self._attention_terms(store, t, *segments)
        return loss

    def _predict(self, inp, t, cond, added_cond_kwargs, store):
        if store is None:
            return self.unet(inp, t, cond, added_cond_kwargs=added_cond_kwargs).sample
        from ..attention import attach

        with attach(self.unet, store):
            return self.unet(inp, t, cond, added_cond_kwargs=added_cond_kwargs).sample

    def _attention_terms(self, store, t, segments, tokens) -> torch.Tensor:
        """The weighted attention objectives on the items whose objects x_t still shows (t < attention_max_t T;
        ViMAEdit grounds from 0.8 T on, where a DDIM-inverted x_t still carries the objects)."""
        seen = (t < self.attention_max_t * self.scheduler.config.num_train_timesteps).cpu()
        total = torch.zeros((), device=self.device)
        if not seen.any():
            return total
        maps = [(p, store.sites[layer].kind) for (layer, _), p in store.maps.items()]
        own = [object_attention_loss(p[seen.to(p.device)], segments[seen].to(self.device), self.attention_sigma)
               for p, kind in maps if kind == "self"]
        kept = [item if keep else None for item, keep in zip(tokens, seen.tolist())]
        words = [w for p, kind in maps if kind == "cross"
                 for w in [word_attention_loss(p, segments.to(self.device), kept)] if w is not None]
        if own:
            total = total + self.object_attention * torch.stack(own).mean()
        if words:
            total = total + self.word_attention * torch.stack(words).mean()
        return total

    @torch.no_grad()
    def latents(self, images):
        z = self.vae.encode(images.to(self.device)).latent_dist.sample()
        return z * self.vae.config.scaling_factor

    def loss(self, batch, gen):
        images, captions, *segmented = batch
        drop = torch.rand(len(captions), generator=gen) < self.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop)]
        with torch.no_grad():
            cond = _encode_text(self.tok, self.text_encoder, captions, self.device)
        if segmented:  # each object's shape-word tokens, none where the caption was dropped
            segments, words = segmented
            tokens = [[token_indices(self.tok, c, w) for w in ws] if c else None for c, ws in zip(captions, words)]
            segmented = (segments, tokens)
        return self.diffusion_loss(self.latents(images), cond, gen, segments=segmented or None)

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


def train_only_modules(unet, patterns) -> list[str] | None:
    """Freeze every parameter of `unet` except those of the modules whose names match one of
    `patterns` (fnmatch, e.g. ``"up_blocks.1.*.attn1"``); None trains everything.  Returns the
    matched module names; a pattern that matches nothing is refused with the attention modules' names."""
    if patterns is None:
        return None
    from fnmatch import fnmatchcase

    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    names = [n for n, _ in unet.named_modules() if n]
    matched = [n for n in names if any(fnmatchcase(n, p) for p in patterns)]
    missing = [p for p in patterns if not any(fnmatchcase(n, p) for n in names)]
    if missing:
        attention = [n for n in names if n.endswith((".attn1", ".attn2"))]
        raise ValueError(f"train_only: no module of the UNet matches {missing}; its attention modules are {attention}")
    unet.requires_grad_(False)
    for n, module in unet.named_modules():
        if n in matched:
            module.requires_grad_(True)
    return matched


def _trains(layer: str, trained: list[str] | None) -> bool:
    """Whether the attention processor `layer` (``...attn1.processor``) sits in a trained module."""
    return trained is None or any(layer == m or layer.startswith(m + ".") for m in trained)


def object_attention_target(segments: torch.Tensor, side: int, sigma: float | None = None) -> torch.Tensor:
    """The self-attention rows the object-attention objective asks for at a side x side level:
    (B, side², side²), row i spread over the patches j of i's own segment (object or background),
    evenly (`sigma` None) or with weight exp(-|x_i - x_j|² / 2σ²), σ in image pixels; normalised
    to sum to 1 (a patch is in the segment that covers most of it).  Own segment: what SD's
    attention does at 16x16 and 32x32; near the query: what it also does in texture."""
    label = _patch_labels(segments, side)
    target = (label[:, :, None] == label[:, None, :]).float()
    if sigma is not None:
        cell = world.RESOLUTION / side
        yx = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2).float()
        target = target * torch.exp(-torch.cdist(yx, yx).square() * cell ** 2 / (2 * sigma ** 2)).to(segments.device)
    return target / target.sum(-1, keepdim=True)


def _patch_labels(segments: torch.Tensor, side: int) -> torch.Tensor:
    """(B, side²) segment label of each patch of a side x side level: the segment covering most of it."""
    one_hot = F.one_hot(segments, int(segments.max()) + 1).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(one_hot, side).argmax(1).flatten(1)


def object_attention_loss(probs: torch.Tensor, segments: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """KL(target || head-mean attention) of each row, averaged within each segment, then over an
    image's segments and over the images: zero exactly when each row of the attention `probs`
    (B, queries, keys), a square level, is :func:`object_attention_target`'s.  Averaging by segment
    gives a small object's rows the weight of the background's, which covers 90 % of a scene."""
    side = int(round(probs.shape[1] ** 0.5))
    target = object_attention_target(segments, side, sigma).to(probs.dtype)
    kl = (target * (target.clamp_min(1e-12).log() - probs.clamp_min(1e-12).log())).sum(-1)  # (B, rows)
    label = _patch_labels(segments, side)
    one_hot = F.one_hot(label).to(kl.dtype)  # (B, rows, segments)
    rows = one_hot.sum(1)  # rows per segment
    per_segment = (kl[:, :, None] * one_hot).sum(1) / rows.clamp_min(1)
    present = (rows > 0).to(kl.dtype)
    return ((per_segment * present).sum(-1) / present.sum(-1)).mean()


def word_attention_loss(probs: torch.Tensor, segments: torch.Tensor, tokens: list) -> torch.Tensor | None:
    """KL(object mask || word map): each object's shape word, its cross-attention over the patches
    (`probs` (B, queries, tokens), a square level; the word's column normalised over the patches)
    against the uniform distribution over the object's patches.  ``tokens[b]`` lists item b's
    objects' token indices in label order (None: skip the item).  None when nothing is left."""
    label = _patch_labels(segments, int(round(probs.shape[1] ** 0.5)))
    terms = []
    for b, objects in enumerate(tokens):
        for k, idx in enumerate(objects or (), 1):
            inside = (label[b] == k).to(probs.dtype)
            if not inside.any():
                continue
            column = probs[b, :, idx].mean(-1)
            column = column / column.sum().clamp_min(1e-12)
            target = inside / inside.sum()
            terms.append((target * (target.clamp_min(1e-12).log() - column.clamp_min(1e-12).log())).sum())
    return torch.stack(terms).mean() if terms else None


def ip2p_unet_from_sd(sd_unet=None):
    """InstructPix2Pix's initialisation (Brooks et al. 2023, Sec. 3.2): an 8-channel UNet with the
    weights of a text-to-image UNet (default: toy-sd's), the extra (image) input channels zero."""
    from diffusers import UNet2DConditionModel

    if sd_unet is None:
        try:
            sd_unet = UNet2DConditionModel.from_pretrained(str(models_dir() / "toy-sd"), subfolder="unet",
                                                           dtype=torch.float32)
        except OSError as e:
            raise RuntimeError("toy-sd is missing; train it first with `editnb toy train sd`") from e
    unet = arch.new_unet(in_channels=2 * arch.LATENT_CHANNELS)
    state = {k: v.detach().float().cpu() for k, v in sd_unet.state_dict().items()}
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, torch.zeros_like(w)], 1)
    unet.load_state_dict(state)
    return unet


def freeze_blocks(unet, blocks) -> list[str]:
    """Keep the named top-level blocks of `unet` (e.g. ``["time_embedding"]``) at their initial
    weights: no gradient, so the optimiser never moves them.  Returns the frozen state-dict keys;
    a name the UNet lacks is refused with the names it has."""
    blocks = list(blocks or ())
    children = dict(unet.named_children())
    unknown = [b for b in blocks if b not in children]
    if unknown:
        raise ValueError(f"the UNet has no block {unknown}; its top-level blocks are {sorted(children)}")
    for b in blocks:
        children[b].requires_grad_(False)
    return [k for k in unet.state_dict() if k.split(".", 1)[0] in blocks]


class IP2PTask(SDTask):
    """InstructPix2Pix (Brooks et al. 2023): the UNet sees [noisy target latent, source latent]
    and the instruction; 5% text dropped, 5% image dropped, 5% both (their Sec. 3.2.1).

    ``frozen`` names UNet blocks kept at toy-sd's weights (none by default); the matched baseline
    of UIP2P freezes what UIP2P freezes (``--option frozen='["time_embedding"]'``)."""

    name = "ip2p"
    dropout = 0.05
    pipeline_class = "StableDiffusionInstructPix2PixPipeline"

    def __init__(self, device, recipe, seed, frozen=(), kind_share=None):
        super().__init__(device, recipe, seed)
        if self.unet.config.in_channels == arch.LATENT_CHANNELS:  # --init data/models/toy-sd: widen it as new_unet does
            self.unet = ip2p_unet_from_sd(self.unet).to(device)
        self.frozen = list(frozen)
        freeze_blocks(self.unet, self.frozen)
        _batch_kinds(1, kind_share)  # refuse a bad mix before any compute
        self.kind_share = dict(kind_share or {})

    def new_unet(self):
        return ip2p_unet_from_sd()

    def data_fn(self, step, batch_size, seed):
        return edit_batch(step, batch_size, seed, self.kind_share)

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


IMAGE_DROPOUT = 0.05  # IP-Adapter's 5% of images dropped alone and 5% dropped with the caption


def ip_adapter_dropout(r: torch.Tensor, caption_dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which captions and which images of a batch are dropped, from uniform draws `r` (B,).

    r < 0.05: both (the unconditional case that classifier-free guidance needs); r < p: the caption
    alone (the image speaks alone, as at inference with an empty prompt); the next 0.05: the image
    alone; the rest keep both.  Returns boolean masks (drop_caption, drop_image)."""
    if not IMAGE_DROPOUT <= caption_dropout <= 1 - IMAGE_DROPOUT:
        raise ValueError(f"caption_dropout must lie in [{IMAGE_DROPOUT}, {1 - IMAGE_DROPOUT}] (it includes the "
                         f"{IMAGE_DROPOUT:.0%} of examples that drop both), got {caption_dropout}")
    drop_caption = r < caption_dropout
    drop_image = (r < IMAGE_DROPOUT) | ((r >= caption_dropout) & (r < caption_dropout + IMAGE_DROPOUT))
    return drop_caption, drop_image


class IPAdapterTask(SDTask):
    """IP-Adapter (Ye et al. 2023) for toy-sd: a projection of the CLIP image embedding to 4
    tokens and decoupled key/value projections in every cross-attention layer; the UNet stays
    frozen.  Trained on (image, caption) with conditions dropped as :func:`ip_adapter_dropout` says.

    Most captions are dropped (the recipe's ``caption_dropout``), unlike the paper's 5%: the image
    branch's output is added to the text branch's (their Eq. 5) and never sees the caption, so it
    learns the average of what each training example asks of it.  A ToyWorld caption names every
    object, so with the caption present the image must add nothing (more of the same overshoots);
    with 95% captions the adapter learned a third of the shift the image alone needs and toy-sd
    did not bring the scene back (recall at chance)."""

    name = "ip-adapter"

    def __init__(self, device, recipe, seed):
        from diffusers import StableDiffusionPipeline

        import tempfile

        self.device, self.recipe, self.seed = device, recipe, seed
        self.previous = _training_record(Path(recipe.init)) if recipe.init else None
        if recipe.init:  # continue a shipped adapter
            folder = Path(recipe.init)
        else:
            folder = Path(tempfile.mkdtemp(prefix="editnb-ip-adapter-"))
            ip_adapter.write_initial(folder)
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
        drop_caption, drop_image = ip_adapter_dropout(torch.rand(len(captions), generator=gen),
                                                      self.recipe.caption_dropout)
        captions = ["" if d else c for c, d in zip(captions, drop_caption.tolist())]
        with torch.no_grad():
            text = _encode_text(self.tok, self.text_encoder, captions, self.device)
            embeds = self.image_encoder(pixel_values=images.to(self.device)).image_embeds
        # a dropped image is the zero embedding, the negative of classifier-free guidance at inference
        embeds = embeds * (~drop_image).float().to(self.device)[:, None]
        # diffusers' UNet projects the image embedding itself (encoder_hid_proj) and hands the
        # tokens to the IP-Adapter attention processors
        return self.diffusion_loss(self.latents(images), text, gen,
                                   added_cond_kwargs={"image_embeds": [embeds[:, None]]})

    def export(self, module, out):
        """Write `module` (the trained adapter, or its EMA copy), not the weights inside self.unet."""
        ip_adapter.write_image_encoder(out / "models" / "image_encoder")
        ip_adapter.save(module["image_proj"], module["layers"], out)


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
        ids = tokenize(self.tok, queries).to(self.device)
        logits = self.model(input_ids=ids, pixel_values=images.to(self.device)).logits
        return F.binary_cross_entropy_with_logits(logits, masks.to(self.device))

    def export(self, module, out):
        module.to(torch.float16).save_pretrained(str(out))
        arch.new_clipseg_processor(self.tok).save_pretrained(str(out))


#: the toy models that train with a task of this module (``editnb toy train`` adds iEdit's)
TASKS = {"vae": VAETask, "clip": CLIPTask, "sd": SDTask, "ip2p": IP2PTask, "ip-adapter": IPAdapterTask,
         "clipseg": CLIPSegTask}
