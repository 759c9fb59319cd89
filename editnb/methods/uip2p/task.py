"""UIP2P's training task (``editnb toy train uip2p``; protocol in :mod:`editnb.training`): an
InstructPix2Pix-style UNet started FROM toy-sd (8 input channels, the image channels zero, as
InstructPix2Pix starts from SD) and trained with the Edit Reversibility Constraint alone on
ToyWorld's reverse-instruction data: input images, captions and instruction pairs, never an
edited image (:class:`editnb.methods.uip2p.data.GuardedEdit` raises if one is touched).

The matched InstructPix2Pix baseline starts from the same initialisation
(:func:`editnb.toy.tasks.ip2p_unet_from_sd`): ``editnb toy train ip2p`` with the same steps and
batch size, supervised by the edited images UIP2P never sees.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ...features import ClipFeatures
from ...models import load, models_dir
from ...toy import architectures as arch
from ...toy.tasks import ip2p_unet_from_sd
from ...training import Recipe
from . import card  # noqa: F401  (the card's description)
from .data import ReversibleBatch, reversible_batch
from .erc import DROPOUT, ERCModels, erc_step
from .losses import DEFAULT_WEIGHTS, check_weights

# CPU-sized: the shipped run shared the 2-core CPU (at nice 19, one thread) with the matched
# InstructPix2Pix run and other work, at about 10 s per step.  Every recipe field equals what the
# matched baseline gets: `editnb toy train ip2p --steps 200 --batch-size 8 --lr 5e-4` (warm-up 100,
# EMA 0.999; lr 5e-4 is toy-ip2p's own).
RECIPES = {
    "uip2p": Recipe(steps=200, batch_size=8, lr=5e-4, ema_decay=0.999,
                    options={"weights": dict(DEFAULT_WEIGHTS), "dropout": DROPOUT, "max_timestep": None}),
}


class UIP2PTask:
    name = "uip2p"
    previous = None
    data_fn = staticmethod(reversible_batch)

    def __init__(self, device, recipe, seed, weights: dict | None = None, dropout: float = DROPOUT,
                 max_timestep: int | None = None):
        from diffusers import StableDiffusionPipeline

        self.device = torch.device(device)
        self.weights = check_weights(weights)
        if max_timestep is not None and not 1 <= int(max_timestep) <= arch.new_scheduler().config.num_train_timesteps:
            raise ValueError(f"max_timestep must be in [1, 1000] or None (the whole schedule), got {max_timestep}")
        self.dropout, self.max_timestep = float(dropout), max_timestep
        try:  # a private fp32 copy of toy-sd (models.load's cached pipeline is shared)
            sd = StableDiffusionPipeline.from_pretrained(str(models_dir() / "toy-sd"), dtype=torch.float32,
                                                         safety_checker=None, requires_safety_checker=False)
        except OSError as e:
            raise RuntimeError("toy-sd is missing; train it first with `editnb toy train sd`") from e
        self.tokenizer = sd.tokenizer
        self.vae = sd.vae.to(self.device).eval().requires_grad_(False)
        self.text_encoder = sd.text_encoder.to(self.device).eval().requires_grad_(False)
        self.unet = ip2p_unet_from_sd(sd.unet).to(self.device)
        self.scheduler = arch.new_scheduler()
        clip, processor = load("clip", profile="toy", device="cpu", dtype=torch.float32)
        import copy

        clip = copy.deepcopy(clip).to(self.device).eval().requires_grad_(False)  # private: the cached one is shared
        self.features = ClipFeatures(clip, processor)
        self.models = ERCModels(self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler, self.features)
        self.last_terms: dict[str, float] = {}

    def trainable(self):
        return self.unet

    def frozen(self) -> dict[str, torch.nn.Module]:
        """The modules ERC must never change."""
        return {"vae": self.vae, "text_encoder": self.text_encoder, "clip": self.features.model}

    def loss(self, batch: ReversibleBatch, gen):
        terms, _ = erc_step(self.models, batch.images, batch.instructions, batch.reverse_instructions,
                            batch.input_captions, batch.edited_captions, gen, weights=self.weights,
                            dropout=self.dropout, max_timestep=self.max_timestep)
        self.last_terms = terms.as_dict()
        return terms.total

    def export(self, module, out: Path):
        """A whole StableDiffusionInstructPix2PixPipeline folder in fp16 (toy-sd's VAE, text encoder,
        tokenizer and scheduler; the trained UNet); ``share_weights`` links the shared parts."""
        from diffusers import StableDiffusionInstructPix2PixPipeline
        from transformers import CLIPTextModel

        out = Path(out)
        for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if (out / part).is_symlink():
                (out / part).unlink()
            elif (out / part).is_dir():
                shutil.rmtree(out / part)
        text_encoder = CLIPTextModel.from_pretrained(str(models_dir() / "toy-sd" / "text_encoder"), dtype=torch.float16)
        pipe = StableDiffusionInstructPix2PixPipeline(
            vae=self.vae.to(torch.float16), text_encoder=text_encoder, tokenizer=self.tokenizer,
            unet=module.to(torch.float16), scheduler=self.scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        pipe.save_pretrained(str(out))
        if out.resolve().parent == models_dir().resolve():
            link_toy_sd_parts(out)


def link_toy_sd_parts(folder: Path, root: Path | None = None) -> list[str]:
    """Replace the pipeline parts of `folder` that ERC did not train (vae, text_encoder, tokenizer,
    scheduler) by relative links to toy-sd's, each only when it holds the same content, so that
    data/models stores them once.  Returns the linked part names."""
    import os

    from safetensors.torch import load_file

    root = Path(root) if root else models_dir()
    folder = Path(folder)

    def same_part(a: Path, b: Path) -> bool:
        """Every file of the exported part `a` is in `b` with the same content (b may hold more:
        toy-vae keeps its card and training record)."""
        for x in sorted(a.iterdir()):
            y = b / x.name
            if not y.exists():
                return False
            if x.suffix == ".safetensors":
                sx, sy = load_file(str(x)), load_file(str(y))
                if sx.keys() != sy.keys() or not all(torch.equal(sx[k], sy[k]) for k in sx):
                    return False
            elif x.suffix == ".json":
                if _settings(x) != _settings(y):
                    return False
            elif x.read_bytes() != y.read_bytes():
                return False
        return True

    linked = []
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        path, target = folder / part, root / "toy-sd" / part
        if path.is_dir() and not path.is_symlink() and target.exists() and same_part(path, target.resolve()):
            shutil.rmtree(path)
            path.symlink_to(os.path.relpath(target, folder))
            linked.append(part)
    return linked


def _settings(path: Path) -> dict:
    """A saved JSON file without what saving stamps on it: library versions, the source path, and
    a fast tokenizer's padding/truncation state of its last call (transformers sets those per call)."""
    import json

    stamped = ("_diffusers_version", "transformers_version", "_name_or_path", "padding", "truncation")
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in stamped}


TASKS = {"uip2p": UIP2PTask}
