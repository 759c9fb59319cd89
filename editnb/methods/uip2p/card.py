"""What the model card of toy-uip2p says the model is (the card itself: :func:`editnb.toy.cards.write_card`,
written by ``editnb toy train uip2p``; ``editnb toy eval --only uip2p --update-cards`` adds the figures)."""
from __future__ import annotations

from ...toy.cards import CARD_DESCRIPTIONS

CARD_DESCRIPTIONS.setdefault(
    "uip2p", "UIP2P (Simsar et al. 2025): an InstructPix2Pix UNet (8 input channels) that started from "
    "toy-sd (image channels zero, as InstructPix2Pix starts) and was trained with the Edit Reversibility Constraint "
    "alone (supplement Algorithm 1: forward edit, reverse edit, one-step x0 estimates; L_CLIP directional + L_recon "
    "(L1) + L_sim + L_attn across two noise steps) on ToyWorld input images, captions and forward/reverse "
    "instructions, never an edited image.  toy-sd's time embedding was kept (frozen), so the folder stores only the "
    "trained blocks (unet_blocks.safetensors); editnb.models.load('uip2p') rebuilds a StableDiffusionInstructPix2PixPipeline "
    "on toy-sd's VAE, text encoder, tokenizer and scheduler.  Its supervised counterpart is `editnb toy train ip2p` from the same "
    "initialisation, for the same steps and batch size.  Edit with InstructPix2Pix's dual guidance "
    "(s_T 7.5, s_I 1.5).")
