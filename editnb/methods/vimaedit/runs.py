"""ViMAEdit, its Table 2 derivatives and P2P in PIE-Bench's configuration, registered with the
benchmark runner (``editnb bench run --method vimaedit ...``)."""
from __future__ import annotations

from ..registry import register
from .edit import TEXT_CLIP, p2p_pie, present_blend_words, vimaedit

NEEDS = ("source_prompt", "target_prompt", "blend_words")


def _edit(ctx, item, generator, steps, guidance, **parts):
    pipe = ctx.model("ip-adapter" if parts.get("image_guidance", True) else "sd")
    blend = present_blend_words(pipe.tokenizer, item.source_prompt, item.target_prompt, item.blend_words)
    text_clip = None
    if parts.get("image_guidance", True):
        from ...features import clip_features

        text_clip = clip_features(TEXT_CLIP, profile=ctx.rt.profile)
    return vimaedit(pipe, item.source_prompt, item.target_prompt, item.image, blend, guidance=(1.0, guidance),
                    steps=steps, generator=generator, text_clip=text_clip, **parts).images[1]


@register("vimaedit", needs=NEEDS, models=("ip-adapter", TEXT_CLIP))
def run_vimaedit(ctx, item, generator, steps, guidance: float = 7.5):
    """ViMAEdit: P2P attention injection (self 0.6, cross 0.4) with Direct Inversion, IP-Adapter
    image embeddings (Eq. 7-8, lambda 0.4), iterative grounding (Eq. 9-10), adaptive variance (Eq. 11-12)."""
    return _edit(ctx, item, generator, steps, guidance)


@register("vimaedit-no-image", needs=NEEDS, models=("sd",))
def run_without_image_embedding(ctx, item, generator, steps, guidance: float = 7.5):
    """ViMAEdit without the image-embedding guidance (Table 2, row 1)."""
    return _edit(ctx, item, generator, steps, guidance, image_guidance=False)


@register("vimaedit-ca", needs=NEEDS, models=("ip-adapter", TEXT_CLIP))
def run_ca_grounding(ctx, item, generator, steps, guidance: float = 7.5):
    """ViMAEdit with cross-attention-only grounding (Table 2: w/ CA-based grounding)."""
    return _edit(ctx, item, generator, steps, guidance, grounding="cross-attention")


@register("vimaedit-dpl", needs=NEEDS, models=("ip-adapter", TEXT_CLIP))
def run_dpl_grounding(ctx, item, generator, steps, guidance: float = 7.5):
    """ViMAEdit with DPL-style grounding: KMeans of the self-attention, clusters scored by cross-attention."""
    return _edit(ctx, item, generator, steps, guidance, grounding="dpl")


@register("vimaedit-var0", needs=NEEDS, models=("ip-adapter", TEXT_CLIP))
def run_zero_variance(ctx, item, generator, steps, guidance: float = 7.5):
    """ViMAEdit with a fixed zero sampling variance (Table 2: deterministic DDIM everywhere)."""
    return _edit(ctx, item, generator, steps, guidance, variance="zero")


@register("vimaedit-var1", needs=NEEDS, models=("ip-adapter", TEXT_CLIP))
def run_full_variance(ctx, item, generator, steps, guidance: float = 7.5):
    """ViMAEdit with a fixed non-zero sampling variance (Table 2: sigma_t with mu_t = 1 everywhere)."""
    return _edit(ctx, item, generator, steps, guidance, variance="full")


@register("p2p-pie", needs=("source_prompt", "target_prompt"), models=("sd",))
def run_p2p_pie(ctx, item, generator, steps, guidance: float = 7.5):
    """Prompt-to-Prompt as PIE-Bench runs it (ViMAEdit's Table 1 baseline): Direct Inversion, cross
    replace 0.4, self replace 0.6, local blend on the blend words, the target blend word reweighted x2."""
    pipe = ctx.model("sd")
    blend = present_blend_words(pipe.tokenizer, item.source_prompt, item.target_prompt, item.blend_words)
    return p2p_pie(pipe, item.source_prompt, item.target_prompt, item.image, blend, guidance=guidance, steps=steps,
                   generator=generator).images[1]
