"""``editnb toy train MODEL``: the recipes of the ToyWorld model family and the entry that trains one.

The tasks live with what they train: the toy models' in :mod:`editnb.toy.tasks`, iEdit's with the
method (:mod:`editnb.methods.iedit.task`); the loop is :func:`editnb.training.fit`.  This module
sits above ``methods`` in the layers for that reason.

Every run is seeded; the data of step k is a pure function of k, so a run that is killed resumes
from its last checkpoint (written every few minutes under ``work_dir``) and continues the same
stream.  The final weights are written with ``save_pretrained`` into ``data/models/toy-*``
together with a model card.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from ..methods.editclip import task as editclip_task
from ..methods.iedit.task import IEditTask
from ..methods.uip2p import task as uip2p_task
from ..models import models_dir
from ..runtime import check_number
from ..training import Recipe, fit
from . import architectures as arch
from .cards import write_card
from .tasks import TASKS as TOY_TASKS
from .weights import share_weights

# the methods' own tasks (iEdit's fine-tune, EditCLIP's pair encoder and exemplar editor, UIP2P's ERC) train here too
TASKS = {**TOY_TASKS, "iedit": IEditTask, **editclip_task.TASKS, **uip2p_task.TASKS}
MODELS = tuple(TASKS)

# The shipped runs (see each model card).  vae and clip were trained on the 2-core CPU; the rest on
# a lent GPU, where each takes minutes (on the CPU, expect about 1 s per step at batch 32).
RECIPES = {
    "vae": Recipe(steps=1200, batch_size=16, lr=1e-3),
    "clip": Recipe(steps=1200, batch_size=128, lr=5e-4, weight_decay=0.05),
    # The shipped toy-sd: this recipe, then continued on the CPU in four runs at batch 32, lr 1e-3, with the
    # object-attention objective on the decoder's 16x16 self-attention alone (`--option object_attention=1.0
    # --option train_only='["up_blocks.1.*.attn1"]'`; 1400 steps at attention_max_t 0.7, 400 at 0.95, 600
    # at 1.0; the card says why).
    "sd": Recipe(steps=3900, batch_size=128, lr=7e-4, ema_decay=0.999,
                 options={**dict.fromkeys(arch.UNET_SHAPE), "object_attention": 0.0, "word_attention": 0.0,
                          "attention_sigma": None, "attention_max_t": 0.7, "train_only": None}),
    "ip2p": Recipe(steps=3200, batch_size=128, lr=5e-4, ema_decay=0.999, options={"frozen": [], "kind_share": {}}),  # then continued, see the script
    # The shipped adapter: this recipe's first 3400 steps were run with 5% of captions dropped, and the
    # adapter did not carry the image (its image branch never sees the caption, and a ToyWorld caption
    # already names every object, so it learned to add little; see IPAdapterTask).  It was then
    # continued on the CPU for 1200 steps at batch 32 with caption_dropout 0.9 (`--init
    # data/models/toy-ip-adapter --steps 1200 --batch-size 32`): recall 0.80 against 0.06 (the card).
    "ip-adapter": Recipe(steps=3400, batch_size=128, lr=5e-4, caption_dropout=0.9),
    "clipseg": Recipe(steps=3500, batch_size=128, lr=1e-3, weight_decay=0.01),
    "iedit": Recipe(steps=1100, batch_size=32, lr=2e-4, warmup=20, options={"pairs": 4096, "pool": 8192}),
    **editclip_task.RECIPES,
    **uip2p_task.RECIPES,
}


def recipe_for(model: str, steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
               ema_decay: float | None = None, init: str | None = None, options: dict | None = None) -> Recipe:
    """The shipped recipe of `model` with the given settings changed."""
    if model not in TASKS:
        raise ValueError(f"unknown toy model {model!r}; choose one of {MODELS}")
    recipe = copy.deepcopy(RECIPES[model])
    for key, value in (("steps", steps), ("batch_size", batch_size), ("lr", lr), ("ema_decay", ema_decay)):
        if value is not None:
            setattr(recipe, key, value)
    for key in ("steps", "batch_size"):  # before any model is built
        value = getattr(recipe, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
    if check_number(recipe.lr, "lr", "5e-4") <= 0:
        raise ValueError(f"--lr must be positive, got {recipe.lr!r}")
    if recipe.ema_decay is not None and not 0 < check_number(recipe.ema_decay, "ema_decay", "0.999") < 1:
        raise ValueError(f"--ema-decay must be in (0, 1), got {recipe.ema_decay!r}")
    if init is not None:
        if model not in ("sd", "ip2p", "ip-adapter"):
            raise ValueError(f"--init continues a UNet (sd or ip2p) or an IP-Adapter, not {model!r}")
        need = Path(init) / ("models" if model == "ip-adapter" else "unet")
        if not need.is_dir():
            raise ValueError(f"--init needs a folder with a {need.name}/ subfolder, got {init}")
        recipe.init = str(init)
    unknown = sorted(set(options or {}) - set(recipe.options))
    if unknown:
        raise ValueError(f"{model} has no option {unknown}; its options are {sorted(recipe.options) or 'none'}")
    recipe.options.update(options or {})
    return recipe


def train(model: str, steps: int | None = None, batch_size: int | None = None, lr: float | None = None,
          device: str | None = None, seed: int = 0, work_dir: str | Path = ".editnb-train",
          checkpoint_minutes: float = 2.0, out_dir: str | Path | None = None, export: bool = True,
          workers: int | None = None, ema_decay: float | None = None, init: str | None = None,
          options: dict | None = None) -> dict:
    """Train one ToyWorld model; resume from ``work_dir`` if a checkpoint is there (refused when it
    was made with other settings).  ``options`` are the task's own settings, e.g. iEdit's
    ``{"pairs": 64, "pool": 512}``.

    The weights go to `out_dir`, by default ``work_dir/out/toy-MODEL``: a shipped model in
    ``data/models/`` is replaced only when `out_dir` names it.  Returns a summary (steps, final
    loss, wall time) that also goes into the model card.
    """
    recipe = recipe_for(model, steps, batch_size, lr, ema_decay, init, options)
    task, run = fit(lambda dev: TASKS[model](dev, recipe, seed, **recipe.options), recipe, model, seed=seed,
                    device=device, work_dir=work_dir, checkpoint_minutes=checkpoint_minutes, workers=workers)
    summary = dict(run.summary)
    if task.previous:
        summary["continued_from"] = task.previous
    if export:
        # a shipped model is replaced only when asked by name (out_dir=data/models/toy-MODEL)
        out = Path(out_dir) if out_dir else Path(work_dir) / "out" / f"toy-{model}"
        out.mkdir(parents=True, exist_ok=True)
        run.final.eval()
        task.export(run.final, out)
        (out / "training.json").write_text(json.dumps({**summary, "loss_history": run.history}, indent=1))
        write_card(out, summary)
        if out.resolve().parent == models_dir().resolve():
            share_weights()
    return summary
