"""One trainer: a task and a recipe in, trained weights out, resumable after a kill.

A *task* says what is trained and how (the toy models' tasks are in :mod:`editnb.toy.tasks`; a
method's own task lives with the method, e.g. :mod:`editnb.methods.iedit.task`):

- ``data_fn(step, batch_size, seed)``: the CPU batch of step k, a pure function of k, so a
  resumed run continues the same stream and loader workers can render ahead;
- ``trainable()``: the module whose parameters (those with ``requires_grad``) are optimised;
- ``loss(batch, generator)``: the scalar loss of one batch (its randomness from `generator`);
- optional ``loader_workers`` (overrides the default number of loader workers).

:func:`fit` adds what every run needs: seeding, AdamW, a linear warm-up then cosine decay to 10%,
gradient clipping, an EMA of the weights, a progress bar with the loss, checkpoints written
atomically every few minutes under ``work_dir``, and a resume that refuses a checkpoint made with
other settings.
"""
from __future__ import annotations

import copy
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .runtime import progress

LOG_EVERY = 10        # steps between two entries of the loss history
FINAL_WINDOW = 200    # the final loss is the mean of the logged losses over the last 200 steps
# the command-line flag that sets each recipe field (for the messages of a refused resume)
_FLAGS = {"batch_size": "--batch-size", "lr": "--lr", "ema_decay": "--ema-decay", "init": "--init",
          "seed": "--seed", "steps": "--steps"}


@dataclass
class Recipe:
    steps: int
    batch_size: int
    lr: float
    warmup: int = 100
    ema_decay: float | None = None
    weight_decay: float = 0.0
    init: str | None = None  # continue from the UNet of this pipeline folder (sd, ip2p) or an IP-Adapter folder
    caption_dropout: float = 0.05  # ip-adapter: fraction of captions dropped to ""
    options: dict = field(default_factory=dict)  # the task's own settings, passed to its constructor


@dataclass
class Run:
    """What :func:`fit` returns: the weights to ship (the EMA when there is one), the summary that
    goes into the model card, and the loss history [(step, loss), ...]."""

    final: torch.nn.Module
    summary: dict
    history: list


class _StepBatches(torch.utils.data.Dataset):
    """The batches of steps [start, end): item k is ``data_fn(start + k, ...)``, a pure function
    of the step, so loader workers can render batches ahead of the GPU without changing the data."""

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


def lr_factor(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    progress_ = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))


def final_loss(history: list) -> float | None:
    """Mean of the losses logged over the last :data:`FINAL_WINDOW` steps; step 1 counts only
    when the run is that short (it is the untrained model's loss)."""
    if not history:
        return None
    last = history[-1][0]
    window = [loss for step, loss in history if step > last - FINAL_WINDOW and (step > 1 or last == 1)]
    return float(np.mean(window))


def hardware(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def check_resume(ckpt: dict, recipe: Recipe, seed: int, path: Path) -> None:
    """Refuse a checkpoint that another recipe or seed made: the run would mix two settings while
    its card describes one.  More steps than the checkpoint holds continue it; fewer are refused."""
    held, asked = dict(ckpt.get("recipe") or {}), asdict(recipe)
    if "seed" in ckpt:
        held["seed"] = ckpt["seed"]
    asked["seed"] = seed
    for key in asked:
        if key == "steps" or key not in held or held[key] == asked[key]:
            continue  # fields that older checkpoints did not record cannot be checked
        flag = _FLAGS.get(key, f"the recipe's {key}")
        raise ValueError(f"{path} holds a run trained with {key}={held[key]!r}, but this run asks for "
                         f"{key}={asked[key]!r}; resume it with the same settings ({flag} {held[key]}) or "
                         "start a separate run with a new --work-dir")
    if ckpt["step"] > recipe.steps:
        raise ValueError(f"{path} already holds {ckpt['step']} steps, more than the {recipe.steps} asked for; "
                         f"ask for --steps {ckpt['step']} or more to resume it, or start a new run with a new "
                         "--work-dir")


def fit(make_task, recipe: Recipe, name: str, seed: int = 0, device: str | None = None,
        work_dir: str | Path = ".editnb-train", checkpoint_minutes: float = 2.0, workers: int | None = None):
    """Train the task that ``make_task(device)`` builds (after seeding) with `recipe`; resume from
    ``work_dir/name/checkpoint.pt`` when one is there.  Returns ``(task, Run)``.

    ``workers`` render batches in background processes (default: none on CPU, where the cores are
    busy with the model; up to 8 on CUDA, where rendering would starve the GPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    task = make_task(device)
    module = task.trainable()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    ema = copy.deepcopy(module).requires_grad_(False) if recipe.ema_decay else None

    ckpt_path = Path(work_dir) / name / "checkpoint.pt"
    step, elapsed, history = 0, 0.0, []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        check_resume(ckpt, recipe, seed, ckpt_path)
        module.load_state_dict(ckpt["module"])
        opt.load_state_dict(ckpt["opt"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        step, elapsed, history = ckpt["step"], ckpt["elapsed"], ckpt["history"]
        print(f"resuming {name} from step {step} ({ckpt_path})")

    def save_checkpoint():
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"module": module.state_dict(), "opt": opt.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None, "step": step, "seed": seed,
                    "elapsed": elapsed, "history": history, "recipe": asdict(recipe)}, tmp)
        tmp.replace(ckpt_path)  # atomic: a kill never leaves a half-written checkpoint

    if workers is None:
        workers = 0 if device.type == "cpu" else max(0, min(8, (os.cpu_count() or 1) - 2))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batches = _batches(task, step, recipe.steps, recipe, seed, getattr(task, "loader_workers", workers))
    module.train()
    bar = progress(total=recipe.steps, initial=step, desc=f"train {name}")
    last_save = time.time()
    while step < recipe.steps:
        t0 = time.time()
        for group in opt.param_groups:
            group["lr"] = recipe.lr * lr_factor(step, recipe)
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
        if step % LOG_EVERY == 0 or step == 1 or step == recipe.steps:
            history.append((step, loss.item()))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if time.time() - last_save > checkpoint_minutes * 60:
            save_checkpoint()
            last_save = time.time()
    bar.close()
    save_checkpoint()
    summary = {"model": name, "steps": step, "recipe": asdict(recipe), "seed": seed,
               "final_loss": final_loss(history), "train_seconds": round(elapsed, 1), "device": hardware(device)}
    return task, Run(ema if ema is not None else module, summary, history)
