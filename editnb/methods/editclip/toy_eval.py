"""EditCLIP's Table 1 on ToyWorld: exemplar-based editing of held-out quartets, measured with the
paper's metrics (LPIPS, CLIP score, EC2T, CLIP-Dir, S_visual, EC2EC) and the oracle's success;
and the figures ``editnb toy eval --only editclip`` reports."""
from __future__ import annotations

import copy

import numpy as np
import torch

from ... import diffusion
from ... import metrics as M
from ...toy import oracle
from . import card  # noqa: F401  (the cards' descriptions, for editnb toy eval --update-cards)
from .inference import ExemplarEditor, exemplar_edit
from .model import reinitialise_projection

#: Table 1's columns, each named for what it computes and marked with the direction that is better.
#: The supplement prints LPIPS and S_visual with a down arrow (S_visual: lower when the output copies
#: the exemplar's look instead of its edit).  Its LPIPS is the learned metric; the course's column is
#: the LPIPS recipe on the CLIP vision tower's layers without learned heads (:func:`editnb.metrics.toy_lpips`:
#: toy-clip on toy, CLIP L/14 on sd15), a different scale, so it has its own name.
LPIPS, CLIP_LPIPS = "LPIPS ↓", "CLIP-LPIPS ↓"
CLIP_T, EC2T, CLIP_DIR, S_VISUAL, EC2EC = "CLIP ↑", "EC2T ↑", "CLIP-Dir ↑", "S_visual ↓", "EC2EC ↑"
SUCCESS, KIND = "oracle success ↑", "kind transferred ↑"

PAPER_TABLE_1 = {  # supplement Table 1 (TOP-Bench-X)
    "MDP (text)": {LPIPS: 0.424, CLIP_T: 0.249, EC2T: 0.184, CLIP_DIR: 0.231, S_VISUAL: 0.712, EC2EC: 0.372},
    "InstructCLIP": {LPIPS: 0.433, CLIP_T: 0.194, EC2T: 0.143, CLIP_DIR: 0.071, S_VISUAL: 0.867, EC2EC: 0.282},
    "IP-Adapter": {LPIPS: 0.690, CLIP_T: 0.198, EC2T: 0.162, CLIP_DIR: 0.068, S_VISUAL: 0.906, EC2EC: 0.292},
    "EditCLIP": {LPIPS: 0.233, CLIP_T: 0.216, EC2T: 0.180, CLIP_DIR: 0.143, S_VISUAL: 0.761, EC2EC: 0.477},
}


def untrained(editor: ExemplarEditor, seed: int = 0) -> ExemplarEditor:
    """The same editor with its projection re-initialised (the control: the UNet gets a condition
    that carries no learned edit)."""
    return ExemplarEditor(editor.pipe, reinitialise_projection(copy.deepcopy(editor.projection), seed), editor.encoder)


def transfer(editor: ExemplarEditor, quartets, s_E: float = 7.0, s_I: float = 1.5, steps: int = 25, seed: int = 0,
             batch_size: int = 32) -> list[np.ndarray]:
    """Each quartet's exemplar edit applied to its query (uint8 outputs), in batches, one seed."""
    out = []
    for lo in range(0, len(quartets), batch_size):
        chunk = quartets[lo:lo + batch_size]
        res = exemplar_edit(editor, [q.query.source_image() for q in chunk], [q.exemplar.source_image() for q in chunk],
                            [q.exemplar.edited_image() for q in chunk], s_E=s_E, s_I=s_I, steps=steps,
                            generator=torch.Generator().manual_seed(seed + lo))
        out += [np.asarray(im) for im in res.images]
    return out


def ip2p_text(pipe, quartets, steps: int = 25, seed: int = 0, text_guidance: float = 7.5,
              image_guidance: float = 1.5) -> list[np.ndarray]:
    """The text-based reference: InstructPix2Pix with the query's instruction (the paper's MDP row
    is a text-based editor as well)."""
    res = diffusion.instruct_pix2pix(pipe, [q.query.source_image() for q in quartets],
                                     [q.instruction for q in quartets], text_guidance, image_guidance, steps,
                                     torch.Generator().manual_seed(seed))
    return [np.asarray(im) for im in res.images]


def table_1(outputs: dict, quartets, encoder, features, with_oracle: bool = True) -> dict[str, dict[str, float]]:
    """The Table 1 columns per method (`outputs` maps a name to its output images, in quartet order),
    plus the oracle's two columns (exact success, kind transferred) when `with_oracle`: the chapter
    reports them on the toy profile only, as every chapter keeps the oracle to ToyWorld's models."""
    queries = [q.query.source_image() for q in quartets]
    ex_in = [q.exemplar.source_image() for q in quartets]
    ex_ed = [q.exemplar.edited_image() for q in quartets]
    rows = {}
    for name, images in outputs.items():
        rows[name] = {
            CLIP_LPIPS: float(np.mean([M.toy_lpips(features, a, b) for a, b in zip(queries, images)])),
            CLIP_T: float(M.clip_similarity(features, images, [q.query.target_caption for q in quartets]).mean()),
            EC2T: float(M.ec2t(encoder, encoder.texts, queries, images, [q.instruction for q in quartets]).mean()),
            CLIP_DIR: float(M.clip_directional_similarity(features, queries, images,
                                                            [q.query.source_caption for q in quartets],
                                                            [q.query.target_caption for q in quartets]).mean()),
            S_VISUAL: float(M.s_visual(features, queries, images, ex_in, ex_ed).mean()),
            EC2EC: float(M.ec2ec(encoder, queries, images, ex_in, ex_ed).mean()),
        }
        if with_oracle:
            pairs = list(zip(images, quartets))
            rows[name][SUCCESS] = float(np.mean([oracle.edit_success(im, q.query) for im, q in pairs]))
            rows[name][KIND] = float(np.mean([kind_transferred(im, q.query) for im, q in pairs]))
    return rows


def kind_transferred(image, edit) -> bool:
    """Did the output change the query the way the edit's kind does (the oracle's reading of the
    output against the query's source), whether or not the exact target came out?  Recolour: the
    shapes stay, a colour changes; reshape: the colours stay, a shape changes; add/remove: one
    object more/fewer; move: the same objects, a cell changes; background: the background changes."""
    got = oracle.read(image)
    src = edit.source
    objs = {(d.color, d.shape) for d in got.objects}
    want = {(o.color, o.shape) for o in src.objects}
    if edit.kind == "background":
        return got.background != src.background
    if edit.kind == "add":
        return len(got.objects) == len(src.objects) + 1
    if edit.kind == "remove":
        return len(got.objects) == len(src.objects) - 1
    if edit.kind == "move":
        return objs == want and {(d.color, d.shape, d.cell) for d in got.objects} != {(o.color, o.shape, o.cell) for o in src.objects}
    if edit.kind == "recolor":
        return sorted(d.shape for d in got.objects) == sorted(o.shape for o in src.objects) and objs != want
    return sorted(d.color for d in got.objects) == sorted(o.color for o in src.objects) and objs != want


def success_by_kind(images, quartets) -> dict[str, float]:
    """The oracle's success per edit kind (the failure kinds of supplement Sec. E: removal,
    number of objects (add), positions (move))."""
    kinds = sorted({q.kind for q in quartets})
    return {k: float(np.mean([oracle.edit_success(im, q.query) for im, q in zip(images, quartets) if q.kind == k]))
            for k in kinds}


def toy_figures(n_retrieval_groups: int = 40, n_edits: int = 36, steps: int = 25) -> dict:
    """``editnb toy eval --only editclip``: retrieval MAP@10 of EditCLIP, CLIP and CLIP-Dir on
    held-out pairs; oracle success of exemplar editing (trained vs untrained projection) by kind."""
    from ...features import clip_features
    from ...toy import world
    from .data import quartets as make_quartets
    from .inference import load_editor
    from .retrieval import toy_retrieval

    editor = load_editor("toy")
    features = clip_features("clip", profile="toy")
    table = toy_retrieval(editor.encoder, features, groups=n_retrieval_groups)["table"]
    qs = make_quartets(n_edits, kinds=world.EDIT_KINDS)
    trained = transfer(editor, qs, steps=steps)
    control = transfer(untrained(editor), qs, steps=steps)
    ok = lambda ims: float(np.mean([oracle.edit_success(im, q.query) for im, q in zip(ims, qs)]))  # noqa: E731
    return {"editclip_map10": table["EditCLIP"]["MAP@10"], "editclip_map10_clip": table["CLIP"]["MAP@10"],
            "editclip_map10_clipdir": table["CLIP-Dir"]["MAP@10"], "editclip_auc": table["EditCLIP"]["AUC"],
            "editclip_roc_auc": table["EditCLIP"]["ROC AUC"],
            "editclip_success": ok(trained), "editclip_success_untrained": ok(control),
            "editclip_kind": float(np.mean([kind_transferred(im, q.query) for im, q in zip(trained, qs)])),
            "editclip_kind_untrained": float(np.mean([kind_transferred(im, q.query) for im, q in zip(control, qs)])),
            "editclip_success_by_kind": success_by_kind(trained, qs)}
