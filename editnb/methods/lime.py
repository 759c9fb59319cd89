"""LIME: Localized Image Editing via Attention Regularization (Simsar et al., WACV 2025).

LIME makes an instruction editor (InstructPix2Pix) edit only where it should, without training:

1. **Edit localisation** (Sec. 4.1). Run the editor once, collect the intermediate features of
   its UNet for the image-conditioned branch at several resolutions, upsample them to one size,
   concatenate, L2-normalise and cluster them (KMeans, 8 clusters by default; agglomerative
   clustering with a cosine distance threshold as the alternative of Sec. A.7.2): a segmentation.
   The **RoI** is the cluster that holds the highest cross-attention of the instruction's relevant
   tokens (start token, padding, stop words, punctuation and instruction verbs dropped).
2. **Edit application** (Sec. 4.2, Eq. 3). Edit again; in the cross-attention layers of the
   higher resolutions, for pixels inside the RoI, the logits of the unrelated tokens get the most
   negative float added (-inf in the paper), in all three guidance branches.  Outside the RoI the
   attention is untouched.  The ablation of Sec. A.7.1 (Eq. 4) rewards the related tokens
   instead (+inf: inside the RoI, attention becomes uniform over them).

Defaults are the official code's: localisation pass s_T = 5.5, s_I = 1.5; edit pass s_T = 2,
s_I = 1.5; features of the 8x8, 16x16 and 32x32 layers of SD's 64x64 latents (a small model
without those levels uses all of its levels); regularisation in the cross-attention layers of the
upper half of the UNet's levels (32x32 and 64x64 in SD; 16x16 in toy-ip2p).
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
from ..attention.controller import BIAS, IP2P, NOTHING, OUTPUT, PROBS, layout_of
from ..attention.words import word_tokens
from ..clustering import kmeans
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
# steps, not many of them.  This keeps LIME near 1.25x the edit pass plus KMeans.
LOCALISATION_STEPS = 5
INSTRUCTION_VERBS = frozenset("""make turn change add remove put paint replace move let have give place set
convert transform swap delete erase insert color colour recolor recolour draw show become get take keep""".split())


def relevant_tokens(tokenizer, instruction: str) -> tuple[list[int], list[str]]:
    """Token positions (and words) of the instruction that LIME keeps: everything but the start
    token, padding, stop words, punctuation and instruction verbs."""
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


@dataclass
class Localisation:
    """The outcome of LIME's first pass."""

    segments: np.ndarray            # (S, S) cluster id per pixel of the feature map
    attention: np.ndarray           # (S, S) cross-attention of the relevant tokens, in [0, 1]
    token_maps: dict                # {word: (S, S) map}
    roi: np.ndarray                 # (S, S) bool: the chosen cluster(s)
    chosen: list                    # chosen cluster ids
    relevant_words: list
    first_pass: object = None       # the first pass's edited image, when it ran to the end (plain IP2P, s_T = 5.5)
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
    """Records cross-attention (text branch) and self-attention OUTPUTS (image branch) during the
    first `steps` denoising steps; asks for nothing else."""

    guess = IP2P  # without a published layout: InstructPix2Pix's [text+image, image only, none]

    def __init__(self, resolutions, steps: int):
        super().__init__(kinds=("cross",), device=None)  # maps stay on the device until aggregated
        self.resolutions, self.feature_steps = set(resolutions), steps
        self.features: dict[int, list[torch.Tensor]] = {}

    def wants(self, site):
        if site.step >= self.feature_steps:
            return NOTHING
        if site.kind == "cross":
            return _PROBS
        return _OUTPUT if site.resolution in self.resolutions else NOTHING

    def observe_output(self, out, site):
        if site.kind == "self" and site.resolution in self.resolutions:
            image = layout_of(site, out.shape[0], IP2P).rows(guidance="image")
            self.features.setdefault(site.resolution, []).append(out[image].mean(0).detach().float())


_PROBS, _BIAS, _OUTPUT = frozenset({PROBS}), frozenset({BIAS}), frozenset({OUTPUT})


class _Stop(Exception):
    """Ends the localisation pass once the steps its features use are done."""


def _default_resolutions(unet) -> list[int]:
    latent = int(unet.config.sample_size)
    levels = [latent // 2 ** k for k in range(len(unet.config.block_out_channels))]
    official = [r for r in (latent // 8, latent // 4, latent // 2) if r in levels]
    return official if len(official) >= 2 else levels


def cluster(features, n_clusters: int = 8, method: str = "kmeans", distance_threshold: float = 0.5,
            seed: int = 0) -> np.ndarray:
    """Cluster (N, C) L2-normalised features (array or tensor): KMeans with `n_clusters` (in torch on
    the features' device: :func:`editnb.clustering.kmeans`), or agglomerative clustering with cosine
    distance and a threshold in (0, 1) instead of a cluster count (Sec. A.7.2; higher threshold, more
    clusters)."""
    if method == "kmeans":
        x = torch.as_tensor(features)
        n_clusters = check_n_clusters(n_clusters, len(x))
        return kmeans(x, n_clusters, n_init=3, seed=seed).cpu().numpy()
    features = features.cpu().numpy() if torch.is_tensor(features) else features
    if method == "agglomerative":
        from sklearn.cluster import AgglomerativeClustering

        if not 0.0 < distance_threshold < 1.0:
            raise ValueError(f"the threshold is in (0, 1), got {distance_threshold}")
        # The paper's threshold grows with the number of clusters ("the higher the threshold, the
        # more clusters"), so it bounds cosine SIMILARITY: clusters merge while their distance
        # (1 - similarity) stays under 1 - threshold.
        return AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                       distance_threshold=1.0 - distance_threshold).fit_predict(features)
    raise ValueError(f"clustering method must be 'kmeans' or 'agglomerative', got {method!r}")


def localise(pipe, image, instruction: str, n_clusters: int = 8, clustering: str = "kmeans",
             distance_threshold: float = 0.5, resolutions=None, size: int | None = None, steps: int = 20,
             text_guidance: float = 5.5, image_guidance: float = 1.5, generator=None, top_clusters: int = 1,
             seed: int = 0, feature_steps: int | None = None) -> Localisation:
    """LIME's edit localisation (Sec. 4.1): segmentation by clustering multi-resolution features,
    RoI = the cluster(s) holding the highest attention of the relevant tokens.

    Features and cross-attention are averaged over the steps of a `steps`-step schedule, or over
    its first `feature_steps` only, where the pass then stops (as the official code records in an
    early step range; ``first_pass``, the finished image, is then None)."""
    tokens, words = relevant_tokens(pipe.tokenizer, instruction)
    resolutions = sorted(resolutions or _default_resolutions(pipe.unet))
    size = size or 2 * int(pipe.unet.config.sample_size)  # 128 for SD's 64x64 latents, as the official code
    feature_steps = steps if feature_steps is None else min(steps, feature_steps)
    if feature_steps < 1:
        raise ValueError(f"feature_steps is a number of denoising steps >= 1, got {feature_steps}")
    collector = _FeatureCollector(resolutions, feature_steps)

    def stop(i, t, latents):
        if i + 1 >= feature_steps < steps:
            raise _Stop

    first = None
    with attach(pipe.unet, collector):
        try:
            first = diffusion.instruct_pix2pix(pipe, image, instruction, text_guidance=text_guidance,
                                               image_guidance=image_guidance, steps=steps, generator=generator,
                                               on_step=stop).image
        except _Stop:
            pass
    per_res = []
    for r in resolutions:
        if r not in collector.features:
            raise ValueError(f"the UNet has no self-attention at {r}x{r}; it has {sorted(collector.features)}")
        f = torch.stack(collector.features[r]).mean(0)  # mean over layers and steps: (r*r, C)
        f = f.T.reshape(1, -1, r, r)
        per_res.append(F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False)[0])
    feats = F.normalize(torch.cat(per_res, 0), dim=0)  # L2 over the concatenated channels
    flat = feats.reshape(feats.shape[0], -1).T
    how = dict(n_clusters=n_clusters, method=clustering, distance_threshold=distance_threshold, seed=seed)
    segments = cluster(flat, **how).reshape(size, size)
    flat = flat.cpu().numpy()
    bounds = np.cumsum([0] + [f.shape[0] for f in per_res])
    channels = {r: (int(a), int(b)) for r, a, b in zip(resolutions, bounds[:-1], bounds[1:])}

    token_maps, total = {}, None
    for res in sorted({s.resolution for s in collector.sites.values()}):
        agg = collector.aggregate("cross", resolution=res)[0].float().cpu()  # (res, res, keys), text branch
        up = F.interpolate(agg.permute(2, 0, 1)[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        total = up if total is None else total + up
    for w, pos in word_tokens(pipe.tokenizer, instruction):
        if w in words:
            token_maps[w] = _unit(total[pos].mean(0).numpy())
    attention = _unit(total[tokens].mean(0).numpy())
    roi, chosen = _choose_roi(segments, attention, top_clusters)
    return Localisation(segments, attention, token_maps, roi, chosen, words, first, flat, channels, how)


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
    during steps [start, end)."""

    def __init__(self, roi: np.ndarray, tokenizer, instruction: str, mode: str = "unrelated",
                 min_resolution: int = 32, step_range: tuple[int, int] | None = None):
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
        L = tokenizer.model_max_length
        self.unrelated = [t for t in range(L) if t not in self.related]
        self.mode, self.min_resolution, self.step_range = mode, min_resolution, step_range
        self._cache: dict[int, torch.Tensor] = {}

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
        if resolution not in self._cache:
            r = F.adaptive_avg_pool2d(self.roi, resolution) if resolution <= self.roi.shape[-1] else \
                F.interpolate(self.roi, size=(resolution, resolution), mode="nearest")
            self._cache[resolution] = (r[0, 0] > 0.5).flatten()
        return self._cache[resolution]

    def logit_bias(self, site, batch_heads, queries, keys, dtype, device):
        if self.mode != "unrelated" or not self.active(site):
            return None
        inside = self.roi_at(site.resolution).to(device)
        bias = torch.zeros(queries, keys, dtype=dtype, device=device)
        cols = torch.tensor([t for t in self.unrelated if t < keys], device=device)
        # the most negative float rather than -inf: identical after the softmax, no NaN risk
        bias[inside.nonzero()[:, 0][:, None], cols[None]] = torch.finfo(dtype).min
        return bias[None]

    def forward(self, probs, site):
        if self.mode != "related" or not self.active(site):
            return probs
        inside = self.roi_at(site.resolution).to(probs.device)
        uniform = torch.zeros(probs.shape[-1], dtype=probs.dtype, device=probs.device)
        uniform[[t for t in self.related if t < probs.shape[-1]]] = 1.0 / len(self.related)
        probs = probs.clone()
        probs[:, inside] = uniform  # the limit of +inf on the related tokens (Eq. 4)
        return probs


def regularised_resolution(unet) -> int:
    """The lowest resolution LIME regularises: the upper half of the UNet's levels (SD1.5's 64/32/16/8
    -> 32, the official choice; toy-ip2p's 16/8 -> 16).  On toy-ip2p, regularising the 8x8 layers
    as well doubled the change outside the edit mask (12 recolour edits, s_T = 2)."""
    latent = int(unet.config.sample_size)
    levels = len(unet.config.block_out_channels)
    return latent // 2 ** (math.ceil(levels / 2) - 1)


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
         text_guidance: float = 2.0, image_guidance: float = 1.5, steps: int = 20, step_range=None,
         min_resolution: int | None = None, generator=None, seed: int = 0,
         localisation_steps: int = LOCALISATION_STEPS) -> diffusion.Result:
    """LIME: localise (or take a user `mask`, the "GT mask" rows of Table 4), then edit with the
    attention regularised inside the RoI.  The localisation pass runs a `localisation_steps`-step
    schedule (see LOCALISATION_STEPS), the edit `steps`.  Returns a Result: ``image``,
    ``masks["roi"]`` (the RoI the regularisation used, at its own size) and
    ``found["localisation"]`` (the Localisation, or None with a user mask)."""
    diffusion.check_generator(generator)
    if mask is not None:
        roi, loc = _check_mask(mask, pipe), None
        relevant_tokens(pipe.tokenizer, instruction)
    else:
        loc = localisation or localise(pipe, image, instruction, n_clusters=n_clusters, clustering=clustering,
                                       distance_threshold=distance_threshold, steps=localisation_steps,
                                       generator=torch.Generator(generator.device).manual_seed(seed)
                                       if generator is not None else None, seed=seed)
        roi = loc.roi
    reg = LimeRegularizer(roi, pipe.tokenizer, instruction, mode=mode,
                          min_resolution=min_resolution or regularised_resolution(pipe.unet), step_range=step_range)
    with attach(pipe.unet, reg):
        out = diffusion.instruct_pix2pix(pipe, image, instruction, text_guidance=text_guidance,
                                         image_guidance=image_guidance, steps=steps, generator=generator)
    return diffusion.Result(out.images, out.latents, masks={"roi": np.asarray(roi, bool)},
                            found={"localisation": loc})


def _register():
    from .registry import register

    @register("lime", needs=("instruction",), models=("ip2p",))
    def run_lime(ctx, item, generator, steps):
        """InstructPix2Pix + LIME (KMeans 8 clusters, unrelated-token regularisation)."""
        return edit(ctx.model("ip2p"), item.image, item.instruction, steps=steps, generator=generator).image


_register()
