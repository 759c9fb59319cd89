"""What the model cards of toy-editclip and toy-editclip-ip2p say the models are."""
from __future__ import annotations

from ...toy.cards import CARD_DESCRIPTIONS

CARD_DESCRIPTIONS.setdefault(
    "editclip", "EditCLIP pair encoder (Wang et al. 2025): CLIPModel whose vision tower takes the input and edited "
    "images concatenated (6 channels; started from toy-clip with RGB weights in channels 0-2, zeros in 3-5), trained "
    "contrastively against the edit instruction with toy-clip's text tower frozen (the text shard is toy-clip's).")
CARD_DESCRIPTIONS.setdefault(
    "editclip-ip2p", "EditCLIP's exemplar editor: an InstructPix2Pix UNet (started from toy-ip2p) conditioned on the "
    "last hidden states of toy-editclip for an exemplar pair, through projection.safetensors (Linear + LayerNorm), "
    "instead of text; noise loss + lambda_2 x toy-LPIPS input preservation.  Only the UNet and the projection are "
    "stored; the other parts link to toy-ip2p's.  The shipped run used lambda_2 = 0.05 for 1174 steps, then 0 for the last "
    "300: with toy-LPIPS, 0.05 x the preservation loss outweighs the noise loss about 6:1, and the lambda_2 = 0.05 "
    "continuation returns the query unedited (data/ablations/editclip-lambda2: outputs and measures of the three continuations).")
