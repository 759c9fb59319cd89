"""LIME's cost relative to plain InstructPix2Pix, in the same run.

    python benchmarks/lime_overhead.py [--steps 20] [--repeats 3] [--sd15-shaped] [--device cuda]

Prints seconds per edit (median of repeats) and peak memory for IP2P and IP2P + LIME (which
adds a localisation pass and KMeans).  The paper reports about 25 s vs 15 s (1.67x) on a GPU.
``--sd15-shaped`` builds random-weight models with Stable Diffusion 1.5's shapes (512x512 images,
64x64x4 latents, 860 M-parameter UNet; no download) to measure at full size on a GPU.
"""
import argparse
import resource
import statistics
import time

import numpy as np
import torch

import editnb
from editnb import diffusion
from editnb.methods import lime
from editnb.toy import world


def sd15_shaped_ip2p(device, dtype):
    from diffusers import AutoencoderKL, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    toy = editnb.current().load("ip2p")
    tok = toy.tokenizer
    tok.model_max_length = 77
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                        pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(sample_size=64, in_channels=8, out_channels=4, cross_attention_dim=768,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    pipe = StableDiffusionInstructPix2PixPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                                  scheduler=toy.scheduler, safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
    return pipe.to(device, dtype)


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--sd15-shaped", action="store_true")
    args = ap.parse_args()
    rt = editnb.setup(profile="toy", device=args.device)
    pipe = sd15_shaped_ip2p(rt.device, rt.dtype) if args.sd15_shaped else rt.load("ip2p")
    e = world.edit_for("test", 0, "recolor")
    image = e.source_image()
    if args.sd15_shaped:
        image = np.kron(image, np.ones((8, 8, 1), np.uint8))  # 512x512

    def ip2p():
        diffusion.instruct_pix2pix(pipe, image, e.instruction, steps=args.steps, generator=rt.generator(0))

    def with_lime():
        lime.edit(pipe, image, e.instruction, steps=args.steps, generator=rt.generator(0))

    rows = []
    for name, fn in (("IP2P", ip2p), ("IP2P + LIME", with_lime)):
        fn()
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        rows.append((name, statistics.median(times), peak_memory(rt.device)))
    kind = "SD1.5-shaped random weights" if args.sd15_shaped else "toy-ip2p"
    mem = "peak CUDA MiB" if rt.device.type == "cuda" else "peak RSS MiB (process)"
    print(f"{kind}, {args.steps} steps, {rt.device}, {torch.get_num_threads()} threads")
    print(f"{'method':<14}{'s/edit':>8}{'ratio':>7}{mem:>24}")
    for name, t, m in rows:
        print(f"{name:<14}{t:>8.3f}{t / rows[0][1]:>7.2f}{m:>24.0f}")


if __name__ == "__main__":
    main()
