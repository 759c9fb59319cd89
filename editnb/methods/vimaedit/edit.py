"""ViMAEdit (Wang et al., "Vision-guided and Mask-enhanced Adaptive Denoising for Prompt-based Image
Editing") on the dual-branch editor :func:`editnb.editing.dual_branch`.

- dual-branch editing (Eq. 5-6): Prompt-to-Prompt's attention injection (self-attention replaced for
  the first 0.6 of the steps, cross-attention for 0.4: the official defaults), the target pulled to
  the source outside the grounded mask after every step; source guidance 1, target 7.5;
- image-embedding-enhanced denoising (Sec. 4.2, Eq. 7-8): :mod:`.embeddings`;
- self-attention-guided iterative grounding (Sec. 4.3, Eq. 9-10): :mod:`.grounding`;
- spatially adaptive variance (Sec. 4.4, Eq. 11-12): DDIM with eta = 1 (mu_t = 1) inside the critical
  region, eta = 0 outside, one noise draw for both branches (the editor's ``noise`` hook).

Every part switches off or swaps for Table 2's derivatives: ``image_guidance=False``,
``grounding="cross-attention"`` or ``"dpl"``, ``variance="zero"`` or ``"full"``.  Without a blend
word there is nothing to ground: grounding and the adaptive variance are off, with a warning (as in
the official code).
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ... import diffusion, editing
from ...attention import Chain
from ...attention.p2p import PromptToPrompt
from ...attention.words import word_tokens
from ...features import ClipFeatures, clip_features
from ...metrics import mask_iou
from ...images import latent_side
from ...runtime import check_blend_words, check_number, check_prompts, check_steps
from ..p2p import present_blend_words  # noqa: F401  (used by the chapter, runs and tests)
from .embeddings import IMAGE_EMBEDDING_SCALE, ImageAttentionReplace, adapter_scale, branch_embeddings
from .grounding import MODES, Grounding, GroundingStep, StepAttention, blend_alpha, grounding_resolutions

VARIANCES = ("adaptive", "zero", "full")
#: the CLIP whose text tower shares the IP-Adapter image encoder's space (registry name)
TEXT_CLIP = "clip-h14"


def p2p_mode(tokenizer, source_prompt: str, target_prompt: str) -> str:
    """Word swap when the prompts have as many words, refinement otherwise (as the official code
    picks ``is_replace_controller``)."""
    same = len(word_tokens(tokenizer, source_prompt)) == len(word_tokens(tokenizer, target_prompt))
    return "replace" if same else "refine"


def p2p_pie(pipe, source_prompt: str, target_prompt: str, image, blend_words=None, *, guidance: float = 7.5,
            steps: int = 50, generator=None) -> diffusion.Result:
    """Prompt-to-Prompt as PIE-Bench runs it, ViMAEdit's Table 1 baseline: Direct Inversion, cross
    replace 0.4, self replace 0.6, local blend on the blend words (pass them through
    :func:`present_blend_words`), the target blend word reweighted x2."""
    from ..p2p import prompt_to_prompt

    blend_words = check_blend_words(blend_words)
    target_words = [] if blend_words is None else [blend_words[1]] if isinstance(blend_words[1], str) else list(blend_words[1])
    equalizer = {target_words[0]: 2.0} if target_words and target_words[0] else None
    return prompt_to_prompt(pipe, source_prompt, target_prompt, mode=p2p_mode(pipe.tokenizer, source_prompt, target_prompt),
                            cross_replace=0.4, self_replace=0.6, equalizer=equalizer, blend_words=blend_words,
                            guidance=guidance, steps=steps, generator=generator, image=image)


def _check(variance, grounding, gamma, rounds, start, image_scale, clusters):
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES} (Sec. 4.4 and Table 2), got {variance!r}")
    if grounding not in MODES and grounding is not None:
        raise ValueError(f"grounding must be one of {MODES} or None, got {grounding!r}")
    if not 0.0 <= start < 1.0:
        raise ValueError(f"start is the fraction of the steps before grounding begins, in [0, 1); got {start}")
    if not 0.0 <= image_scale:
        raise ValueError(f"image_scale (lambda of Eq. 8) must be >= 0, got {image_scale}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma (the weight of the previous saliency in Eq. 9) is in [0, 1], got {gamma}")
    if not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds (N of Eq. 9) is a non-negative integer, got {rounds!r}")
    if not isinstance(clusters, int) or clusters < 1:
        raise ValueError(f"clusters (KMeans clusters of the DPL-style grounding) is a positive integer, got {clusters!r}")


def vimaedit(pipe, source_prompt: str, target_prompt: str, image=None, blend_words=None, *,
             image_guidance: bool = True, text_clip: ClipFeatures | None = None,
             grounding: str | None = "iterative", variance: str = "adaptive",
             cross_replace: float = 0.4, self_replace: float = 0.6, guidance=(1.0, 7.5), steps: int = 50,
             inversion: str = "direct", scheduler: str = "ddim", generator=None, gamma: float = 0.5,
             rounds: int = 5, delta: float = 0.5, delta_critical: float = 0.8, start: float = 0.2,
             clusters: int = 5, image_scale: float = IMAGE_EMBEDDING_SCALE, image_replace: float = 0.1,
             keep_history: bool = False) -> diffusion.Result:
    """Edit with ViMAEdit; returns a Result with images [source, target].

    - ``pipe``: the IP-Adapter pipeline (``models.load("ip-adapter")``) for ``image_guidance``,
      else any SD pipeline; ``text_clip``: the CLIP for the prompt embeddings (default: registry
      ``clip-h14``, toy-clip in the toy profile);
    - ``image``: the source image (DDIM-inverted with the source prompt; ``inversion`` "direct"
      or "ddim"); without it the source is generated from noise (then no image guidance);
    - ``blend_words``: (source word(s), target word(s)), the words whose attention grounds the edit;
    - ``grounding``: "iterative" (Eq. 9), "cross-attention", "dpl" (Table 2) or None (no blending);
    - ``variance``: "adaptive" (Eq. 11), "zero" (eta = 0 everywhere), "full" (eta = 1 everywhere);
    - ``image_replace``: the fraction of the steps for which the target's image cross-attention maps
      are the source's (the official runner's 0.1; 0 switches it off), with ``image_guidance``.
    ``result.found["grounding"]`` is the :class:`Grounding` (its ``history`` with ``keep_history``),
    ``result.masks["blend"]`` the last mask and ``result.masks["critical"]`` the last critical region.
    """
    diffusion.check_generator(generator)
    check_prompts([source_prompt, target_prompt], words=True, what="ViMAEdit prompt")
    steps = check_steps(steps)
    blend_words = check_blend_words(blend_words)
    _check(variance, grounding, gamma, rounds, start, image_scale, clusters)
    if not 0.0 <= check_number(image_replace, "image_replace", "0.1") <= 1.0:
        raise ValueError(f"image_replace is a fraction of the steps in [0, 1] (the official runner: 0.1), got {image_replace}")
    if image_guidance and image is None:
        raise ValueError("image-embedding guidance (Eq. 7) needs the source image: pass image=, or "
                         "image_guidance=False to edit a generated source")
    prompts = [source_prompt, target_prompt]
    alpha = None if blend_words is None else blend_alpha(pipe.tokenizer, prompts, blend_words)
    if grounding is not None and (alpha is None or alpha.sum() == 0):
        warnings.warn("ViMAEdit without a blend word: grounding and the adaptive variance are off (no latent "
                      "blending; an adaptive variance falls back to zero), as in the official code", stacklevel=2)
        grounding = None
        variance = "zero" if variance == "adaptive" else variance
    if variance == "adaptive" and grounding is None:
        raise ValueError("the adaptive variance samples inside the grounded critical region; it needs grounding "
                         "(grounding='iterative', 'cross-attention' or 'dpl') or variance='zero'/'full'")

    p2p = PromptToPrompt(pipe.tokenizer, prompts, steps, mode=p2p_mode(pipe.tokenizer, *prompts),
                         cross_replace=cross_replace, self_replace=self_replace).configure(pipe.unet)
    ground = None
    controller = p2p
    if grounding is not None:
        coarse, fine = grounding_resolutions(pipe.unet)
        recorder = StepAttention(alpha, coarse, fine, start=int(start * steps))
        ground = Grounding(recorder, mode=grounding, gamma=gamma, rounds=rounds, delta=delta,
                           delta_critical=delta_critical, clusters=clusters, keep_history=keep_history)
        # after P2P: the maps each branch really used, as the official controller records them
        controller = Chain(p2p, recorder)
    if image_guidance and image_replace > 0:
        controller = Chain(controller, ImageAttentionReplace(steps, latent_side(pipe.unet), image_replace))
    noise = None
    if variance == "adaptive":
        noise = ground.adaptive_noise
    elif variance == "full":
        noise = lambda i, t, latents: torch.ones_like(latents[:1, :1])  # noqa: E731 (Table 2: mu_t = 1 everywhere)

    embeds = None
    if image_guidance:
        text_clip = text_clip or clip_features(TEXT_CLIP)
        embeds = branch_embeddings(pipe, text_clip, image, source_prompt, target_prompt)
    elif getattr(pipe.unet, "encoder_hid_proj", None) is not None:
        # an IP-Adapter is loaded, and its layers expect embeddings: zeros at weight 0 leave the text path alone
        dim = pipe.image_encoder.config.projection_dim
        embeds, image_scale = [torch.zeros(2, 1, dim, dtype=pipe.unet.dtype, device=pipe.unet.device)], 0.0
    with adapter_scale(pipe, image_scale) if embeds is not None else nullcontext():
        result = editing.dual_branch(pipe, source_prompt, target_prompt, image=image, inversion=inversion,
                                     scheduler=scheduler, guidance=guidance, steps=steps, generator=generator,
                                     controller=controller, blend=None if ground is None else ground.blend,
                                     noise=noise, image_embeds=embeds)
    if ground is not None:
        result.found["grounding"] = ground
        if ground.critical is not None:
            result.masks["critical"] = ground.critical[0, 0].bool().cpu().numpy()
    return result


# ------------------------------------------------------------------ grounding for teaching


@dataclass
class GroundingTrace:
    """Grounding step by step: ``steps[k]`` is a :class:`GroundingStep` (initial CA saliency s_0 of
    both branches, each refinement round, the combined saliency, mask and critical region);
    ``ious[k]`` the IoU of that step's mask with the true mask (when given); ``resolutions`` (P1, P2)."""

    result: diffusion.Result
    steps: list[GroundingStep]
    resolutions: tuple[int, int]
    ious: list[float] = field(default_factory=list)

    @property
    def masks(self) -> list[np.ndarray]:
        return [s.mask.numpy() for s in self.steps]


def resize_mask(mask: torch.Tensor | np.ndarray, shape) -> np.ndarray:
    """A boolean mask resized (nearest) to `shape`, to compare a latent-resolution mask with a true one."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return F.interpolate(m, size=tuple(shape), mode="nearest")[0, 0].numpy() > 0.5


def trace_grounding(pipe, source_prompt: str, target_prompt: str, image, blend_words, true_mask=None,
                    grounding: str = "iterative", steps: int = 50, start: float = 0.2, generator=None,
                    ignore_frame: bool = True, **options) -> GroundingTrace:
    """Run a ViMAEdit edit keeping every step's grounding (for the chapter's figures and grounding
    IoU per timestep, paper Fig. 6); ``options`` go to :func:`vimaedit` (e.g. ``image_guidance``).

    ``ignore_frame``: PIE-Bench's mask decoder sets the image's one-pixel frame (against annotation
    errors at the border); it is no part of the edit, and on 64x64 toy images it is a third of a
    typical object's area, so by default the IoU leaves it out of the true mask."""
    result = vimaedit(pipe, source_prompt, target_prompt, image, blend_words, grounding=grounding, steps=steps,
                      start=start, generator=generator, keep_history=True, **options)
    ground = result.found.get("grounding")
    if ground is None:
        raise ValueError("no grounding ran: give blend words present in the prompts")
    ious = []
    if true_mask is not None:
        true = np.array(true_mask, bool)
        if ignore_frame:
            true[0, :] = true[-1, :] = true[:, 0] = true[:, -1] = False
        ious = [mask_iou(resize_mask(s.mask, true.shape), true) for s in ground.history]
    return GroundingTrace(result, ground.history, (ground.recorder.coarse, ground.recorder.fine), ious)


@dataclass
class GroundingComparison:
    """The groundings of Table 2 on the same edits (the paper's Figure 6a): ``ious[mode]`` is
    (edits, grounded steps), each step's mask IoU with the true mask."""

    ious: dict[str, np.ndarray]

    def final(self, mode: str) -> float:
        """Mean IoU of the last step's mask (the mask the edit ends with)."""
        return float(self.ious[mode][:, -1].mean())

    def steps_above(self, mode: str, baseline: str = "cross-attention") -> float:
        """Share of the grounded steps at which `mode`'s mean IoU is above `baseline`'s."""
        return float((self.ious[mode].mean(0) > self.ious[baseline].mean(0)).mean())


def compare_groundings(pipe, edits, steps: int = 25, modes=MODES, generator_seed: int = 0, **options) -> GroundingComparison:
    """Trace every grounding mode on every edit (objects with a blend word and a true mask: ToyWorld
    edits), same seeds, and collect the IoU per step (:func:`trace_grounding`)."""
    ious = {}
    for mode in modes:
        per_edit = []
        for k, e in enumerate(edits):
            blend = present_blend_words(pipe.tokenizer, e.source_caption, e.target_caption, e.blend_words)
            generator = torch.Generator().manual_seed(generator_seed + k)
            per_edit.append(trace_grounding(pipe, e.source_caption, e.target_caption, e.source_image(), blend,
                                            true_mask=e.mask(), grounding=mode, steps=steps, generator=generator,
                                            **options).ious)
        ious[mode] = np.array(per_edit)
    return GroundingComparison(ious)
