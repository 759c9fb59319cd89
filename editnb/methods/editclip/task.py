"""EditCLIP's two training tasks (protocol of :mod:`editnb.training`) and the entry that trains,
exports and documents them:

- ``editclip``: the pair encoder, from toy-clip (6-channel patch embedding, RGB weights in
  channels 0-2, zeros in 3-5), contrastive against the instruction, text tower frozen;
- ``editclip-ip2p``: the exemplar UNet, from toy-ip2p, conditioned on the projected last hidden
  states of an exemplar pair (frozen pair encoder), noise loss + lambda_2 x input preservation.

ToyWorld departure, on purpose: the paper conditions on the training pair itself (IP2P data has
no second image with the same edit); ToyWorld has one, so the condition comes from the same
instruction on another scene.  Through 65 hidden-state tokens the UNet could otherwise copy the
edited image instead of learning the edit.

    python -m editnb.methods.editclip.task editclip [--steps N] [--out DIR]
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch

from ...features import ClipFeatures
from ...models import load, models_dir, tokenize
from ...toy import architectures as arch
from ...toy.cards import write_card
from . import card  # noqa: F401  (the cards' descriptions)
from ...training import Recipe, fit
from .data import pair_batch, quartet_batch
from .inference import PROJECTION_FILE
from .losses import LAMBDA_2, contrastive_loss, exemplar_objective
from .model import EditEncoder, new_projection, pair_encoder_from_clip

# The pair encoder as shipped; the shipped exemplar editor is 1174 steps of this recipe (cut by the
# GPU time) continued 300 steps with lambda_2 = 0 at lr 1e-4 (see its card: at 0.05 it does not edit).
RECIPES = {
    "editclip": Recipe(steps=1500, batch_size=256, lr=3e-4, weight_decay=0.05),
    "editclip-ip2p": Recipe(steps=2000, batch_size=128, lr=2e-4, ema_decay=0.999,
                            options={"lambda_2": LAMBDA_2, "encoder": ""}),
}


class PairEncoderTask:
    name = "editclip"
    previous = None
    data_fn = staticmethod(pair_batch)

    def __init__(self, device, recipe, seed):
        from transformers import CLIPModel

        self.device = device
        clip, processor = load("clip", profile="toy", device="cpu", dtype=torch.float32)
        self.processor = processor
        self.model = pair_encoder_from_clip(CLIPModel.from_pretrained(str(models_dir() / "toy-clip"), dtype=torch.float32))
        self.model.to(device)
        self.model.text_model.requires_grad_(False)
        self.model.text_projection.requires_grad_(False)
        self.encoder = EditEncoder(self.model, processor)
        self._text_cache: dict[str, torch.Tensor] = {}

    def trainable(self):
        return self.model

    def text_embeds(self, instructions) -> torch.Tensor:
        """G(T) of the frozen text tower, cached per instruction."""
        new = sorted(set(instructions) - set(self._text_cache))
        if new:
            with torch.no_grad():
                out = self.model.get_text_features(input_ids=tokenize(self.processor.tokenizer, new).to(self.device))
                out = torch.nn.functional.normalize((out if isinstance(out, torch.Tensor) else out.pooler_output).float(), dim=-1)
            self._text_cache.update(zip(new, out))
        return torch.stack([self._text_cache[t] for t in instructions])

    def loss(self, batch, gen):
        x_in, x_ed, instructions = batch
        px = self.encoder.pixel_pairs(x_in.to(self.device), x_ed.to(self.device))
        return contrastive_loss(self.encoder.embed_pixels(px), self.text_embeds(instructions),
                                self.model.logit_scale, instructions)

    def export(self, module, out: Path):
        module.to(torch.float16).save_pretrained(str(out))
        self.processor.save_pretrained(str(out))
        split_clip_checkpoint(out)


class ExemplarTask:
    name = "editclip-ip2p"
    previous = None
    data_fn = staticmethod(quartet_batch)
    dropout = 0.05  # InstructPix2Pix's: 5% edit dropped, 5% image dropped, 5% both

    def __init__(self, device, recipe, seed, lambda_2: float = LAMBDA_2, encoder: str = ""):
        from diffusers import StableDiffusionInstructPix2PixPipeline
        from transformers import CLIPModel, CLIPProcessor

        self.device, self.lambda_2 = device, float(lambda_2)
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            str(models_dir() / "toy-ip2p"), dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
        pipe.to(device)
        self.unet, self.vae = pipe.unet, pipe.vae.requires_grad_(False)
        self.scheduler = arch.new_scheduler()
        folder = encoder or str(models_dir() / "toy-editclip")
        enc = CLIPModel.from_pretrained(folder, dtype=torch.float32).to(device).eval().requires_grad_(False)
        self.encoder = EditEncoder(enc, CLIPProcessor.from_pretrained(folder))
        clip, processor = load("clip", profile="toy", device=str(device), dtype=torch.float32)
        self.features = ClipFeatures(copy.deepcopy(clip).requires_grad_(False), processor)
        self.projection = new_projection(enc.config.vision_config.hidden_size,
                                         self.unet.config.cross_attention_dim).to(device)
        if recipe.init:  # continue an exemplar editor (its UNet and projection; its record for the card)
            from diffusers import UNet2DConditionModel

            from .inference import load_projection

            self.unet = UNet2DConditionModel.from_pretrained(recipe.init, subfolder="unet", dtype=torch.float32).to(device)
            self.projection.load_state_dict(load_projection(recipe.init).state_dict())
            record = json.loads((Path(recipe.init) / "training.json").read_text())
            self.previous = {k: record[k] for k in ("steps", "recipe", "seed", "train_seconds", "device",
                                                     "continued_from") if k in record}
        self.modules = torch.nn.ModuleDict({"unet": self.unet, "projection": self.projection})

    def trainable(self):
        return self.modules

    def loss(self, batch, gen):
        x_in, x_tgt, ex_in, ex_ed = (x.to(self.device) for x in batch)
        r = torch.rand(x_in.shape[0], generator=gen).to(self.device)
        drop_edit = r < 2 * self.dropout
        drop_image = (r >= self.dropout) & (r < 3 * self.dropout)
        with torch.no_grad():
            hidden = self.encoder.hidden_pixels(self.encoder.pixel_pairs(ex_in, ex_ed))
        cond = self.projection(hidden) * (~drop_edit).float()[:, None, None]  # the null condition is zeros
        terms = exemplar_objective(self.unet, self.vae, self.scheduler, self.features, cond, x_in, x_tgt, gen,
                                   lambda_2=self.lambda_2, drop_image=drop_image)
        return terms.total

    def export(self, module, out: Path):
        from safetensors.torch import save_file

        module["unet"].to(torch.float16).save_pretrained(str(out / "unet"))
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in module["projection"].state_dict().items()}
        save_file(state, str(out / PROJECTION_FILE))
        shutil.copy(models_dir() / "toy-ip2p" / "model_index.json", out / "model_index.json")


TASKS = {"editclip": PairEncoderTask, "editclip-ip2p": ExemplarTask}


def split_clip_checkpoint(folder: Path) -> None:
    """toy-clip's layout: the text tower's tensors in model-text.safetensors, the vision tower's in
    model-vision.safetensors, the rest (logit scale) in model-heads.safetensors, with an index,
    so that :func:`link_shared` can store the frozen text tower once."""
    from safetensors.torch import load_file, save_file

    whole = folder / "model.safetensors"
    state = load_file(str(whole))
    part_of = lambda k: ("model-text.safetensors" if k.startswith("text_model.") else  # noqa: E731
                         "model-vision.safetensors" if k.startswith(("vision_model.", "visual_projection.")) else
                         "model-heads.safetensors")
    weight_map = {k: part_of(k) for k in sorted(state)}
    for shard in sorted(set(weight_map.values())):
        save_file({k: state[k] for k, s in weight_map.items() if s == shard}, str(folder / shard), metadata={"format": "pt"})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    whole.unlink()


def link_shared(folder: Path, root: Path | None = None) -> list[str]:
    """Replace what EditCLIP's folders share with toy-clip and toy-ip2p by relative links: the
    frozen text shard, the tokenizer files, and the pipeline parts the exemplar editor did not
    train.  Files are linked only when they hold the same content.  Returns the linked names."""
    from safetensors.torch import load_file

    root = Path(root) if root else models_dir()
    folder = Path(folder)

    def same(a: Path, b: Path) -> bool:
        if not (a.is_file() and b.exists()):
            return False
        if a.suffix == ".safetensors":
            x, y = load_file(str(a)), load_file(str(b))
            return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        return a.read_bytes() == b.read_bytes()

    linked = []
    candidates = {"model-text.safetensors": root / "toy-clip" / "model-text.safetensors",
                  "tokenizer.json": root / "toy-clip" / "tokenizer.json"}
    for name, target in candidates.items():
        path = folder / name
        if not path.is_symlink() and same(path, target):
            path.unlink()
            path.symlink_to(os.path.relpath(target, folder))
            linked.append(name)
    if (folder / "unet").is_dir():  # the exemplar editor: every pipeline part but the UNet is toy-ip2p's
        for part in ("scheduler", "text_encoder", "tokenizer", "vae"):
            path = folder / part
            if not path.exists() and not path.is_symlink():
                path.symlink_to(os.path.relpath(root / "toy-ip2p" / part, folder))
                linked.append(part)
    return linked


def recipe_for(model: str, steps=None, batch_size=None, lr=None, options=None, init=None, warmup=None) -> Recipe:
    if model not in RECIPES:
        raise ValueError(f"unknown EditCLIP model {model!r}; choose one of {sorted(RECIPES)}")
    recipe = copy.deepcopy(RECIPES[model])
    if init is not None:
        if model != "editclip-ip2p" or not (Path(init) / "unet").is_dir():
            raise ValueError(f"init continues an exemplar editor folder (with unet/), got {model} from {init}")
        recipe.init = str(init)
    if warmup is not None:
        recipe.warmup = warmup
    for key, value in (("steps", steps), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            setattr(recipe, key, value)
    unknown = sorted(set(options or {}) - set(recipe.options))
    if unknown:
        raise ValueError(f"{model} has no option {unknown}; its options are {sorted(recipe.options) or 'none'}")
    recipe.options.update(options or {})
    return recipe


def train(model: str, steps=None, batch_size=None, lr=None, device=None, seed: int = 0,
          work_dir=".editnb-train", out_dir=None, options=None, workers=None, checkpoint_minutes: float = 2.0,
          init=None, warmup=None) -> dict:
    """Train, export (fp16) and write the card of ``toy-editclip`` or ``toy-editclip-ip2p``;
    resumes from ``work_dir`` as every run of :func:`editnb.training.fit` does.  ``init``
    continues an exemplar editor folder."""
    recipe = recipe_for(model, steps, batch_size, lr, options, init, warmup)
    task, run = fit(lambda dev: TASKS[model](dev, recipe, seed, **recipe.options), recipe, model, seed=seed,
                    device=device, work_dir=work_dir, checkpoint_minutes=checkpoint_minutes, workers=workers)
    out = Path(out_dir) if out_dir else models_dir() / f"toy-{model}"
    out.mkdir(parents=True, exist_ok=True)
    run.final.eval()
    task.export(run.final, out)
    (out / "training.json").write_text(json.dumps({**run.summary, "continued_from": task.previous,
                                                   "loss_history": run.history}, indent=1))
    write_card(out, {**run.summary, "continued_from": task.previous})
    if out.parent == models_dir():
        link_shared(out)
    return run.summary


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="train EditCLIP's toy models")
    ap.add_argument("model", choices=sorted(RECIPES))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--work-dir", default=".editnb-train")
    ap.add_argument("--lambda-2", type=float)
    ap.add_argument("--encoder", help="pair encoder folder for editclip-ip2p (default: data/models/toy-editclip)")
    a = ap.parse_args()
    opts = {k: v for k, v in (("lambda_2", a.lambda_2), ("encoder", a.encoder)) if v is not None}
    print(train(a.model, a.steps, a.batch_size, a.lr, seed=a.seed, work_dir=a.work_dir, out_dir=a.out, options=opts))
