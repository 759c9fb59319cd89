"""Image-embedding-enhanced denoising of ViMAEdit (Sec. 4.2, Eq. 7-8).

The target image's CLIP embedding is estimated from the source image's and the two prompts':
``e~_I^tgt = e_I^src + (e_T^tgt - e_T^src)`` (Eq. 7).  CLIP's image and text embeddings have very
different norms, so -- as the official code does, the paper leaves it out -- each prompt embedding
is first rescaled to the image embedding's norm: ``e_T <- e_T |e_I^src| / |e_T|``.  The source
branch is conditioned on e_I^src, the target branch on the estimate, both through IP-Adapter
(Eq. 8: its image cross-attention added with weight lambda = 0.4).  For the first 10 % of the steps
the target's image-attention maps are the source's (:class:`ImageAttentionReplace`, the official
runner's ``cross_image_replace_steps``; the paper does not mention it).

The image embedding comes from the IP-Adapter's own image encoder (what it was trained on), the
prompt embeddings from the text tower of the CLIP that shares its space: ``clip-h14`` (OpenCLIP
ViT-H/14, the official code's ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``) for ip-adapter_sd15, toy-clip
for toy-ip-adapter.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ... import diffusion
from ...attention import IMAGE_PROBS, Controller, layout_of
from ...attention.controller import NOTHING
from ...diffusion import execution_device
from ...features import ClipFeatures

#: lambda of Eq. 8 (Appendix C)
IMAGE_EMBEDDING_SCALE = 0.4


def estimate_target_embedding(image_embedding: torch.Tensor, source_text: torch.Tensor,
                              target_text: torch.Tensor) -> torch.Tensor:
    """Eq. 7 with the official code's rescaling: ``e_I + |e_I| (e_T^tgt / |e_T^tgt| - e_T^src / |e_T^src|)``,
    i.e. each prompt embedding scaled to the image embedding's norm before the difference is added
    (the paper's Eq. 7 states no rescaling; the official implementation does this).  Embeddings are
    (..., dim); the text embeddings need not be normalised."""
    if not image_embedding.shape[-1] == source_text.shape[-1] == target_text.shape[-1]:
        raise ValueError(f"the image and prompt embeddings must live in one CLIP space; got widths "
                         f"{image_embedding.shape[-1]}, {source_text.shape[-1]}, {target_text.shape[-1]} "
                         "(embed the prompts with the CLIP whose vision tower is the IP-Adapter's image encoder)")
    norm = image_embedding.norm(dim=-1, keepdim=True)
    unit = lambda e: e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # noqa: E731
    return image_embedding + norm * (unit(target_text) - unit(source_text))


@torch.no_grad()
def branch_embeddings(pipe, text_clip: ClipFeatures, image, source_prompt: str, target_prompt: str) -> list[torch.Tensor]:
    """IP-Adapter embeddings for ``editing.dual_branch``: one (2, 1, dim) tensor, row 0 e_I^src
    for the source branch, row 1 the Eq. 7 estimate for the target branch."""
    e_src = image_embedding(pipe, image)
    texts = text_clip.texts([source_prompt, target_prompt]).to(e_src.device, torch.float32)
    e_tgt = estimate_target_embedding(e_src, texts[:1], texts[1:])
    return [torch.cat([e_src, e_tgt])[:, None].to(pipe.unet.dtype)]


class ImageAttentionReplace(Controller):
    """The official runner's image cross-attention injection (``cross_image_replace_steps=0.1``): for
    the first `fraction` of the steps, at the levels of half the latent side and coarser (SD 1.5:
    32x32, 16x16, 8x8), the target branch's IP-Adapter image-attention probabilities are the source
    branch's, in the text-conditioned rows (as Prompt-to-Prompt replaces text cross-attention), so
    the estimated target embedding (Eq. 7) changes what the target draws, not where."""

    def __init__(self, steps: int, latent_side: int, fraction: float = 0.1):
        super().__init__()
        self.until, self.max_resolution = int(fraction * steps), latent_side // 2

    def wants(self, site):
        if site.kind == "cross" and site.step < self.until and site.resolution <= self.max_resolution:
            return frozenset({IMAGE_PROBS})
        return NOTHING

    def image_forward(self, probs, site):
        layout = layout_of(site, probs.shape[0] // site.heads)
        p = probs.reshape(layout.size, site.heads, *probs.shape[1:]).clone()
        p[layout.rows("cond", "target")] = p[layout.rows("cond", "source")]
        return p.reshape(probs.shape)


@contextmanager
def adapter_scale(pipe, scale: float):
    """Set the IP-Adapter's lambda (Eq. 8) for the duration of an edit, then restore it (the
    pipeline is cached and shared)."""
    procs = [p for p in pipe.unet.attn_processors.values() if hasattr(p, "scale")]
    # copies: diffusers' set_ip_adapter_scale writes into each processor's scale LIST in place
    before = [list(p.scale) if isinstance(p.scale, list) else p.scale for p in procs]
    pipe.set_ip_adapter_scale(scale)
    try:
        yield
    finally:
        for p, s in zip(procs, before):
            p.scale = s


@torch.no_grad()
def image_embedding(pipe, image) -> torch.Tensor:
    """e_I: the IP-Adapter image encoder's embedding of `image`, (1, dim), as the adapter was trained."""
    if getattr(pipe, "image_encoder", None) is None:
        raise ValueError("this pipeline has no IP-Adapter: load it with models.load('ip-adapter') "
                         "(or switch the image-embedding guidance off)")
    return pipe.encode_image(image, execution_device(pipe), 1)[0].float()


def sample_from_embedding(pipe, embedding: torch.Tensor, n: int = 6, *, steps: int = 25, guidance: float = 5.0,
                          generator=None, scale: float = 1.0) -> list:
    """What an image embedding carries (the paper's Figure 5): `n` samples of the IP-Adapter pipeline
    conditioned on `embedding` (1, dim) alone, the prompt empty and the adapter at weight `scale`
    (1: only the image cross-attention speaks), classifier-free guidance against a zero embedding."""
    if embedding.dim() != 2 or embedding.shape[0] != 1:
        raise ValueError(f"embedding is one image embedding (1, dim), got {tuple(embedding.shape)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of samples) is a positive integer, got {n!r}")
    embeds = [embedding[:, None].expand(n, 1, -1).to(pipe.unet.dtype)]
    with adapter_scale(pipe, scale):
        return diffusion.text_to_image(pipe, [""] * n, guidance=guidance, steps=steps, generator=generator,
                                       image_embeds=embeds).images
