"""iEdit: Localised Text-guided Image Editing with Weak Supervision (Bodur et al., CVPRW 2024).

No public code exists; the paper is the spec and every function cites its equation.

- :mod:`.data`: the paired dataset (Sec. 3.1): edit prompts, retrieval of pseudo-targets.
- :mod:`.masks`: difference prompts and their CLIPSeg masks (Sec. 3.4).
- :mod:`.losses`: L_paired, L_global, L_mask, L_perc, L_loc and the full objective (Eq. 2-12).
- :mod:`.inference`: SDEdit-style editing and iEdit-M (Eq. 13); registers "iedit" and "iedit-m".
- :mod:`.toy_eval`: Table 1 on ToyWorld.
- :mod:`.task`: the training task (``editnb toy train iedit``), imported on demand.
"""
from .data import (TOY_LEXICON, EditPrompt, PairedSet, build_paired_set, pseudo_target_accuracy,
                   retrieve_pseudo_targets, toy_edit_prompt, toy_paired_set, wordnet_edit_prompt)
from .inference import edit
from .losses import (DEFAULT_USE, TABLE2_ROWS, LossTerms, check_use, loss_global, loss_ldm, loss_loc, loss_mask,
                     loss_paired, loss_perc, noisy_source, objective, predict_z0, target_noise, time_weights,
                     trainable_groups)
from .masks import clipseg_masks, difference_prompts, mask_for_item
from .toy_eval import TOY_EDIT_KINDS, compare_on_toy, toy_edits, toy_methods

__all__ = ["TOY_LEXICON", "EditPrompt", "PairedSet", "build_paired_set", "pseudo_target_accuracy",
           "retrieve_pseudo_targets", "toy_edit_prompt", "toy_paired_set", "wordnet_edit_prompt", "edit", "LossTerms",
           "DEFAULT_USE", "TABLE2_ROWS", "check_use", "loss_ldm", "loss_global", "loss_loc", "loss_mask", "loss_paired", "loss_perc", "noisy_source", "objective",
           "predict_z0", "target_noise", "time_weights", "trainable_groups", "clipseg_masks", "difference_prompts",
           "mask_for_item", "TOY_EDIT_KINDS", "compare_on_toy", "toy_edits", "toy_methods"]
