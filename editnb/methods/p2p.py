"""Prompt-to-Prompt editing of generated or real (inverted) images, on the dual-branch editor."""
from __future__ import annotations

from .. import diffusion, editing
from ..attention.controller import Chain
from ..attention.p2p import PromptToPrompt
from ..attention.words import word_tokens
from ..runtime import check_blend_words, check_prompts, check_steps


def local_blend_hook(ctrl: PromptToPrompt):
    """P2P's local blend as the editor's ``blend`` hook: the controller accumulates the blend
    words' cross-attention every step, and from ``blend_start`` on its mask is the target's."""
    def blend(i, t, latents):
        return None if ctrl.local_blend(i, t, latents) is None else ctrl.last_mask
    return blend


def prompt_to_prompt(pipe, source_prompt: str, target_prompt: str, mode: str = "replace",
                     cross_replace: float = 0.8, self_replace: float = 0.4, equalizer: dict | None = None,
                     blend_words=None, guidance: float = 7.5, steps: int = 50, generator=None,
                     image=None, inversion: str = "direct", scheduler: str = "ddim", before=None,
                     size=None) -> diffusion.Result:
    """Edit with P2P.  Without `image`, source and target are generated from the same noise.

    With `image`, the image is DDIM-inverted with the source prompt (``inversion="ddim"``) and,
    by default, the source branch is held on the inversion trajectory (``"direct"``: Direct
    Inversion, Ju et al. 2024), which keeps the source reconstruction exact under guidance.
    `size`: (height, width) in pixels of a generated pair (default: the model's own, e.g. SD 1.5's
    512x512; 512x768 works, the attention levels keep their names).  Returns a Result whose images are [source, target]; ``result.found["controller"]`` is the
    controller and ``result.masks["blend"]`` the local-blend mask (when blend words are given).
    `before`: another controller chained before P2P's (its logit biases first, then P2P's
    probability edits), e.g. LIME's regulariser (:func:`editnb.methods.lime.prompt_to_prompt`);
    ``result.found["p2p"]`` is then P2P's own controller.
    """
    diffusion.check_generator(generator)
    check_prompts([source_prompt, target_prompt], words=True, what="P2P prompt")
    blend_words, steps = check_blend_words(blend_words), check_steps(steps)
    ctrl = PromptToPrompt(pipe.tokenizer, [source_prompt, target_prompt], steps, mode=mode,
                          cross_replace=cross_replace, self_replace=self_replace, equalizer=equalizer,
                          blend_words=blend_words).configure(pipe.unet)
    out = editing.dual_branch(pipe, source_prompt, target_prompt, image=image, inversion=inversion,
                              scheduler=scheduler, guidance=guidance, steps=steps, generator=generator,
                              controller=ctrl if before is None else Chain(before, ctrl),
                              blend=local_blend_hook(ctrl) if ctrl.blend is not None else None, size=size)
    out.found["p2p"] = ctrl
    return out


def present_blend_words(tokenizer, source_prompt: str, target_prompt: str, blend_words) -> tuple | None:
    """A benchmark item's (source word, target word), each kept only where its prompt has it (PIE-Bench
    names the added object as the source word of an "add" edit, for instance), in any case ("Triangle"
    is the prompt's "triangle"); None if neither is."""
    if not blend_words:
        return None
    s, t = blend_words
    src = {w for w, _ in word_tokens(tokenizer, source_prompt)}
    tgt = {w for w, _ in word_tokens(tokenizer, target_prompt)}
    pair = ([s] if s and s.lower() in src else [], [t] if t and t.lower() in tgt else [])
    return pair if (pair[0] or pair[1]) else None
