"""UIP2P on ToyWorld (``editnb toy eval --only uip2p``): what the Edit Reversibility Constraint
is meant to buy, measured on held-out edits with the oracle.

- forward-then-reverse reconstruction (supplement Sec. 7, Fig. 4): edit a test image with the
  instruction, edit the result with the reverse instruction, compare with the input (mean absolute
  error in grey levels, PSNR, and whether the oracle reads the input scene back, positions
  included);
- edit success per kind: does the forward edit show the target scene (the oracle, as for toy-ip2p).

Each figure is given for toy-uip2p and for its untrained initialisation (toy-sd's UNet with zero
image channels, the start of both UIP2P and the matched InstructPix2Pix), and for the matched
InstructPix2Pix when its folder is given.  All editing uses InstructPix2Pix's dual guidance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...pixels import psnr
from ...toy import oracle, world
from . import card  # noqa: F401  (the card's description, for editnb toy eval --update-cards)
from .inference import IMAGE_GUIDANCE, TEXT_GUIDANCE, uip2p_edit


def initial_pipeline(device="cpu"):
    """The untrained start of UIP2P (and of the matched InstructPix2Pix): toy-sd's parts and its
    UNet widened to 8 input channels with the image channels zero."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline

    from ...models import models_dir
    from ...toy.tasks import ip2p_unet_from_sd

    sd = StableDiffusionPipeline.from_pretrained(str(models_dir() / "toy-sd"), dtype=torch.float32,
                                                 safety_checker=None, requires_safety_checker=False)
    pipe = StableDiffusionInstructPix2PixPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
                                                  unet=ip2p_unet_from_sd(sd.unet), scheduler=sd.scheduler,
                                                  safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def pipeline_from(folder, device="cpu"):
    """An InstructPix2Pix pipeline in fp32 from a whole pipeline folder (the matched IP2P) or a
    folder of trained UNet blocks (toy-uip2p): :func:`editnb.models.load_ip2p_folder`."""
    from ...models import load_ip2p_folder

    return load_ip2p_folder(folder, device=device, dtype=torch.float32)


def _edit(pipe, images, instructions, steps, seed, batch_size):
    out = []
    for lo in range(0, len(images), batch_size):
        res = uip2p_edit(pipe, images[lo:lo + batch_size], instructions[lo:lo + batch_size], TEXT_GUIDANCE,
                         IMAGE_GUIDANCE, steps, torch.Generator().manual_seed(seed + lo))
        out += [np.asarray(im) for im in res.images]
    return out


def forward_reverse(pipe, edits, steps: int = 25, seed: int = 0, batch_size: int = 32) -> dict:
    """Forward edits, their reverse edits, and the figures: reconstruction MAE (grey levels) and
    PSNR against the input, the oracle's reading of the reconstruction as the input scene, and the
    forward edit's success overall and per kind."""
    sources = [e.source_image() for e in edits]
    forward = _edit(pipe, sources, [e.instruction for e in edits], steps, seed, batch_size)
    back = _edit(pipe, forward, [e.reverse_instruction for e in edits], steps, seed + 10_000, batch_size)
    success = [oracle.edit_success(im, e) for im, e in zip(forward, edits)]
    kinds = [k for k in world.EDIT_KINDS if any(e.kind == k for e in edits)]
    return {
        "recon_mae": float(np.mean([np.abs(b.astype(np.float64) - s).mean() for b, s in zip(back, sources)])),
        "recon_psnr": float(np.mean([min(psnr(b, s), 60.0) for b, s in zip(back, sources)])),
        "recon_scene": float(np.mean([oracle.matches(b, e.source, positions=True) for b, e in zip(back, edits)])),
        "success": float(np.mean(success)),
        "success_by_kind": {k: float(np.mean([s for s, e in zip(success, edits) if e.kind == k])) for k in kinds},
        "forward": forward, "reverse": back,
    }


def magicbrush_scores(pipe, items, steps: int = 25, seed: int = 0, batch_size: int = 32) -> dict:
    """MagicBrush's metrics (supplement Table 3: L1, L2, CLIP-I, DINO, CLIP-T; toy-clip and toy-DINO
    on the toy profile) of `pipe` on toy MagicBrush items (``editnb.bench.load_toy_magicbrush``): a
    single-turn item is edited once; the turns of a multi-turn chain (ids CHAIN_TURN) are edited in
    order, each from the model's own previous output ("target images are iteratively edited from
    the initial source images"), and each turn is compared with its own ground truth.  Means over
    the outputs."""
    from ... import metrics

    items = list(items)
    if not items:
        raise ValueError("no MagicBrush items to edit")
    chains: dict[str, list] = {}
    for it in items:
        chains.setdefault(it.id.rsplit("_", 1)[0], []).append(it)
    outputs: dict[str, np.ndarray] = {}
    current = {c: np.asarray(turns[0].image) for c, turns in chains.items()}
    for t in range(max(len(turns) for turns in chains.values())):
        live = [c for c, turns in chains.items() if len(turns) > t]
        edited = _edit(pipe, [current[c] for c in live], [chains[c][t].instruction for c in live], steps,
                       seed + 1000 * t, batch_size)
        for c, out in zip(live, edited):
            outputs[chains[c][t].id], current[c] = out, out
    features = metrics.clip_features("clip-b32")
    rows = [metrics.magicbrush_metrics(features, outputs[it.id], np.asarray(it.target_image), it.target_prompt)
            for it in items]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def training_summary(folder) -> str:
    """How the model in `folder` was trained, in one line (from its training.json), e.g. for the
    matched InstructPix2Pix whose weights are not shipped."""
    import json

    path = Path(folder) / "training.json"
    if not path.exists():
        return f"{Path(folder).name}: no training record"
    t = json.loads(path.read_text())
    r = t["recipe"]
    frozen = r.get("options", {}).get("frozen") or "none"
    return (f"{t['model']}: {t['steps']} steps at batch {r['batch_size']}, lr {r['lr']:g}, EMA {r['ema_decay']:g}, "
            f"frozen {frozen}, seed {t['seed']}, {t['train_seconds'] / 60:.1f} min on {t['device']}")


def toy_figures(n: int = 36, steps: int = 25, matched_ip2p: str | Path | None = None, device="cpu",
                magicbrush: dict | None = None) -> dict:
    """``editnb toy eval --only uip2p [--matched-ip2p FOLDER]``: the figures above on `n` test edits
    (all kinds in turn), and MagicBrush's metrics on the toy MagicBrush items given per split
    (``magicbrush={"single": items, "multi": items}``), for toy-uip2p, its untrained initialisation
    and (when `matched_ip2p` names its folder) the matched InstructPix2Pix."""
    from ...models import toy_path

    edits = [world.edit_for("test", i, world.EDIT_KINDS[i % len(world.EDIT_KINDS)]) for i in range(n)]
    pipes = {"uip2p": pipeline_from(toy_path("uip2p"), device), "untrained": initial_pipeline(device)}
    out = {}
    if matched_ip2p:
        pipes["ip2p_matched"] = pipeline_from(matched_ip2p, device)
        out["uip2p_ip2p_matched_training"] = training_summary(matched_ip2p)
    for name, pipe in pipes.items():
        r = forward_reverse(pipe, edits, steps)
        suffix = "" if name == "uip2p" else f"_{name}"
        out.update({f"uip2p_recon_mae{suffix}": r["recon_mae"], f"uip2p_recon_psnr{suffix}": r["recon_psnr"],
                    f"uip2p_recon_scene{suffix}": r["recon_scene"], f"uip2p_success{suffix}": r["success"],
                    f"uip2p_success_by_kind{suffix}": r["success_by_kind"]})
        if magicbrush:
            out[f"uip2p_magicbrush{suffix}"] = {split: magicbrush_scores(pipe, items, steps)
                                                for split, items in magicbrush.items()}
    return out
