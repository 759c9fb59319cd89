"""iEdit's training task (``editnb toy train iedit``; protocol in :mod:`editnb.training`): the
fine-tune of toy-sd on a pseudo-paired ToyWorld set (Sec. 3.1, toy-clip retrieval, toy-clipseg
masks) with the objective of Eq. 12, updating the UNet's input blocks on even steps and its
middle block on odd steps (Sec. 4.1).  The task option ``use`` trains an ablation row of Table 2
instead (a :data:`~editnb.methods.iedit.losses.TABLE2_ROWS` name such as
``"L_global + L_LDM + L_loc"``, or a tuple of loss terms)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ...features import ClipFeatures
from ...models import IEDIT_WEIGHTS, load, models_dir, tokenize
from ...toy import architectures as arch
from .data import pseudo_target_accuracy, toy_paired_set
from .losses import DEFAULT_USE, check_use, objective, trainable_groups


class IEditTask:
    """``pairs`` training scenes, pseudo-targets retrieved from a pool of ``pool`` other scenes
    (the shipped run: 4096 and 8192; a demo or a test passes small numbers); ``use`` the loss terms
    (Eq. 12 by default; a Table 2 row name or a tuple, see :func:`~.losses.check_use`)."""

    name = "iedit"
    previous = None
    loader_workers = 0  # batches are slices of the prebuilt set, nothing to render

    def __init__(self, device, recipe, seed, pairs: int = 4096, pool: int = 8192, use=DEFAULT_USE):
        from diffusers import StableDiffusionPipeline

        self.use = check_use(use)  # before the minutes of set-up: a wrong row name fails at once

        if pairs < recipe.batch_size or pool < 1:
            raise ValueError(f"iEdit's paired set needs at least one batch of pairs and a pool to retrieve from; "
                             f"got pairs={pairs}, pool={pool} at batch size {recipe.batch_size}")
        self.device, self.recipe, self.seed, self.pairs, self.pool = device, recipe, seed, pairs, pool
        # a private fp32 copy of toy-sd to fine-tune (models.load's cached pipeline is shared)
        pipe = StableDiffusionPipeline.from_pretrained(str(models_dir() / "toy-sd"), dtype=torch.float32,
                                                       safety_checker=None, requires_safety_checker=False)
        pipe.to(device)
        self.unet, self.vae, self.tok, self.text_encoder = pipe.unet, pipe.vae, pipe.tokenizer, pipe.text_encoder
        self.scheduler = arch.new_scheduler()
        for m in (self.vae, self.text_encoder, self.unet):
            m.requires_grad_(False)
        self.groups = trainable_groups(self.unet)
        for group in self.groups:
            for p in group:
                p.requires_grad_(True)
        clip_model, processor = load("clip", profile="toy", device=str(device), dtype=torch.float32)
        clip_model.eval().requires_grad_(False)
        self.clip = ClipFeatures(clip_model, processor)
        clipseg = load("clipseg", profile="toy", device=str(device), dtype=torch.float32)
        t0 = time.time()
        self.paired = toy_paired_set(pairs, pool, seed=seed, features=self.clip, clipseg=clipseg)
        self.dataset_stats = {"pairs": pairs, "pool": pool, "build_seconds": round(time.time() - t0, 1),
                              "pseudo_target_accuracy": round(pseudo_target_accuracy(self.paired), 3)}
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
            text = self.text_encoder(tokenize(self.tok, prompts).to(self.device)).last_hidden_state
        d = self.device
        terms = objective(self.unet, self.vae, self.scheduler, self.clip, text, prompts, differences,
                          x1.to(d), x2.to(d), m1.to(d), m2.to(d), generator=gen, use=self.use)
        return terms.total

    def export(self, module, out: Path):
        """Only the blocks iEdit trains, fp16 (``models.load("iedit")`` puts them into toy-sd)."""
        from safetensors.torch import save_file

        names = {id(p) for group in self.groups for p in group}
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in module.named_parameters() if id(v) in names}
        save_file(state, str(out / IEDIT_WEIGHTS))
        (out / "paired_set.json").write_text(json.dumps(self.dataset_stats, indent=1))
