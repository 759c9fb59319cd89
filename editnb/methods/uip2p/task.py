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

import json
import shutil
from pathlib import Path

import torch

from ...features import ClipFeatures
from ...models import load, models_dir
from ...toy import architectures as arch
from ...toy.tasks import freeze_blocks, ip2p_unet_from_sd
from ...training import Recipe
from . import card  # noqa: F401  (the card's description)
from .data import ReversibleBatch, reversible_batch
from .erc import DROPOUT, ERCModels, erc_step
from .losses import DEFAULT_WEIGHTS, check_weights

# CPU-sized: the shipped run shared the 2-core CPU (one thread each) with the matched
# InstructPix2Pix run.  Every recipe field equals what the matched baseline gets (matched_ip2p_command).
# lr 1e-4 is InstructPix2Pix's own: at toy-ip2p's 5e-4 (batch 128) the ERC loss rose after the warm-up
# at batch 8 and the sampler's outputs turned to texture within 300 steps.  EMA 0.995 (about the last
# 200 steps) because 0.999 would average over a third of the run.
# The time embedding stays toy-sd's (`frozen`): the noise levels mean what they meant, and the
# UNet minus that block fits the repository's size budget (data/models <= 48 MB) beside the others.
FROZEN = ["time_embedding"]
RECIPES = {
    "uip2p": Recipe(steps=3000, batch_size=8, lr=1e-4, ema_decay=0.995,
                    options={"weights": dict(DEFAULT_WEIGHTS), "dropout": DROPOUT, "max_timestep": None,
                             "frozen": list(FROZEN)}),
}


def matched_ip2p_command(out: str = ".editnb-train/ip2p-matched") -> str:
    """The command that trains UIP2P's matched InstructPix2Pix: toy-ip2p's task from the same start,
    with every setting of the shipped UIP2P recipe (steps, batch, lr, EMA, frozen blocks)."""
    r = RECIPES["uip2p"]
    frozen = json.dumps(r.options["frozen"])
    return (f"editnb toy train ip2p --steps {r.steps} --batch-size {r.batch_size} --lr {r.lr:g} --ema-decay {r.ema_decay:g} "
            f"--option frozen='{frozen}' --out {out}")


MATCHED_IP2P_COMMAND = matched_ip2p_command()


class UIP2PTask:
    name = "uip2p"
    previous = None
    data_fn = staticmethod(reversible_batch)

    def __init__(self, device, recipe, seed, weights: dict | None = None, dropout: float = DROPOUT,
                 max_timestep: int | None = None, frozen=tuple(FROZEN)):
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
        self.frozen_blocks = list(frozen)
        freeze_blocks(self.unet, self.frozen_blocks)
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
        """The blocks ERC trained, in fp16, as ``unet_blocks.safetensors`` (what
        :func:`editnb.models.load` rebuilds into an InstructPix2Pix pipeline on toy-sd's parts),
        with the frozen block names in its metadata; the frozen blocks are toy-sd's and not stored."""
        save_trained_blocks(module, self.frozen_blocks, out)


def save_trained_blocks(unet, frozen, out: Path) -> Path:
    """Write the state of `unet` without its `frozen` top-level blocks to ``out/unet_blocks.safetensors``
    (fp16), the frozen names in the file's metadata; remove a whole pipeline left by an older export."""
    from safetensors.torch import save_file

    from ...models import UNET_BLOCKS_WEIGHTS

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if (out / part).is_symlink():
            (out / part).unlink()
        elif (out / part).is_dir():
            shutil.rmtree(out / part)
    (out / "model_index.json").unlink(missing_ok=True)
    frozen = list(frozen)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in unet.state_dict().items()
             if k.split(".", 1)[0] not in frozen}
    path = out / UNET_BLOCKS_WEIGHTS
    save_file(state, str(path), metadata={"frozen": ",".join(frozen), "in_channels": str(unet.config.in_channels),
                                          "base": "toy-sd"})
    return path


TASKS = {"uip2p": UIP2PTask}
