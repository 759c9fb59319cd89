"""The baselines every chapter compares against, registered with the benchmark runner."""
from __future__ import annotations

from .. import diffusion
from ..attention.words import word_tokens
from ..models import load_ip2p_folder
from .registry import register
from .p2p import present_blend_words, prompt_to_prompt


@register("source", needs=(), models=())
def run_source(ctx, item, generator, steps):
    """No edit: the source image returned as it is.  The reference row of a benchmark table: the
    best any method can do on the background columns and what doing nothing scores on CLIP, so a
    method below it on CLIP has destroyed more than it edited."""
    return item.image.copy()


@register("sdedit", needs=("target_prompt",), models=("sd",))
def run_sdedit(ctx, item, generator, steps, strength: float = 0.6, guidance: float = 7.5):
    """SDEdit (Meng et al. 2022): noise the source to strength 0.6, denoise with the target prompt."""
    pipe = ctx.model("sd")
    return diffusion.sdedit(pipe, item.image, item.target_prompt, strength=strength, guidance=guidance,
                            steps=steps, generator=generator).image


@register("ip2p", needs=("instruction",), models=("ip2p",))
def run_ip2p(ctx, item, generator, steps, text_guidance: float = 7.5, image_guidance: float = 1.5,
             pipeline: str | None = None):
    """InstructPix2Pix (Brooks et al. 2023) with s_T = 7.5, s_I = 1.5; ``pipeline`` names a folder
    of your own weights (e.g. UIP2P's matched retrain) instead of the registry's 'ip2p'."""
    pipe = ctx.model("ip2p") if pipeline is None else load_ip2p_folder(pipeline)
    return diffusion.instruct_pix2pix(pipe, item.image, item.instruction, text_guidance=text_guidance,
                                      image_guidance=image_guidance, steps=steps, generator=generator).image


@register("p2p", needs=("source_prompt", "target_prompt"), models=("sd",))
def run_p2p(ctx, item, generator, steps, guidance: float = 7.5):
    """Prompt-to-Prompt with DDIM + direct inversion: word swap when the prompts have as many
    words, refinement otherwise; local blend on the blend words present in each prompt."""
    pipe = ctx.model("sd")
    n_src = len(word_tokens(pipe.tokenizer, item.source_prompt))
    n_tgt = len(word_tokens(pipe.tokenizer, item.target_prompt))
    mode = "replace" if n_src == n_tgt else "refine"
    result = prompt_to_prompt(pipe, item.source_prompt, item.target_prompt, mode=mode, guidance=guidance,
                              steps=steps, generator=generator, image=item.image,
                              blend_words=present_blend_words(pipe.tokenizer, item.source_prompt, item.target_prompt,
                                                              item.blend_words))
    return result.images[1]
