"""EditCLIP: Representation Learning for Image Editing (Wang et al., ICCV 2025; supplement and
the official code's facts in ``papers/README.md``).

- :mod:`.model`: the 6-channel pair encoder and the projection of its last hidden states;
- :mod:`.data`: the same edit on other scenes, quartets, retrieval sets, training batches;
- :mod:`.losses`: the contrastive loss, the input preservation loss (lambda_2 = 0.05);
- :mod:`.inference`: exemplar-based editing with s_E and s_I (Eq. 5); registers "editclip";
- :mod:`.retrieval`: zero-shot pair retrieval against CLIP and CLIP-Dir (Table 2);
- :mod:`.toy_eval`: Table 1 and the figures of ``editnb toy eval`` on ToyWorld;
- :mod:`.task`: the training tasks (``python -m editnb.methods.editclip.task``), imported on demand.
"""
from .data import Quartet, apply_instruction, parse_instruction, quartets, retrieval_set, same_edit
from .inference import (S_E, S_I, ExemplarEditor, exemplar_edit, exemplar_for, guided_noise, load_editor,
                        load_projection)
from .losses import LAMBDA_2, contrastive_loss, exemplar_objective, perceptual_distance, predict_x0
from .model import EditEncoder, load_encoder, new_projection, pair_encoder_from_clip, six_channel_patch_embedding

__all__ = ["Quartet", "apply_instruction", "parse_instruction", "quartets", "retrieval_set", "same_edit", "S_E", "S_I",
           "ExemplarEditor", "exemplar_edit", "exemplar_for", "guided_noise", "load_editor", "load_projection",
           "LAMBDA_2", "contrastive_loss", "exemplar_objective", "perceptual_distance", "predict_x0", "EditEncoder",
           "load_encoder", "new_projection", "pair_encoder_from_clip", "six_channel_patch_embedding"]
