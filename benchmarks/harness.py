"""Shared by the benchmarks: options, timing with peak memory, SD 1.5-shaped random-weight models.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` reset before each configuration; on
the CPU, the peak resident set size seen by a sampling thread (every 2 ms) while the configuration
runs, minus the resident size before it (the process-wide ``ru_maxrss`` cannot be reset).
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import torch

import editnb


def options(doc: str, steps: int) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (e.g. 1 on a busy machine)")
    ap.add_argument("--sd15-shaped", action="store_true",
                    help="random-weight models with Stable Diffusion 1.5's shapes instead of the toy models")
    ap.add_argument("--resolution", type=int, default=512, help="image side for --sd15-shaped (latents: /8)")
    ap.add_argument("--dtype", choices=("fp16", "fp32"), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def runtime(args):
    rt = editnb.setup(profile="toy", device=args.device)
    dtype = {"fp16": torch.float16, "fp32": torch.float32, None: rt.dtype}[args.dtype]
    return rt, dtype


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class _PeakRss:
    def __enter__(self):
        self.base = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def measure(fn, repeats: int, device) -> tuple[float, float]:
    """(median seconds, peak memory MiB) of `fn` over `repeats` runs after one warm-up run."""
    cuda = torch.device(device).type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    with _PeakRss() as rss:
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else rss.peak - rss.base
    return statistics.median(times), peak


def table(title: str, rows, device) -> None:
    """rows: (name, seconds, peak MiB, reference row name or None)."""
    secs = {name: t for name, t, _, _ in rows}
    mem = "peak CUDA MiB" if torch.device(device).type == "cuda" else "peak RSS MiB (+ over start)"
    print(title)
    print(f"{'configuration':<46}{'s/run':>9}{'ratio':>8}  {'vs':<24}{mem:>28}")
    for name, t, m, ref in rows:
        ratio = f"{t / secs[ref]:.2f}" if ref else "-"
        print(f"{name:<46}{t:>9.3f}{ratio:>8}  {ref or '':<24}{m:>28.0f}")


def sd15_shaped(kind: str, device, dtype, resolution: int = 512):
    """A random-weight pipeline with SD 1.5's UNet (block_out_channels 320/640/1280/1280, 8 heads,
    cross-attention 768 over 77 tokens, 860 M parameters), its VAE and a CLIP-L-sized text encoder;
    ``kind="ip2p"`` gives InstructPix2Pix's 8-input-channel UNet.  No download: the toy tokenizer
    and scheduler, every weight random."""
    from diffusers import (AutoencoderKL, StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    if resolution % 64:
        raise ValueError(f"--resolution must be a multiple of 64 (SD's UNet downsamples latents 3 times), got {resolution}")
    toy = editnb.current().load("ip2p")
    tok = toy.tokenizer
    tok.model_max_length = 77
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                        pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(sample_size=resolution // 8, in_channels=8 if kind == "ip2p" else 4, out_channels=4,
                                cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280),
                                layers_per_block=2, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=resolution)
    cls = StableDiffusionInstructPix2PixPipeline if kind == "ip2p" else StableDiffusionPipeline
    pipe = cls(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=toy.scheduler, safety_checker=None,
               feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def describe(args, rt, dtype) -> str:
    model = f"SD1.5-shaped random weights at {args.resolution}x{args.resolution}" if args.sd15_shaped else "toy models"
    return (f"{model}, {args.steps} steps, {rt.device}, {str(dtype).removeprefix('torch.')}, "
            f"{torch.get_num_threads()} threads, median of {args.repeats}")
