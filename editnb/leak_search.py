"""Where LIME's effect could live on ToyWorld: a searched, held-out split of edits where
InstructPix2Pix leaks, and LIME measured on it.

LIME (chapter 03) exists to stop an instruction editor from changing what the instruction did not
name.  On ToyWorld's typical edit toy-ip2p barely leaks, so a comparison over random edits cannot
show the regularisation at work.  This module looks for the edits where it leaks, with the oracle
and the exact edit masks, not by eye:

1. :func:`search`: plain InstructPix2Pix (s_T = 7.5) on a pool of held-out edits of every
   object-local kind, each edit described by its **stratum**: the edit kind and where the edited
   object's nearest other object is (:func:`neighbour`: alone in the scene, in an adjacent grid
   cell, or further apart).  The leak of each edit: the mean |change| outside its exact mask.
2. :func:`leak_prone`: the strata whose mean leak is at least `factor` times the pool's, with
   enough edits to trust the mean; :func:`neighbour_effect`: the strata where an adjacent object
   multiplies the leak of its kind (the spill between objects); :func:`split_edits` draws FRESH
   edits of given strata from another range of test scenes (never the pool's).
3. :func:`compare`: IP2P and IP2P + LIME on that split, at equal text guidance (s_T = 7.5 and 2)
   and at the paper's pair (LIME at s_T = 2 against IP2P at 7.5): leak, the oracle's verdict and
   the background PSNR.

Everything is a pure function of its arguments (scenes, seeds, steps), so ``editnb.results.measured``
keeps the results; ``python scripts/lime_leak_search.py`` prints them.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from . import diffusion, metrics
from .images import mask_at
from .toy import oracle, world

#: the edits whose change has a place: the kinds LIME's RoI can cover (a background edit changes
#: every pixel the objects leave, so "outside the mask" is the objects themselves)
KINDS = ("recolor", "reshape", "remove", "add", "move")
NEIGHBOURS = ("alone", "adjacent", "apart")
TEXT_GUIDANCE, PAPER_TEXT_GUIDANCE = 7.5, 2.0
#: the settings chapter 03 and scripts/lime_leak_search.py measure with (one stored result each):
#: the search's pool (test scenes 60000+ per kind) and the held-out split (test scenes 80000+)
SEARCH = {"per_kind": 60, "start": 60_000, "steps": 20}
SPLIT = {"n": 100, "start": 80_000, "steps": 20}


def neighbour(edit: world.Edit) -> str:
    """Where the edited object's nearest other object is: "alone" (no other object), "adjacent"
    (a grid cell that touches the edited object's cell, diagonals included) or "apart".  An object
    that moves counts from both its cells; an added one from its new cell."""
    cells = {o.cell for o in edit.changed if o is not None}
    edited = {o for o in edit.changed if o is not None}
    others = [o.cell for o in edit.source.objects + edit.target.objects if o not in edited and o.cell not in cells]
    if not others:
        return "alone"
    distance = min(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a in cells for b in others)
    return "adjacent" if distance == 1 else "apart"


def stratum(edit: world.Edit) -> str:
    """'recolor / adjacent': the edit's kind and :func:`neighbour`."""
    return f"{edit.kind} / {neighbour(edit)}"


def _pipe():
    from . import models

    return models.load("ip2p", profile="toy", device="cpu", dtype=torch.float32)


def _ip2p(pipe, edit, text_guidance, steps, seed):
    return diffusion.instruct_pix2pix(pipe, edit.source_image(), edit.instruction, text_guidance=text_guidance,
                                      image_guidance=1.5, steps=steps, generator=torch.Generator().manual_seed(seed)).image


def _scores(image, edit, roi: np.ndarray) -> dict:
    """The oracle's leak, verdict and background PSNR, and the share of the leak (the |change| summed
    outside the exact mask) that lies inside LIME's RoI `roi` (image size), where Eq. 3 acts."""
    image = np.asarray(image)
    change = np.abs(image.astype(np.float64) - edit.source_image(image.shape[0])).mean(-1)
    outside = ~edit.mask(image.shape[0])
    total = change[outside].sum()
    return {"leak": oracle.change_outside(image, edit), "done": bool(oracle.edit_success(image, edit)),
            "background PSNR": oracle.preservation(image, edit),
            "leak in RoI": float(change[outside & roi].sum() / total) if total > 0 else 0.0}


def pool(per_kind: int, start: int) -> list[world.Edit]:
    """`per_kind` edits of each of :data:`KINDS`: test scenes start, start + 1, ... (one index
    range per kind, so no two kinds share a scene seed)."""
    return [world.edit_for("test", start + k * 1_000_000 + i, kind) for k, kind in enumerate(KINDS)
            for i in range(per_kind)]


def search(per_kind: int = 60, start: int = 60_000, steps: int = 20, seed: int = 0) -> list[dict]:
    """Plain InstructPix2Pix at s_T = 7.5 over :func:`pool`: per edit its stratum and leak (the
    generator seeded with `seed` + the edit's position)."""
    pipe = _pipe()
    records = []
    for i, e in enumerate(pool(per_kind, start)):
        image = _ip2p(pipe, e, TEXT_GUIDANCE, steps, seed + i)
        records.append({"stratum": stratum(e), "kind": e.kind, "neighbour": neighbour(e),
                        "leak": oracle.change_outside(np.asarray(image), e)})
    return records


def strata_table(records: list[dict]) -> dict[str, dict]:
    """{stratum: {"edits": n, "mean leak": ...}} of :func:`search`'s records."""
    by = defaultdict(list)
    for r in records:
        by[r["stratum"]].append(r["leak"])
    return {s: {"edits": len(v), "mean leak": float(np.mean(v))} for s, v in sorted(by.items())}


def leak_prone(records: list[dict], factor: float = 1.5, min_edits: int = 8) -> list[str]:
    """The strata whose mean IP2P leak is at least `factor` times the whole pool's, among those with
    at least `min_edits` edits in the pool; most leaking first."""
    if factor <= 0 or min_edits < 1:
        raise ValueError(f"factor > 0 and min_edits >= 1, got factor={factor}, min_edits={min_edits}")
    overall = float(np.mean([r["leak"] for r in records]))
    table = strata_table(records)
    chosen = [s for s, row in table.items() if row["edits"] >= min_edits and row["mean leak"] >= factor * overall]
    return sorted(chosen, key=lambda s: -table[s]["mean leak"])


def neighbour_effect(records: list[dict], factor: float = 2.0, min_edits: int = 8) -> list[str]:
    """The "kind / adjacent" strata whose mean IP2P leak is at least `factor` times that of the same
    kind with the edited object alone in the scene (both with at least `min_edits` edits): the edits
    where a neighbouring object draws the leak, the spill LIME's regularisation is meant to stop."""
    table = strata_table(records)
    found = []
    for kind in KINDS:
        near, alone = table.get(f"{kind} / adjacent"), table.get(f"{kind} / alone")
        if near and alone and min(near["edits"], alone["edits"]) >= min_edits \
                and near["mean leak"] >= factor * alone["mean leak"]:
            found.append(f"{kind} / adjacent")
    return found


def split_edits(strata: list[str], n: int, start: int = 80_000) -> list[world.Edit]:
    """`n` edits of the given strata, the strata taking turns: test scenes from `start` on (an index
    range the search did not use), each edit the first of its kind whose neighbour class matches."""
    if not strata:
        raise ValueError("no strata to draw from: the search found no leak-prone stratum (lower `factor`)")
    wanted = [s.split(" / ") for s in strata]
    for kind, near in wanted:
        if kind not in KINDS or near not in NEIGHBOURS:
            raise ValueError(f"a stratum is 'kind / neighbour' with kind in {KINDS} and neighbour in {NEIGHBOURS}, "
                             f"got {kind!r} / {near!r}")
    edits, index = [], [start] * len(wanted)
    while len(edits) < n:
        j = len(edits) % len(wanted)
        kind, near = wanted[j]
        while True:
            e = world.edit_for("test", index[j] + j * 1_000_000, kind)
            index[j] += 1
            if neighbour(e) == near:
                edits.append(e)
                break
    return edits


#: the settings :func:`compare` runs: (method, s_T)
SETTINGS = (("IP2P", TEXT_GUIDANCE), ("LIME", TEXT_GUIDANCE), ("IP2P", PAPER_TEXT_GUIDANCE), ("LIME", PAPER_TEXT_GUIDANCE))


def compare(strata: list[str], n: int = 100, start: int = 80_000, steps: int = 20, seed: int = 1) -> dict:
    """IP2P and IP2P + LIME (its default localisation and official edit window) on :func:`split_edits`,
    at each of :data:`SETTINGS`; one generator seed per edit (`seed` + its position), the same for
    every setting.  Returns {"edits": [stratum, ...], "roi iou": [RoI IoU with the exact mask, ...],
    "scores": {"IP2P s_T=7.5": [per-edit :func:`_scores`], ...}}."""
    from .methods import lime  # here, not at the top: the search's stored result does not depend on LIME's code

    pipe = _pipe()
    edits = split_edits(strata, n, start)
    scores, ious = defaultdict(list), []
    for i, e in enumerate(edits):
        loc = lime.localise(pipe, e.source_image(), e.instruction, steps=lime.LOCALISATION_STEPS,
                            generator=torch.Generator().manual_seed(seed + i))
        roi = mask_at(loc.roi, e.mask().shape)
        ious.append(metrics.mask_iou(roi, e.mask()))
        for method, s_t in SETTINGS:
            if method == "IP2P":
                image = _ip2p(pipe, e, s_t, steps, seed + i)
            else:
                image = lime.edit(pipe, e.source_image(), e.instruction, localisation=loc, text_guidance=s_t,
                                  image_guidance=1.5, steps=steps, generator=torch.Generator().manual_seed(seed + i)).image
            scores[f"{method} s_T={s_t:g}"].append(_scores(image, e, roi))
    return {"edits": [stratum(e) for e in edits], "roi iou": ious, "scores": dict(scores)}


def summary(result: dict) -> dict[str, dict]:
    """{setting: {"leak": mean, "done": share, "background PSNR": mean, "leak in RoI": mean share}} of
    :func:`compare`'s result."""
    return {name: {k: float(np.mean([r[k] for r in rows])) for k in ("leak", "done", "background PSNR", "leak in RoI")}
            for name, rows in result["scores"].items()}


def leak_cut(result: dict, lime_setting: str, ip2p_setting: str, resamples: int = 2000, seed: int = 0) -> dict:
    """LIME's relative cut of the mean leak against IP2P (1 - leak_LIME / leak_IP2P), with a 90 %
    bootstrap interval over the edits (paired: each resample draws edits, both methods' leaks with
    them), and the change of the success rate in points."""
    a = np.array([r["leak"] for r in result["scores"][lime_setting]])
    b = np.array([r["leak"] for r in result["scores"][ip2p_setting]])
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(a), size=(resamples, len(a)))
    cuts = 1 - a[draws].mean(1) / b[draws].mean(1)
    done = [np.mean([r["done"] for r in result["scores"][s]]) for s in (lime_setting, ip2p_setting)]
    return {"cut": float(1 - a.mean() / b.mean()), "low": float(np.quantile(cuts, 0.05)),
            "high": float(np.quantile(cuts, 0.95)), "success points": float(100 * (done[0] - done[1]))}
