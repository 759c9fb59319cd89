"""UIP2P: Unsupervised Instruction-based Image Editing via Edit Reversibility Constraint (Simsar
et al., 2025; supplement and ``papers/README.md``; no public code, so the supplement's Algorithm 1,
InstructPix2Pix and StyleGAN-NADA's directional CLIP loss are the spec).

- :mod:`.data`: reverse-instruction data (Table 4, the LLM prompts of Sec. 8.1, rule-based reverses
  for real captions, the CLIP filter at 0.2 of Sec. 8.2) and the guarded training stream;
- :mod:`.losses`: L_CLIP, L_recon, L_sim, L_attn and their weighted sum;
- :mod:`.erc`: the ERC training step (Algorithm 1);
- :mod:`.inference`: InstructPix2Pix's dual guidance on the trained UNet; registers "uip2p";
- :mod:`.task`: the training task (``editnb toy train uip2p``), imported on demand;
- :mod:`.toy_eval`: forward-then-reverse reconstruction and oracle success on ToyWorld.
The Elo rating of the user study (Sec. 3: start 1500, K = 32) is :func:`editnb.metrics.elo_leaderboard`.
"""
from .data import (CLIP_FILTER_THRESHOLD, LLM_MULTI_EDIT_PROMPT, LLM_REVERSE_PROMPT, GroundTruthAccessError,
                   GuardedEdit, ReverseEdit, ReverseInstructionDataset, clip_filter, reversible_batch,
                   rule_based_reverse, table_4_rows, toy_reverse_edit)
from .erc import ERCModels, ERCOutputs, erc_step, instruction_map, x0_estimate
from .inference import IMAGE_GUIDANCE, TEXT_GUIDANCE, uip2p_edit
from .losses import (DEFAULT_WEIGHTS, ERCLoss, attention_consistency_loss, clip_directional_loss,
                     directional_loss, erc_loss, reconstruction_loss, similarity_loss)

__all__ = ["CLIP_FILTER_THRESHOLD", "LLM_MULTI_EDIT_PROMPT", "LLM_REVERSE_PROMPT", "GroundTruthAccessError",
           "GuardedEdit", "ReverseEdit", "ReverseInstructionDataset", "clip_filter", "reversible_batch",
           "rule_based_reverse", "table_4_rows", "toy_reverse_edit", "ERCModels", "ERCOutputs", "erc_step",
           "instruction_map", "x0_estimate", "IMAGE_GUIDANCE", "TEXT_GUIDANCE", "uip2p_edit", "DEFAULT_WEIGHTS",
           "ERCLoss", "attention_consistency_loss", "clip_directional_loss", "directional_loss", "erc_loss",
           "reconstruction_loss", "similarity_loss"]
