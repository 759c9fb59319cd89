"""Model cards of the ToyWorld models: what each is, how it was trained, how it scores."""
from __future__ import annotations

from pathlib import Path

CARD_DESCRIPTIONS = {
    "vae": "AutoencoderKL, 64x64 RGB -> 16x16x4 latents (downsampling 4); scaling factor from the data.",
    "clip": "CLIPModel (text and vision towers) trained contrastively on ToyWorld images and captions; "
            "one token per word (hand-made BPE vocabulary).",
    "sd": "Text-to-image StableDiffusionPipeline: UNet2DConditionModel on 16x16 latents with self- and "
          "cross-attention at 16x16 and 8x8, toy-vae, toy-clip's text tower, DDIM; the decoder's 16x16 "
          "self-attention taught to stay within objects (see History).",
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


HISTORY = "## History"


def write_card(folder: Path, summary: dict, evaluation: dict | None = None) -> None:
    """Model card: what it is, the recipe, steps, wall time, hardware, evaluation figures.  A
    ``## History`` section of the card already in `folder` (earlier runs of the model, written by
    hand) is kept at the end: the card is rebuilt from the files, its history cannot be."""
    model = summary["model"]
    card = folder / "README.md"
    old = card.read_text() if card.exists() else ""
    history = old[old.index(HISTORY):].rstrip() if HISTORY in old else None
    lines = [f"# toy-{model}", "", CARD_DESCRIPTIONS[model], "",
             "Part of the editnb ToyWorld family; trained by `editnb toy train "
             f"{model}` (see `editnb/toy/train.py` and `editnb/training.py`).", "", "## Training", ""]
    r = summary["recipe"]
    lines += [f"- steps: {summary['steps']} at batch {r['batch_size']}, AdamW lr {r['lr']} "
              f"(warm-up {r['warmup']}, cosine to 10%)" + (f", EMA {r['ema_decay']}" if r.get("ema_decay") else ""),
              f"- seed: {summary['seed']}",
              *([f"- the task's options: {r['options']}"] if r.get("options") else []),
              f"- wall time: {summary['train_seconds'] / 60:.1f} min on {summary['device']}",
              f"- final training loss (mean of the losses logged over the last 200 steps): {summary['final_loss']:.4f}"]
    prev = summary.get("continued_from")
    while prev:  # a continued run lists the runs it built on
        lines.append(f"- continued from a run of {prev['steps']} steps at batch {prev['recipe']['batch_size']} "
                     f"(seed {prev['seed']}, {prev['train_seconds'] / 60:.1f} min on {prev['device']})")
        prev = prev.get("continued_from")
    if evaluation:
        lines += ["", "## Evaluation (`editnb toy eval`)", ""]
        lines += [f"- {k}: {v}" for k, v in evaluation.items()]
    if history:
        lines += ["", history]
    card.write_text("\n".join(lines) + "\n")
