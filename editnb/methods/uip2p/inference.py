"""UIP2P at inference is InstructPix2Pix (supplement Sec. 2: "we retain the same architecture and
model structure"): the dual classifier-free guidance of Brooks et al. (2023, Eq. 3) with s_T = 7.5
and s_I = 1.5 on the ERC-trained UNet.  Registered as the benchmark method "uip2p" (registry
model "uip2p": toy-uip2p in the toy profile; the paper released no weights, so the sd15 profile
has none and says so)."""
from __future__ import annotations

from ... import diffusion
from ..registry import register

TEXT_GUIDANCE, IMAGE_GUIDANCE = 7.5, 1.5


def uip2p_edit(pipe, image, instruction, text_guidance: float = TEXT_GUIDANCE, image_guidance: float = IMAGE_GUIDANCE,
               steps: int = 25, generator=None) -> diffusion.Result:
    """Edit with a UIP2P pipeline (an InstructPix2Pix pipeline): :func:`editnb.diffusion.instruct_pix2pix`."""
    return diffusion.instruct_pix2pix(pipe, image, instruction, text_guidance=text_guidance,
                                      image_guidance=image_guidance, steps=steps, generator=generator)


@register("uip2p", needs=("instruction",), models=("uip2p",))
def run_uip2p(ctx, item, generator, steps, text_guidance: float = TEXT_GUIDANCE,
              image_guidance: float = IMAGE_GUIDANCE):
    """UIP2P (Simsar et al. 2025): the ERC-trained UNet with InstructPix2Pix's dual guidance, s_T = 7.5, s_I = 1.5."""
    return uip2p_edit(ctx.model("uip2p"), item.image, item.instruction, text_guidance, image_guidance, steps,
                      generator).image
