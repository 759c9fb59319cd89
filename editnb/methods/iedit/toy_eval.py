"""The columns of iEdit's Table 1 on ToyWorld: SDEdit, iEdit and iEdit-M on held-out edits."""
from __future__ import annotations

import numpy as np
import torch

from ... import diffusion
from ...toy import world
from .inference import edit
from .masks import mask_for_item


#: ToyWorld edits whose target a caption with one word replaced describes (iEdit's edit prompts)
TOY_EDIT_KINDS = ("recolor", "reshape", "background")


def toy_edits(n: int, start: int = 0) -> list:
    """Held-out ToyWorld edits of the kinds iEdit's prompts express, in a fixed order."""
    return [world.edit_for("test", 30_000 + start + i, kind=TOY_EDIT_KINDS[i % len(TOY_EDIT_KINDS)]) for i in range(n)]


def compare_on_toy(methods: dict, edits, features, strength: float = 0.6, guidance: float = 7.5, steps: int = 25,
                   seed: int = 0) -> dict:
    """The columns of the paper's Table 1 on ToyWorld, per method: CLIPScore of the edit prompt
    on the paper's scale (Hessel et al.'s 2.5 max(cos, 0), in %: :func:`editnb.metrics.clipscore_hessel`),
    toy-FID against the true edited images, SSIM-M and SSIM-M-bar on the exact edit masks, plus
    the oracle's edit success, and "CLIP sim. x100" (100 max(cos, 0), PIE-Bench's scale; the value
    "CLIPScore" held before it was put on iEdit's scale).  `methods` maps a name to
    ``fn(edit, generator) -> PIL image``."""
    from ... import metrics as M
    from ...toy import oracle

    rows, outputs = {}, {}
    truth = [e.edited_image() for e in edits]
    for name, fn in methods.items():
        images = [np.asarray(fn(e, torch.Generator().manual_seed(seed + k))) for k, e in enumerate(edits)]
        ssim = np.array([M.ssim_masked(e.source_image(), im, e.mask()) for e, im in zip(edits, images)])
        prompts = [e.target_caption for e in edits]
        rows[name] = {
            "CLIPScore": float(M.clipscore_hessel(features, images, prompts).mean()),
            "toy-FID": M.toy_fid(features, images, truth),
            "SSIM-M": float(np.nanmean(ssim[:, 0])),
            "SSIM-M-bar": float(np.nanmean(ssim[:, 1])),
            "oracle success": float(np.mean([oracle.edit_success(im, e) for im, e in zip(images, edits)])),
            "CLIP sim. x100": float(M.clip_score(features, images, prompts).mean()),
        }
        outputs[name] = images
    return {"rows": rows, "images": outputs}


def toy_methods(sd, iedit_pipe, clipseg, strength: float = 0.6, guidance: float = 7.5, steps: int = 25) -> dict:
    """SDEdit (toy-sd), iEdit and iEdit-M (toy-iedit; CLIPSeg mask of the source's difference words)."""
    def sdedit(e, g):
        return diffusion.sdedit(sd, e.source_image(), e.target_caption, strength=strength, guidance=guidance,
                                steps=steps, generator=g).image

    def plain(e, g):
        return edit(iedit_pipe, e.source_image(), e.target_caption, strength=strength, guidance=guidance,
                    steps=steps, generator=g).image

    def masked(e, g):
        mask = mask_for_item(clipseg, e.source_image(), e.source_caption, e.target_caption)
        return edit(iedit_pipe, e.source_image(), e.target_caption, mask=mask, strength=strength, guidance=guidance,
                    steps=steps, generator=g).image

    return {"SDEdit": sdedit, "iEdit": plain, "iEdit-M": masked}
