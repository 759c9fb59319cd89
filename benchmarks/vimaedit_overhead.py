"""ViMAEdit's cost relative to Prompt-to-Prompt at equal steps, side by side in the same run.

    python benchmarks/vimaedit_overhead.py [--steps 10] [--repeats 3] [--threads 1]
    python benchmarks/vimaedit_overhead.py --sd15-shaped --device cuda --resolution 512 --dtype fp16

Prints seconds per edit of a real image (median of repeats), the ratio to P2P and peak memory for:
P2P in PIE-Bench's configuration (Direct Inversion, cross 0.4, self 0.6, local blend); ViMAEdit
without the image embedding (grounding + adaptive variance: the cost of recording the finer
self-attention and refining); full ViMAEdit (+ CLIP embeddings and the IP-Adapter's image
cross-attention).  ``--sd15-shaped`` builds random-weight models with Stable Diffusion 1.5's shapes
(with an ip-adapter_sd15-shaped adapter and a ViT-H/14-shaped CLIP; no download).
"""
import harness
import torch

from editnb import models, sd15_shaped
from editnb.features import ClipFeatures, clip_features
from editnb.methods.p2p import prompt_to_prompt
from editnb.methods.vimaedit import vimaedit
from editnb.toy import world


def _sd15_shaped_adapter(pipe, resolution):
    """`pipe` (the harness's SD 1.5-shaped pipeline) with an ip-adapter_sd15-shaped adapter loaded
    into it, and a ViT-H/14-shaped CLIP for the prompt embeddings (random weights, built once in
    the cache).  One UNet in memory: the adapter goes in after the configurations without it ran."""
    from transformers import CLIPModel, CLIPProcessor

    folder = sd15_shaped.folder("ip-adapter", full_width=True, sample_size=resolution // 8)
    pipe.load_ip_adapter(str(folder), subfolder="models", weight_name=sd15_shaped.IP_ADAPTER_FILE,
                         local_files_only=True)
    pipe.to(pipe.unet.device, pipe.unet.dtype)
    clip = sd15_shaped.folder("clip-h14", full_width=True)
    model = CLIPModel.from_pretrained(str(clip), dtype=pipe.unet.dtype).to(pipe.unet.device).eval()
    return pipe, ClipFeatures(model, CLIPProcessor.from_pretrained(str(clip)), name="clip-h14-shaped")


def main():
    args = harness.options(__doc__, steps=10)
    rt, dtype = harness.runtime(args)
    e = world.edit_for("test", 0, "reshape")
    words = e.blend_words
    source, target = e.source_caption, e.target_caption
    image = e.source_image()
    if args.sd15_shaped:
        sd = harness.sd15_shaped("sd", rt.device, dtype, args.resolution)
        with_adapter = lambda: _sd15_shaped_adapter(sd, args.resolution)  # noqa: E731
    else:
        sd = models.load("sd", device=rt.device, dtype=dtype)
        with_adapter = lambda: (models.load("ip-adapter", device=rt.device, dtype=dtype),  # noqa: E731
                                clip_features("clip-h14"))
    loaded = {}

    def p2p():
        return prompt_to_prompt(sd, source, target, cross_replace=0.4, self_replace=0.6, blend_words=words,
                                steps=args.steps, generator=rt.generator(0), image=image)

    def vima(image_guidance):
        if not image_guidance:
            return vimaedit(sd, source, target, image, words, image_guidance=False, steps=args.steps,
                            generator=rt.generator(0))
        if not loaded:  # in the untimed warm-up run of harness.measure
            loaded["pipe"], loaded["clip"] = with_adapter()
        return vimaedit(loaded["pipe"], source, target, image, words, text_clip=loaded["clip"], steps=args.steps,
                        generator=rt.generator(0))

    configs = [
        ("P2P (PIE-Bench configuration)", p2p, None),
        ("ViMAEdit without image embedding", lambda: vima(False), "P2P (PIE-Bench configuration)"),
        ("ViMAEdit", lambda: vima(True), "P2P (PIE-Bench configuration)"),
    ]
    rows = []
    with torch.no_grad():
        for name, fn, ref in configs:
            rows.append((name, *harness.measure(fn, args.repeats, rt.device), ref))
    harness.table(harness.describe(args, rt, dtype) + f"; edit {source!r} -> {target!r}, blend words {words}",
                  rows, rt.device)


if __name__ == "__main__":
    main()
