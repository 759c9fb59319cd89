"""LIME: Localized Image Editing via Attention Regularization (Simsar et al., WACV 2025).

LIME makes an instruction editor (InstructPix2Pix) edit only where it should, without training:

1. **Edit localisation** (Sec. 4.1). Run the editor once, collect the outputs of its UNet's
   attention modules (self- and cross-attention) for the image-conditioned branch at several
   resolutions, upsample each layer's output to one size, concatenate them along channels,
   L2-normalise and cluster them (KMeans, 8 clusters by default; agglomerative clustering with a
   cosine distance threshold as the alternative of Sec. A.7.2): a segmentation.  The **RoI** is
   the cluster that holds the highest cross-attention of the instruction's relevant tokens (start
   token, padding, stop words, punctuation and instruction verbs dropped), the cross-attention
   averaged over heads and over the layers of every resolution but the finest.
2. **Edit application** (Sec. 4.2, Eq. 3). Edit again; in the cross-attention layers of the
   higher resolutions, for pixels inside the RoI, the logits of the unrelated tokens (Sec. A.7.1:
   the start token, padding and stop words; NOT the verbs or punctuation the localisation drops)
   get the most negative float added (-inf in the paper), in all three guidance branches.
   Outside the RoI the attention is untouched.  The ablation of Sec. A.7.1 (Eq. 4) rewards the
   related tokens instead (+inf: inside the RoI, attention becomes uniform over them).
3. **Other editors** (Sec. A.1): :func:`prompt_to_prompt` runs the edit application inside
   Prompt-to-Prompt, on the target branch only.

Defaults are the official code's: localisation pass s_T = 5.5, s_I = 1.5; edit pass s_T = 2,
s_I = 1.5; features of the 8x8, 16x16 and 32x32 layers of SD's 64x64 latents (a small model
without those levels uses all of its levels); RoI attention without the 64x64 layers;
regularisation in the cross-attention layers of the upper half of the UNet's levels (32x32 and
64x64 in SD; 16x16 in toy-ip2p).  Where we depart from it, an option names the departure:
``feature_merge="mean"`` (less memory), ``roi_resolutions`` (which layers' attention picks the RoI).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .. import diffusion
from ..attention import AttentionStore, Controller, attach
from ..attention.controller import BIAS, IP2P, NOTHING, OUTPUT, PROBS, Chain, Site, layout_of
from ..attention.words import word_tokens
from ..clustering import kmeans
from ..images import latent_side, mask_at
from ..runtime import check_n_clusters

STOP_WORDS = frozenset("""a an the and or of to in on at into onto with by for from as is are be it its this that
these those there here some any his her their our your my them him he she they we you i me so than then too very
just again back""".split())
# Instruction verbs carry no location: LIME drops them (official code: a part-of-speech filter).
# We use a list of the verbs of editing instructions, which needs no tagger model offline.
# `edit` localises with a pass of its own, shorter schedule: features and cross-attention averaged
# over a 5-step schedule localise almost as well as over the 20-step edit schedule (toy-ip2p, 50
# held-out recolour edits: mean RoI IoU 0.56 vs 0.58; 3 steps: 0.54), while the first 3, 5 or 10
# steps of the 20-step schedule alone give 0.41, 0.39, 0.45: the features need the late, low-noise
# steps, not many of them.  This keeps LIME near 1.25x the edit pass plus KMeans.  (Measured with the
# earlier features: self-attention outputs averaged per resolution, RoI from every cross-attention level.)
# With today's features, `python scripts/lime_localisation_readings.py` (50 held-out recolour edits,
# test scenes 50000+): this 5-step average 0.554, the official single-step reading 0.490 (step 7 of 20)
# and 0.479 (step 10 of 30).
LOCALISATION_STEPS = 5
# The official code's schedule (lime.ipynb, 30 steps): the edit pass regularises steps 0-26
# (``apply_mask_range=[0, 26]``, both ends included), the last 3 steps run unregularised; its
# localisation pass keeps the features and cross-attention of one step, step 10 (its attention store
# keeps only the last step it recorded).  Scaled to other step counts by these shares.
OFFICIAL_EDIT_SHARE = 27 / 30
OFFICIAL_LOCALISATION_STEP = 10 / 30


def official_edit_window(steps: int) -> tuple[int, int]:
    """The steps [0, end) the official edit pass regularises: its first 27 of 30, scaled to `steps`
    (18 of 20, 45 of 50); at least one."""
    return 0, max(1, math.floor(steps * OFFICIAL_EDIT_SHARE + 0.5))


def official_localisation_step(steps: int) -> int:
    """The one step (0-based) of a `steps`-step pass whose features and attention the official code
    localises with: step 10 of 30, scaled (7 of 20)."""
    return min(steps - 1, math.floor(steps * OFFICIAL_LOCALISATION_STEP + 0.5))
INSTRUCTION_VERBS = frozenset("""make turn change add remove put paint replace move let have give place set
convert transform swap delete erase insert color colour recolor recolour draw show become get take keep""".split())


def relevant_tokens(tokenizer, instruction: str) -> tuple[list[int], list[str]]:
    """Token positions (and words) of the instruction that LIME localises with and that Eq. 4
    rewards (S-tilde): everything but the start token, padding, stop words, punctuation and
    instruction verbs."""
    keep, words = [], []
    for word, positions in word_tokens(tokenizer, instruction):
        if word in STOP_WORDS or word in INSTRUCTION_VERBS or not re.search(r"[a-z0-9]", word):
            continue
        keep += positions
        words.append(word)
    if not keep:
        raise ValueError(f"the instruction {instruction!r} has no content words (only stop words, verbs or "
                         "punctuation); say what to edit, e.g. 'make the circle blue'")
    return keep, words


def unrelated_tokens(tokenizer, instruction: str) -> list[int]:
    """Token positions Eq. 3 suppresses inside the RoI: the start token, the stop words and the
    padding after the end-of-text token (Sec. A.7.1: "unrelated tokens, such as <start of text>,
    padding, and stop words"; the official code's set).  Verbs, punctuation and the end-of-text
    token itself keep their attention: they are not edit content, but not unrelated either."""
    words = word_tokens(tokenizer, instruction)
    end_of_text = (words[-1][1][-1] if words else 0) + 1
    stop = [p for w, positions in words if w in STOP_WORDS for p in positions]
    return [0] + stop + list(range(end_of_text + 1, tokenizer.model_max_length))


@dataclass
class Localisation:
    """The outcome of LIME's first pass."""

    segments: np.ndarray            # (S, S) cluster id per pixel of the feature map
    attention: np.ndarray           # (S, S) cross-attention of the relevant tokens, in [0, 1]
    token_maps: dict                # {word: (S, S) map}
    roi: np.ndarray                 # (S, S) bool: the chosen cluster(s)
    chosen: list                    # chosen cluster ids
    relevant_words: list
    features: np.ndarray | None = None  # (S*S, C) the clustered features, kept for re-clustering
    channels: dict = field(default_factory=dict)  # {res: (start, stop)}: that resolution's columns of `features`
    clustering: dict = field(default_factory=dict)  # the localisation pass's arguments of `cluster`
    _by_resolution: dict | None = field(default=None, repr=False)

    @property
    def segments_by_resolution(self) -> dict:
        """{res: (S, S) clusters of that resolution's features alone}: for figures, so clustered on
        first use (LIME itself clusters once, on all resolutions together)."""
        if self._by_resolution is None:
            size = self.segments.shape[0]
            self._by_resolution = {
                r: cluster(_l2(self.features[:, a:b]), **self.clustering).reshape(size, size)
                for r, (a, b) in self.channels.items()}
        return self._by_resolution


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class _FeatureCollector(AttentionStore):
    """During denoising steps [first_step, steps), records the OUTPUTS of the attention modules
    (self and cross) of the image-conditioned branch at the feature resolutions, per layer, and the
    cross-attention probabilities of the text-conditioned branch at the RoI resolutions; asks for
    nothing else."""

    guess = IP2P  # without a published layout: InstructPix2Pix's [text+image, image only, none]

    def __init__(self, resolutions, roi_resolutions, steps: int, first_step: int = 0):
        super().__init__(kinds=("cross",), device=None, where=lambda site: site.resolution in self.roi_resolutions)
        self.resolutions, self.roi_resolutions, self.feature_steps = set(resolutions), set(roi_resolutions), steps
        self.first_step = first_step
        self.features: dict[str, list[torch.Tensor]] = {}  # layer -> one (queries, C) output per step
        self.feature_sites: dict[str, Site] = {}

    def wants(self, site):
        if not self.first_step <= site.step < self.feature_steps:
            return NOTHING
        needs = NOTHING
        if site.resolution in self.resolutions:
            needs = needs | _OUTPUT
        if site.kind == "cross" and site.resolution in self.roi_resolutions:
            needs = needs | _PROBS
        return needs

    def observe_output(self, out, site):
        if site.resolution in self.resolutions:
            site.square_side("LIME's localisation (features clustered on a square grid)")
            image = layout_of(site, out.shape[0], IP2P).rows(guidance="image")
            self.features.setdefault(site.layer, []).append(out[image].mean(0).detach().float())
            self.feature_sites[site.layer] = site


_PROBS, _BIAS, _OUTPUT = frozenset({PROBS}), frozenset({BIAS}), frozenset({OUTPUT})


class _Stop(Exception):
    """Ends the localisation pass once the steps its features use are done."""


def _levels(unet) -> list[int]:
    latent = latent_side(unet)
    return [latent // 2 ** k for k in range(len(unet.config.block_out_channels))]


def _default_resolutions(unet) -> list[int]:
    """The official 8x8, 16x16 and 32x32 of SD's 64x64 latents (latent / 8, / 4, / 2); a model with
    fewer than two of those levels uses all of its levels."""
    latent, levels = latent_side(unet), _levels(unet)
    official = [r for r in (latent // 8, latent // 4, latent // 2) if r in levels]
    return official if len(official) >= 2 else levels


def _default_roi_resolutions(unet) -> list[int]:
    """The RoI's cross-attention: every level but the finest (the latent resolution: SD's 64x64
    layers are left out, as in the official code); a one-level model keeps its level."""
    levels = _levels(unet)
    return [r for r in levels if r != latent_side(unet)] or levels


#: KMeans runs from one k-means++ seeding, as the official code (GPU KMeans with ``n_init=1``); three
#: seedings cost LIME about a tenth of an edit pass on the toy CPU (benchmarks/lime_overhead.py)
KMEANS_INITS = 1


def cluster(features, n_clusters: int = 8, method: str = "kmeans", distance_threshold: float = 0.5,
            seed: int = 0) -> np.ndarray:
    """Cluster (N, C) L2-normalised features (array or tensor): KMeans with `n_clusters` from
    :data:`KMEANS_INITS` seedings (in torch on the features' device: :func:`editnb.clustering.kmeans`), or agglomerative clustering with cosine
    distance and a threshold in (0, 1) instead of a cluster count (Sec. A.7.2; higher threshold, more
    clusters)."""
    if method == "kmeans":
        x = torch.as_tensor(features)
        n_clusters = check_n_clusters(n_clusters, len(x))
        return kmeans(x, n_clusters, n_init=KMEANS_INITS, seed=seed).cpu().numpy()
    features = features.cpu().numpy() if torch.is_tensor(features) else features
    if method == "agglomerative":
        from sklearn.cluster import AgglomerativeClustering

        if not 0.0 < distance_threshold < 1.0:
            raise ValueError(f"the threshold is in (0, 1), got {distance_threshold}")
        # The paper's threshold grows with the number of clusters ("the higher the threshold, the
        # more clusters"), so it bounds cosine SIMILARITY: clusters merge while their distance
        # (1 - similarity) stays under 1 - threshold.
        # Cosine distances through one matrix product (BLAS) rather than scipy's pairwise loop, which
        # took seconds per call on the sd15-shaped features; the same average-linkage tree follows.
        x = np.asarray(features, dtype=np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        distances = np.clip(1.0 - x @ x.T, 0.0, 2.0)
        np.fill_diagonal(distances, 0.0)
        return AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                       distance_threshold=1.0 - distance_threshold).fit_predict(distances)
    raise ValueError(f"clustering method must be 'kmeans' or 'agglomerative', got {method!r}")


def localise(pipe, image, instruction: str, n_clusters: int = 8, clustering: str = "kmeans",
             distance_threshold: float = 0.5, resolutions=None, size: int | None = None, steps: int = 20,
             text_guidance: float = 5.5, image_guidance: float = 1.5, generator=None, top_clusters: int = 1,
             seed: int = 0, feature_steps: int | None = None, roi_resolutions=None,
             feature_merge: str = "concat", reading: str = "mean") -> Localisation:
    """LIME's edit localisation (Sec. 4.1): segmentation by clustering multi-resolution features,
    RoI = the cluster(s) holding the highest attention of the relevant tokens.

    Features: the outputs of every self- and cross-attention module at `resolutions` (default: the
    official 8/16/32 of SD, see :func:`_default_resolutions`) for the image-conditioned branch,
    averaged over the recorded steps, each layer upsampled (bilinear) to `size` (2x the latent
    side: 128 for SD) and concatenated along channels (``feature_merge="concat"``, the official
    code).  ``feature_merge="mean"`` averages the layers of a resolution first: the same channels
    as one layer per resolution, 3200 instead of 21760 for SD, for machines where the official
    (S*S, 21760) feature matrix (1.4 GB at S = 128) does not fit.

    The RoI's attention: cross-attention of the text-conditioned branch averaged over heads, steps
    and the layers at `roi_resolutions` (default: all but the finest, see
    :func:`_default_roi_resolutions`), upsampled to `size`.

    ``reading="mean"`` (the course's): features and attention averaged over the steps of a
    `steps`-step schedule, or over its first `feature_steps` only; the pass stops after the last step
    it reads (it never decodes an image).  ``reading="official"``: the official code's
    single step, :func:`official_localisation_step` of the schedule (step 10 of 30), where the pass
    stops; `feature_steps` does not apply.  On toy-ip2p the course's 5-step average localises better
    (see ``LOCALISATION_STEPS`` and chapter 03, which measures both)."""
    if feature_merge not in ("concat", "mean"):
        raise ValueError(f"feature_merge is 'concat' (every layer its own channels, the official code) or "
                         f"'mean' (layers of a resolution averaged, less memory), got {feature_merge!r}")
    if reading not in ("mean", "official"):
        raise ValueError(f"reading is 'mean' (features averaged over the recorded steps, the course's) or "
                         f"'official' (one step, step 10 of 30 scaled, the official code's), got {reading!r}")
    if reading == "official" and feature_steps is not None:
        raise ValueError("feature_steps applies to reading='mean'; the official reading takes one step, "
                         "official_localisation_step(steps); leave feature_steps out or use reading='mean'")
    tokens, words = relevant_tokens(pipe.tokenizer, instruction)
    levels = _levels(pipe.unet)
    resolutions = sorted(resolutions or _default_resolutions(pipe.unet))
    roi_resolutions = sorted(roi_resolutions or _default_roi_resolutions(pipe.unet))
    for name, chosen in (("resolutions", resolutions), ("roi_resolutions", roi_resolutions)):
        missing = [r for r in chosen if r not in levels]
        if missing:
            raise ValueError(f"{name} {missing} are not levels of this UNet; it has {levels}")
    size = size or 2 * latent_side(pipe.unet)  # 128 for SD's 64x64 latents, as the official code
    first_step = 0
    if reading == "official":
        first_step = official_localisation_step(steps)
        feature_steps = first_step + 1
    elif feature_steps is None:
        feature_steps = steps
    feature_steps = min(steps, feature_steps)
    if feature_steps < 1:
        raise ValueError(f"feature_steps is a number of denoising steps >= 1, got {feature_steps}")
    collector = _FeatureCollector(resolutions, roi_resolutions, feature_steps, first_step)

    def stop(i, t, latents):  # after the last step read: no further UNet call, and no decoding
        if i + 1 >= feature_steps:
            raise _Stop

    with attach(pipe.unet, collector):
        try:
            diffusion.instruct_pix2pix(pipe, image, instruction, text_guidance=text_guidance,
                                       image_guidance=image_guidance, steps=steps, generator=generator, on_step=stop)
        except _Stop:
            pass

    def upsampled(f: torch.Tensor, r: int) -> torch.Tensor:  # (r*r, C) -> (C, size, size)
        return F.interpolate(f.T.reshape(1, -1, r, r), size=(size, size), mode="bilinear", align_corners=False)[0]

    per_res: dict[int, list[torch.Tensor]] = {}
    for layer, site in collector.feature_sites.items():  # UNet order
        steps_mean = torch.stack(collector.features[layer]).mean(0)  # (r*r, C), mean over the recorded steps
        per_res.setdefault(site.resolution, []).append(steps_mean)
    blocks = []
    for r in resolutions:
        if r not in per_res:
            raise ValueError(f"the UNet has no attention layers at {r}x{r}; it has {sorted(per_res)}")
        layers = per_res[r] if feature_merge == "concat" else [torch.stack(per_res[r]).mean(0)]
        blocks.append(torch.cat([upsampled(f, r) for f in layers], 0))
    feats = F.normalize(torch.cat(blocks, 0), dim=0)  # L2 over the concatenated channels
    flat = feats.reshape(feats.shape[0], -1).T
    how = dict(n_clusters=n_clusters, method=clustering, distance_threshold=distance_threshold, seed=seed)
    segments = cluster(flat, **how).reshape(size, size)
    flat = flat.cpu().numpy()
    bounds = np.cumsum([0] + [b.shape[0] for b in blocks])
    channels = {r: (int(a), int(b)) for r, a, b in zip(resolutions, bounds[:-1], bounds[1:])}

    total, n_layers = None, 0
    for res in roi_resolutions:  # the mean over layers: each resolution weighted by its layer count
        n = len(collector.layers("cross", res))
        agg = collector.aggregate("cross", resolution=res)[0].float().cpu()  # (res, res, keys), text branch
        up = F.interpolate(agg.permute(2, 0, 1)[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        total = n * up if total is None else total + n * up
        n_layers += n
    total = total / n_layers
    token_maps = {w: _unit(total[pos].mean(0).numpy()) for w, pos in word_tokens(pipe.tokenizer, instruction)
                  if w in words}
    attention = _unit(total[tokens].mean(0).numpy())
    roi, chosen = _choose_roi(segments, attention, top_clusters)
    return Localisation(segments, attention, token_maps, roi, chosen, words, flat, channels, how)


#: the localisation readings that chapter 03 and ``scripts/lime_localisation_readings.py`` compare
READINGS = {f"course: mean over a {LOCALISATION_STEPS}-step pass": dict(steps=LOCALISATION_STEPS),
            "official: step 7 of a 20-step pass": dict(steps=20, reading="official"),
            "official: step 10 of a 30-step pass": dict(steps=30, reading="official")}


def roi_ious(pipe, edits, seed: int = 0, **options) -> list[float]:
    """RoI IoU with the exact edit mask: :func:`localise` (`options`, e.g. ``steps``, ``reading``) on
    each edit (ToyWorld edits: ``source_image()``, ``instruction``, ``mask()``), the RoI resized to
    the mask's size by nearest neighbour; the generator seeded with `seed` for every edit."""
    from .. import metrics

    ious = []
    for e in edits:
        loc = localise(pipe, e.source_image(), e.instruction, generator=torch.Generator().manual_seed(seed), **options)
        true = np.asarray(e.mask(), bool)
        ious.append(metrics.mask_iou(mask_at(loc.roi, true.shape), true))
    return ious


def _choose_roi(segments: np.ndarray, attention: np.ndarray, top_clusters: int) -> tuple[np.ndarray, list]:
    """The cluster(s) holding the highest-attention pixels."""
    chosen: list[int] = []
    for idx in np.argsort(attention.ravel())[::-1]:
        c = int(segments.ravel()[idx])
        if c not in chosen:
            chosen.append(c)
        if len(chosen) == top_clusters:
            break
    return np.isin(segments, chosen), chosen


def recluster(loc: Localisation, n_clusters: int = 8, clustering: str = "kmeans", distance_threshold: float = 0.5,
              top_clusters: int = 1, seed: int = 0) -> Localisation:
    """The same localisation pass with another clustering (the ablations of Table 4 / Sec. A.7.2)
    without running the editor again: re-cluster the kept features, re-pick the RoI."""
    size = loc.segments.shape[0]
    segments = cluster(loc.features, n_clusters, clustering, distance_threshold, seed).reshape(size, size)
    roi, chosen = _choose_roi(segments, loc.attention, top_clusters)
    return dataclasses.replace(loc, segments=segments, roi=roi, chosen=chosen)


def _unit(m: np.ndarray) -> np.ndarray:
    m = m - m.min()
    return m / max(float(m.max()), 1e-12)


class LimeRegularizer(Controller):
    """Attention regularisation inside the RoI (Sec. 4.2 Eq. 3; Eq. 4 with ``mode="related"``).

    ``roi`` is a boolean mask of any square size; it is resized (area average > 0.5) to each
    layer's resolution.  Applies to cross-attention layers with resolution >= `min_resolution`
    during steps [start, end) of `step_range` (None: every step; the official edit pass regularises
    its first 27 of 30 steps, see :func:`official_edit_window`).
    Eq. 3 suppresses :func:`unrelated_tokens` (start token, stop words, padding); Eq. 4 rewards
    :func:`relevant_tokens`.  ``branch`` (e.g. "target") restricts it to the rows of one edit
    branch of the published batch layout, in every guidance branch: LIME inside a dual-branch
    editor such as Prompt-to-Prompt (Sec. A.1), whose source branch must stay untouched; None
    regularises every row (InstructPix2Pix's three guidance branches)."""

    def __init__(self, roi: np.ndarray, tokenizer, instruction: str, mode: str = "unrelated",
                 min_resolution: int = 32, step_range: tuple[int, int] | None = None, branch: str | None = None):
        super().__init__()
        if mode not in ("unrelated", "related"):
            raise ValueError(f"mode must be 'unrelated' (the paper's choice) or 'related' (Eq. 4), got {mode!r}")
        roi = np.asarray(roi, bool)
        if roi.ndim != 2 or roi.shape[0] != roi.shape[1]:
            raise ValueError(f"the RoI must be a square (H, W) mask; got shape {roi.shape}")
        if not roi.any():
            raise ValueError("the RoI is empty: nothing would be edited")
        self.roi = torch.from_numpy(roi).float()[None, None]
        self.related, _ = relevant_tokens(tokenizer, instruction)
        self.unrelated = unrelated_tokens(tokenizer, instruction)
        self.mode, self.min_resolution, self.step_range, self.branch = mode, min_resolution, step_range, branch
        self._cache: dict[int, torch.Tensor] = {}
        self._biases: dict[tuple, torch.Tensor] = {}

    def active(self, site) -> bool:
        if site.kind != "cross" or site.resolution < self.min_resolution:
            return False
        if self.step_range is not None and not self.step_range[0] <= site.step < self.step_range[1]:
            return False
        return True

    def wants(self, site):
        """A logit bias (SDPA mask, no probabilities) where it regularises unrelated tokens; the
        probabilities where it rewards related ones; nothing elsewhere."""
        if not self.active(site):
            return NOTHING
        return _BIAS if self.mode == "unrelated" else _PROBS

    def roi_at(self, resolution: int) -> torch.Tensor:
        """The RoI at an attention resolution: the cells it covers more than half.  A RoI thinner
        than a cell (a 1-pixel line, a 2-pixel stripe) covers none of them, and the edit would be
        plain InstructPix2Pix without a word; it is dilated to the cells it touches instead, with a
        warning."""
        if resolution not in self._cache:
            r = F.adaptive_avg_pool2d(self.roi, resolution) if resolution <= self.roi.shape[-1] else \
                F.interpolate(self.roi, size=(resolution, resolution), mode="nearest")
            cells = r[0, 0] > 0.5
            if not cells.any():
                import warnings

                cells = r[0, 0] > 0
                warnings.warn(f"the RoI ({int(self.roi.sum())} pixels of {self.roi.shape[-1]}x{self.roi.shape[-1]}) covers "
                              f"no {resolution}x{resolution} attention cell by half; it was dilated to the {int(cells.sum())} "
                              "cell(s) it touches. Draw a thicker mask to choose the region yourself", stacklevel=2)
            self._cache[resolution] = cells.flatten()
        return self._cache[resolution]

    def branch_rows(self, site, batch: int) -> list[int]:
        """The batch rows of `branch` (every guidance branch) in the layout the loop published."""
        layout = site.layout
        if layout is None or layout.size != batch:
            raise ValueError(f"LIME on the {self.branch!r} branch needs the batch layout of a dual-branch loop "
                             "(editnb.editing.dual_branch publishes ('source', 'target')); none fits this batch "
                             f"of {batch}")
        return layout.rows(branch=self.branch)

    def logit_bias(self, site, batch_heads, queries, keys, dtype, device):
        if self.mode != "unrelated" or not self.active(site):
            return None
        cached = (site.resolution, queries, keys, dtype, str(device))
        if cached not in self._biases:  # the same at every step: built once per layer shape
            inside = self.roi_at(site.resolution).to(device)
            bias = torch.zeros(queries, keys, dtype=dtype, device=device)
            cols = torch.tensor([t for t in self.unrelated if t < keys], device=device)
            # the most negative float rather than -inf: identical after the softmax, no NaN risk
            bias[inside.nonzero()[:, 0][:, None], cols[None]] = torch.finfo(dtype).min
            self._biases[cached] = bias
        bias = self._biases[cached]
        if self.branch is None:
            return bias[None]
        batch = batch_heads // site.heads
        per_row = torch.zeros(batch, 1, queries, keys, dtype=dtype, device=device)  # (batch, heads=1, q, k)
        per_row[self.branch_rows(site, batch), 0] = bias
        return per_row

    def forward(self, probs, site):
        if self.mode != "related" or not self.active(site):
            return probs
        inside = self.roi_at(site.resolution).to(probs.device)
        uniform = torch.zeros(probs.shape[-1], dtype=probs.dtype, device=probs.device)
        uniform[[t for t in self.related if t < probs.shape[-1]]] = 1.0 / len(self.related)
        p = probs.clone().reshape(-1, site.heads, *probs.shape[1:])  # (batch, heads, q, k)
        rows = slice(None) if self.branch is None else self.branch_rows(site, p.shape[0])
        edited = p[rows]
        edited[:, :, inside] = uniform  # the limit of +inf on the related tokens (Eq. 4)
        p[rows] = edited
        return p.reshape(probs.shape)


def regularised_resolution(unet) -> int:
    """The lowest resolution LIME regularises: the upper half of the UNet's levels (SD1.5's 64/32/16/8
    -> 32, the official choice; toy-ip2p's 16/8 -> 16).  On toy-ip2p, regularising the 8x8 layers
    as well doubled the change outside the edit mask (12 recolour edits, s_T = 2)."""
    latent = latent_side(unet)
    levels = len(unet.config.block_out_channels)
    return latent // 2 ** (math.ceil(levels / 2) - 1)


def _edit_window(step_range, steps: int):
    """``"official"`` -> :func:`official_edit_window`; None (every step) and (start, end) as given,
    checked before any compute."""
    if isinstance(step_range, str):
        if step_range != "official":
            raise ValueError(f"step_range is 'official' (the first 27/30 of the steps), None (every step) or "
                             f"(start, end), got {step_range!r}")
        return official_edit_window(steps)
    if step_range is not None:
        start, end = step_range
        if not 0 <= start < end:
            raise ValueError(f"step_range (start, end) needs 0 <= start < end, got {tuple(step_range)}; "
                             f"the steps are 0 to {steps - 1}")
    return step_range


def _check_mask(mask, pipe) -> np.ndarray:
    from ..images import as_mask, model_resolution

    m = as_mask(mask)  # paths too; soft masks cut at 0.5
    res = model_resolution(pipe)
    if m.shape != (res, res):
        raise ValueError(f"the mask must be {res}x{res} (the model's resolution), got {m.shape}; "
                         "resize it with editnb.images.fit or nearest-neighbour")
    return m


def edit(pipe, image, instruction: str, mask=None, localisation: Localisation | None = None,
         n_clusters: int = 8, clustering: str = "kmeans", distance_threshold: float = 0.5, mode: str = "unrelated",
         text_guidance: float = 2.0, image_guidance: float = 1.5, steps: int = 20, step_range="official",
         min_resolution: int | None = None, generator=None, seed: int = 0,
         localisation_steps: int = LOCALISATION_STEPS, localisation_options: dict | None = None) -> diffusion.Result:
    """LIME: localise (or take a user `mask`, the "GT mask" rows of Table 4), then edit with the
    attention regularised inside the RoI.  The localisation pass runs a `localisation_steps`-step
    schedule (see LOCALISATION_STEPS; `localisation_options` go to :func:`localise`, e.g.
    ``feature_merge``, ``roi_resolutions``, ``feature_steps``, ``reading``), the edit `steps`,
    regularised in the official window (``step_range="official"``: the first 27 of 30 steps, scaled,
    see :func:`official_edit_window`), at every step (None) or in steps [start, end).  Returns a Result: ``image``,
    ``masks["roi"]`` (the RoI the regularisation used, at its own size) and
    ``found["localisation"]`` (the Localisation, or None with a user mask)."""
    diffusion.check_generator(generator)
    step_range = _edit_window(step_range, steps)
    if mask is not None:
        roi, loc = _check_mask(mask, pipe), None
        relevant_tokens(pipe.tokenizer, instruction)
    else:
        loc = localisation or localise(pipe, image, instruction, n_clusters=n_clusters, clustering=clustering,
                                       distance_threshold=distance_threshold, steps=localisation_steps,
                                       generator=torch.Generator(generator.device).manual_seed(seed)
                                       if generator is not None else None, seed=seed, **(localisation_options or {}))
        roi = loc.roi
    reg = LimeRegularizer(roi, pipe.tokenizer, instruction, mode=mode,
                          min_resolution=min_resolution or regularised_resolution(pipe.unet), step_range=step_range)
    with attach(pipe.unet, reg):
        out = diffusion.instruct_pix2pix(pipe, image, instruction, text_guidance=text_guidance,
                                         image_guidance=image_guidance, steps=steps, generator=generator)
    return diffusion.Result(out.images, out.latents, masks={"roi": np.asarray(roi, bool)},
                            found={"localisation": loc})


def prompt_to_prompt(pipe, source_prompt: str, target_prompt: str, roi, mode: str = "replace",
                     cross_replace: float = 0.8, self_replace: float = 0.4, equalizer: dict | None = None,
                     blend_words=None, guidance: float = 7.5, steps: int = 50, generator=None, image=None,
                     inversion: str = "direct", scheduler: str = "ddim", lime_mode: str = "unrelated",
                     min_resolution: int | None = None, step_range="official") -> diffusion.Result:
    """LIME's edit application inside Prompt-to-Prompt (Sec. A.1, Fig. 8): P2P's controller as in
    :func:`editnb.methods.p2p.prompt_to_prompt` (same arguments), plus :class:`LimeRegularizer` on
    the TARGET branch only, inside `roi` (a square boolean mask; LIME's localisation needs an
    instruction editor, so the RoI is given: a user mask, or a :func:`localise` RoI found with
    InstructPix2Pix).  The unrelated tokens are those of the target prompt.

    The two compose as the official code stacks them: LIME biases the logits, then P2P edits the
    probabilities.  So while P2P injects the source's cross-attention into the target (the first
    ``cross_replace`` of the steps; every token in a word swap, the shared words in a refinement),
    the injected maps are the source's, unregularised; LIME shapes the target's own maps after
    that window and the new words' maps throughout.  The source branch is never touched.
    `step_range` as in :func:`edit` (the official window by default).
    Returns P2P's Result (images [source, target]) with ``masks["roi"]``."""
    from . import p2p

    step_range = _edit_window(step_range, steps)
    roi = np.asarray(roi, bool)
    reg = LimeRegularizer(roi, pipe.tokenizer, target_prompt, mode=lime_mode,
                          min_resolution=min_resolution or regularised_resolution(pipe.unet), step_range=step_range,
                          branch="target")
    out = p2p.prompt_to_prompt(pipe, source_prompt, target_prompt, mode=mode, cross_replace=cross_replace,
                               self_replace=self_replace, equalizer=equalizer, blend_words=blend_words,
                               guidance=guidance, steps=steps, generator=generator, image=image,
                               inversion=inversion, scheduler=scheduler, before=reg)
    out.masks["roi"] = roi
    out.found["lime"] = reg
    return out


def _register():
    from .registry import register

    @register("lime", needs=("instruction",), models=("ip2p",))
    def run_lime(ctx, item, generator, steps):
        """InstructPix2Pix + LIME (KMeans 8 clusters, unrelated-token regularisation)."""
        return edit(ctx.model("ip2p"), item.image, item.instruction, steps=steps, generator=generator).image


_register()
