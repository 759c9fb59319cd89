"""Peak GPU memory and seconds per edit of each chapter's heaviest call on SD 1.5-shaped weights.

    python benchmarks/sd15_memory.py                      # CUDA, 512x512, fp16, full width, 20 steps
    python benchmarks/sd15_memory.py --device cpu --resolution 64 --steps 3 --dtype fp32   # smoke test

The weights are random (``editnb.sd15_shaped``: SD 1.5's, InstructPix2Pix's, CLIP L/14's,
CLIPSeg's and DINO ViT-B/8's architectures; on CUDA at SD 1.5's real channel widths, on the CPU
narrower unless ``--width full``), so memory and time are those of the real models while the
pictures are noise.  Each pipeline call runs twice, with model CPU offload off (everything on the
GPU) and on (what the loaders switch on below 16 GB); the goal is at most 15 GB on a 16 GB T4.
Prints a markdown table for the README.  Calls:

- 01: Prompt-to-Prompt on a real photo (DDIM inversion, then the dual-branch edit with local blend);
- 02: iEdit-M (CLIPSeg mask of a non-square photo, then masked inference, Eq. 13); one fine-tuning
  step of the objective (Eq. 12) on the UNet's input and middle blocks, batch 1, AdamW, gradient
  checkpointing (offload does not apply: the UNet trains on the GPU);
- 03: LIME (localisation pass, KMeans, regularised InstructPix2Pix edit);
- 06: EditCLIP exemplar editing (the 6-channel ViT-L/14 pair encoder on the exemplar pair, its hidden
  states through the projection, Eq. 5's three-branch guidance on InstructPix2Pix's UNet);
- 07: the metrics of one edit (CLIP L/14 score and directional similarity, DINO structure distance).
"""
from __future__ import annotations

import argparse

import harness
import torch

import editnb
from editnb import metrics, sd15_shaped
from editnb.features import ClipFeatures
from editnb.images import model_resolution, pil_to_tensor, sample_photos
from editnb.methods import editclip, iedit, lime
from editnb.methods.p2p import prompt_to_prompt
from editnb.models import tokenize


def options(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--resolution", type=int, default=512, help="image side, a multiple of 64 (latents: /8)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")
    ap.add_argument("--width", choices=("full", "scaled"), default=None,
                    help="channel widths (default: full on CUDA, scaled on the CPU)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    if args.resolution % 64:
        ap.error(f"--resolution must be a multiple of 64 (SD's UNet halves the latent 3 times), got {args.resolution}")
    args.width = args.width or ("full" if torch.device(args.device).type == "cuda" else "scaled")
    return args


def _place(pipe, device, offload: bool):
    pipe.remove_all_hooks()
    pipe.to("cpu")
    if offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def _model(name: str, full: bool, device, dtype):
    """(model, processor) of the stand-in folder of `name`, built on first use."""
    from editnb import models

    loader = models._LOADERS[models.REGISTRY[name].kind]
    return loader(str(sd15_shaped.folder(name, full_width=full)), models.REGISTRY[name], device, dtype, True,
                  "sd15-shaped")


def main(argv=None) -> list[tuple]:
    args = options(argv)
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    rt = editnb.setup(profile="sd15-shaped", device=args.device, verbose=False)
    device, full = rt.device, args.width == "full"
    sample = args.resolution // 8
    sd, ip2p = sd15_shaped.pipeline("sd", full, sample), sd15_shaped.pipeline("ip2p", full, sample)
    for pipe in (sd, ip2p):
        pipe.set_progress_bar_config(disable=True)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            torch.nn.Module.to(module, dtype)  # plain cast (diffusers' .to() warns about fp32-kept modules)
    clipseg = _model("clipseg", full, device, dtype)
    features = ClipFeatures(*_model("clip", full, device, dtype))
    dino = _model("dino", full, device, dtype)
    pair_encoder = editclip.EditEncoder(*_model("editclip", full, device, dtype))
    projection = editclip.new_projection(pair_encoder.model.config.vision_config.hidden_size,
                                         ip2p.unet.config.cross_attention_dim).to(device, dtype)
    photos = sample_photos()
    photo, wide = photos["chelsea"], photos["coffee"]
    steps, gen = args.steps, lambda: torch.Generator(device).manual_seed(0)

    def p2p():
        prompt_to_prompt(sd, "a photo of a cat", "a photo of a dog", steps=steps, generator=gen(), image=photo,
                         blend_words=("cat", "dog"))

    def iedit_m():
        mask = iedit.clipseg_masks(clipseg, [wide], ["a cup"], threshold=0.0)[0]
        iedit.edit(sd, wide, "a cup of tea", mask=mask, strength=0.7, steps=steps, generator=gen())

    def lime_edit():
        lime.edit(ip2p, photo, "turn the cat into a tiger", steps=steps, localisation_steps=steps, generator=gen())

    def exemplar_edit():  # the editor's weights do not change memory or time: an untrained projection will do
        editor = editclip.ExemplarEditor(ip2p, projection, pair_encoder)
        editclip.exemplar_edit(editor, wide, photo, photo, steps=steps, generator=gen())

    def measure_metrics():
        metrics.clip_similarity(features, [photo], ["a photo of a cat"])
        metrics.clip_directional_similarity(features, [photo], [wide], ["a cat"], ["a cup of coffee"])
        metrics.structure_distance(metrics.dino_keys(*dino), photo, wide)

    rows = []
    for chapter, call, pipe, fn in (("01", "Prompt-to-Prompt (inversion + edit)", sd, p2p),
                                    ("02", "iEdit-M (CLIPSeg mask + masked inference)", sd, iedit_m),
                                    ("03", "LIME (localisation + regularised edit)", ip2p, lime_edit),
                                    ("06", "EditCLIP exemplar editing (pair encoder + Eq. 5)", ip2p, exemplar_edit)):
        for offload in (False, True):
            _place(pipe, device, offload)
            with torch.no_grad():
                rows.append(_row(chapter, call, "on" if offload else "off", harness.measure(fn, args.repeats, device)))
        _place(pipe, "cpu", False)
    rows.append(_row("02", "iEdit fine-tuning step (Eq. 12, batch 1)", "n/a",
                     _train_step(sd, features, photos, device, dtype, args.repeats)))
    with torch.no_grad():
        rows.append(_row("07", "metrics of one edit (CLIP L/14, DINO)", "n/a",
                         harness.measure(measure_metrics, args.repeats, device)))
    print(table(rows, args, device))
    return rows


def _row(chapter: str, call: str, offload: str, measured: tuple[float, float]) -> tuple:
    """A table row from `harness.measure`'s (seconds, peak MiB), in the table's column order (peak
    before seconds): the one place the order flips, so no row can swap them."""
    secs, peak = measured
    return chapter, call, offload, peak, secs


def _train_step(sd, features, photos, device, dtype, repeats) -> tuple[float, float]:
    """(seconds, peak MiB) of one step of iEdit's objective on the UNet's input and middle blocks."""
    sd.to(device)
    unet = sd.unet
    unet.enable_gradient_checkpointing()
    unet.train()
    inp, mid = iedit.trainable_groups(unet)
    unet.requires_grad_(False)
    for p in inp + mid:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(inp + mid, lr=1e-5, eps=1e-4)
    res = model_resolution(sd)
    x1 = pil_to_tensor(photos["chelsea"], res).to(device, dtype)
    x2 = pil_to_tensor(photos["coffee"], res).to(device, dtype)
    m = torch.zeros(1, 1, res, res, device=device, dtype=dtype)
    m[..., res // 4:, res // 4:] = 1
    prompts = ["a photo of a dog"]
    with torch.no_grad():
        text = sd.text_encoder(tokenize(sd.tokenizer, prompts).to(device)).last_hidden_state

    def step():
        opt.zero_grad(set_to_none=True)
        terms = iedit.objective(unet, sd.vae, sd.scheduler, features, text, prompts, ["dog"], x1, x2, m, m,
                                generator=torch.Generator(device).manual_seed(0))
        terms.total.backward()
        opt.step()

    measured = harness.measure(step, repeats, device)
    unet.eval().requires_grad_(False)
    sd.to("cpu")
    return measured


def table(rows, args, device) -> str:
    mem = "peak GPU MiB" if torch.device(device).type == "cuda" else "peak RSS MiB (+ over start)"
    head = (f"{args.resolution}x{args.resolution}, {args.dtype}, {args.width}-width sd15-shaped weights, "
            f"{args.steps} steps, {device}" + (f" ({torch.cuda.get_device_name(device)})"
                                              if torch.device(device).type == "cuda" else ""))
    lines = [head, "", f"| chapter | call | model CPU offload | {mem} | s per edit |", "|---|---|---|---:|---:|"]
    lines += [f"| {c} | {call} | {off} | {peak:.0f} | {secs:.3f} |" for c, call, off, peak, secs in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
