"""Editing-area grounding of ViMAEdit (Sec. 4.3, Eq. 9-10) and the two derivatives of its Table 2.

Each denoising step, for each branch (source, target):

- the blend word's cross-attention, averaged over the layers (and heads) of the COARSER grounding
  resolution P1 (16x16 in SD 1.5), upsampled to the finer resolution P2: the initial saliency s_0;
- the self-attention of the FINER resolution P2 (32x32 in SD 1.5), averaged over layers and heads:
  the inter-patch relation matrix Q (rows: queries, so ``(Q s)_p`` is the saliency of the patches
  that patch p attends to, weighted by its attention);
- ``s_i = g s_{i-1} + (1 - g) Q s_{i-1}``, i = 1..N (Eq. 9; g = 0.5, N = 5).

The refined saliencies are accumulated over the steps from ``start`` (0.2 T), as the official code
accumulates them; the accumulated map of each branch is upsampled to the latent, min-max
normalised, and the branches combined by ``s = max(s_src, s_tgt)`` (Eq. 10).  The editing mask is
``s > delta`` (0.5) and the critical region of the adaptive variance (Sec. 4.4) ``s > delta'`` (0.8).

The derivatives replace Eq. 9: ``"cross-attention"`` keeps s_0 (P2P's grounding);
``"dpl"`` clusters the patches by their self-attention rows (KMeans, :mod:`editnb.clustering`) and
gives each patch the mean s_0 of its cluster (DPL as the ViMAEdit paper describes it).  Neither paper
gives the cluster count; 5 is the course's choice: a ToyWorld scene has at most four regions (three
objects and the background), and one more cluster lets the edited object's rim split off.

Layers: every layer of P1 (cross) and of P2 (self) is averaged.  The official runner slices its
attention store (``down_cross_text[4:6]``, ``up_cross_text[:3]``, ``down_self[2:4]``,
``up_self[3:6]``); on SD 1.5 those slices are exactly the 16x16 cross-attention layers and the 32x32
self-attention layers (2 down, 3 up each), so the choice is the same, not a departure.

P1 and P2 come from the model: P1 is the attention level nearest a quarter of the latent side
(P2P's blend resolution), P2 the next finer attention level (a model with one level uses it for
both); the recorder checks that the UNet really has attention there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...attention.p2p import blend_level
from ...attention import AttentionStore
from ...attention.words import token_indices
from ...clustering import kmeans
from ...images import latent_side

MODES = ("iterative", "cross-attention", "dpl")


# ------------------------------------------------------------------ the formulas


def refine(s0: torch.Tensor, Q: torch.Tensor, gamma: float = 0.5, rounds: int = 5) -> list[torch.Tensor]:
    """Eq. 9 for ``rounds`` rounds: ``[s_1, ..., s_N]`` from s_0 (..., P) and Q (..., P, P)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma (the weight of the previous saliency in Eq. 9) is in [0, 1], got {gamma}")
    if not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds (N of Eq. 9) is a non-negative integer, got {rounds!r}")
    if Q.shape[-1] != Q.shape[-2] or Q.shape[-1] != s0.shape[-1]:
        raise ValueError(f"Q must be (P, P) for a saliency of P patches; got Q {tuple(Q.shape)}, s_0 {tuple(s0.shape)}")
    out, s = [], s0
    for _ in range(rounds):
        s = gamma * s + (1 - gamma) * (Q @ s.unsqueeze(-1)).squeeze(-1)
        out.append(s)
    return out


def attention_uniformity(Q: torch.Tensor) -> float:
    """The mean entropy of Q's rows as a fraction of the uniform row's, log P: 1 when every patch
    attends to all patches alike (then Eq. 9 only pulls the saliency toward its mean), lower the
    more Q follows objects.  Q (..., P, P), rows summing to one."""
    entropy = -(Q.clamp_min(1e-12).log() * Q).sum(-1).mean()
    return float(entropy / torch.log(torch.tensor(float(Q.shape[-1]))))


def cluster_saliency(s0: torch.Tensor, Q: torch.Tensor, clusters: int = 5, seed: int = 0) -> torch.Tensor:
    """DPL-style grounding: KMeans of the patches on their self-attention rows (Q's rows), each
    patch taking the mean initial saliency of its cluster.  s0 (B, P), Q (B, P, P) -> (B, P)."""
    out = torch.empty_like(s0)
    for b in range(s0.shape[0]):
        labels = kmeans(Q[b], min(clusters, Q.shape[-1]), seed=seed).to(s0.device)
        sums = torch.zeros(int(labels.max()) + 1, device=s0.device, dtype=s0.dtype).index_add_(0, labels, s0[b])
        counts = torch.bincount(labels).to(s0.dtype)
        out[b] = (sums / counts.clamp_min(1))[labels]
    return out


def minmax(s: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation over the last two dims (a constant map becomes zeros)."""
    lo = s.amin(dim=(-2, -1), keepdim=True)
    hi = s.amax(dim=(-2, -1), keepdim=True)
    return (s - lo) / (hi - lo).clamp_min(1e-12)


def attention_levels(unet) -> list[int]:
    """The sides of the attention maps of `unet`, finest first (SD 1.5: 64, 32, 16, 8)."""
    c = unet.config
    side = latent_side(unet)
    levels = {side // 2 ** k for k, kind in enumerate(c.down_block_types) if "Attn" in kind}
    if "Attn" in str(getattr(c, "mid_block_type", None) or ""):
        levels.add(side // 2 ** (len(c.down_block_types) - 1))
    if not levels:
        raise ValueError("this UNet has no attention layers; ViMAEdit grounds edits with attention maps")
    return sorted(levels, reverse=True)


def grounding_resolutions(unet) -> tuple[int, int]:
    """(P1, P2): the cross-attention level (nearest a quarter of the latent side, as P2P's local
    blend) and the next finer attention level for the self-attention (SD 1.5: 16 and 32)."""
    levels = attention_levels(unet)
    coarse = blend_level(levels, latent_side(unet))
    finer = [r for r in levels if r > coarse]
    return coarse, (min(finer) if finer else coarse)


def blend_alpha(tokenizer, prompts, blend_words) -> torch.Tensor:
    """(2, tokens) weights selecting each prompt's blend word tokens (zeros where a prompt lacks its word)."""
    alpha = torch.zeros(len(prompts), tokenizer.model_max_length)
    for row, (prompt, words) in enumerate(zip(prompts, blend_words)):
        for w in ([words] if isinstance(words, str) else list(words or [])):
            if w:
                alpha[row, token_indices(tokenizer, prompt, w)] = 1.0
    return alpha


# ------------------------------------------------------------------ recording one step's maps


class StepAttention(AttentionStore):
    """The maps grounding reads, for the current step only (memory: no per-step store): the
    blend words' cross-attention at P1 and the self-attention at P2, head-averaged, summed over
    layers, for the conditional rows (source, target).  Records nothing before ``start``."""

    def __init__(self, alpha: torch.Tensor, coarse: int, fine: int, start: int):
        super().__init__(kinds=("cross", "self"), max_self_resolution=None, device=None,
                         where=lambda site: site.step >= start and site.resolution == (
                             coarse if site.kind == "cross" else fine))
        self.alpha, self.coarse, self.fine, self.start = alpha, coarse, fine, start
        self._fresh()

    def _fresh(self, step: int = -1):
        self.recorded_step, self.cross, self.self_attn, self.n_cross, self.n_self = step, None, None, 0, 0

    def forward(self, probs, site):
        if not self.records(site):
            return probs
        if site.step != self.recorded_step:
            self._fresh(site.step)
        site.square_side("ViMAEdit's grounding (Eq. 9-10 on P1 x P1 and P2 x P2 maps)")
        p = self.rows(probs.detach().reshape(-1, site.heads, *probs.shape[1:]), site).float().mean(1)
        if site.kind == "cross":
            word = p @ self.alpha.to(p)[: p.shape[0]].unsqueeze(-1)  # (B, q, 1): the blend words' attention
            self.cross = word.squeeze(-1) if self.cross is None else self.cross + word.squeeze(-1)
            self.n_cross += 1
        else:
            self.self_attn = p if self.self_attn is None else self.self_attn + p
            self.n_self += 1
        return probs

    def reset(self):
        super().reset()
        self._fresh()

    def step_maps(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cross (B, P1*P1), self (B, P2*P2, P2*P2)) of `step`, layer means; None if not recorded."""
        if self.recorded_step != step:
            return None
        if not self.n_cross or not self.n_self:
            missing = f"cross-attention at {self.coarse}x{self.coarse}" if not self.n_cross else \
                f"self-attention at {self.fine}x{self.fine}"
            raise ValueError(f"no {missing} was recorded in step {step}; the UNet's attention levels do not "
                             "match what grounding_resolutions() read from its config")
        return self.cross / self.n_cross, self.self_attn / self.n_self


# ------------------------------------------------------------------ grounding over the steps


@dataclass
class GroundingStep:
    """What one step's grounding computed (kept when ``keep_history``): for each branch the initial
    saliency s_0 and the rounds s_1..s_N at P2 (2, P2, P2), and the step's combined, normalised
    saliency s (Eq. 10), mask and critical region at the latent resolution."""

    step: int
    initial: torch.Tensor
    rounds: list[torch.Tensor]
    saliency: torch.Tensor
    mask: torch.Tensor
    critical: torch.Tensor


@dataclass
class Grounding:
    """Computes ViMAEdit's editing mask and critical region step by step from a :class:`StepAttention`.

    ``update(i, size)`` (idempotent within a step) reads step i's maps, refines them (``mode``),
    accumulates them and sets :attr:`mask` (s > delta) and :attr:`critical` (s > delta'), both
    (1, 1, h, w) at the latent resolution ``size``, or None before the start step."""

    recorder: StepAttention
    mode: str = "iterative"
    gamma: float = 0.5
    rounds: int = 5
    delta: float = 0.5
    delta_critical: float = 0.8
    clusters: int = 5
    keep_history: bool = False
    history: list[GroundingStep] = field(default_factory=list)
    accumulated: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    critical: torch.Tensor | None = None
    _updated: int = -1

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"grounding must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.delta <= self.delta_critical <= 1.0:
            raise ValueError(f"thresholds need 0 <= delta <= delta' <= 1 (the paper: 0.5 and 0.8), "
                             f"got {self.delta} and {self.delta_critical}")

    def saliency_step(self, cross: torch.Tensor, Q: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One step's grounding: s_0 (B, P2*P2) from the P1 cross-attention, and the refined maps."""
        p1, p2 = self.recorder.coarse, self.recorder.fine
        s0 = F.interpolate(cross.reshape(-1, 1, p1, p1), size=(p2, p2), mode="nearest").flatten(1)
        if self.mode == "iterative":
            return s0, refine(s0, Q, self.gamma, self.rounds)
        if self.mode == "dpl":
            return s0, [cluster_saliency(s0, Q, self.clusters)]
        return s0, []

    def update(self, i: int, size: tuple[int, int]) -> None:
        if i == self._updated:
            return
        self._updated = i
        maps = self.recorder.step_maps(i)
        if maps is None:
            return
        s0, rounds = self.saliency_step(*maps)
        final = rounds[-1] if rounds else s0
        self.accumulated = final if self.accumulated is None else self.accumulated + final
        p2 = self.recorder.fine
        side = self.accumulated.reshape(-1, 1, p2, p2)
        per_branch = minmax(F.interpolate(side, size=tuple(size), mode="nearest"))
        present = self.recorder.alpha[: per_branch.shape[0]].sum(-1) > 0  # a branch without its word adds nothing
        s = per_branch[present.to(per_branch.device)].amax(0, keepdim=True)  # Eq. 10
        self.mask, self.critical = (s > self.delta).float(), (s > self.delta_critical).float()
        if self.keep_history:
            grid = lambda t: t.reshape(-1, p2, p2).cpu()  # noqa: E731
            self.history.append(GroundingStep(i, grid(s0), [grid(r) for r in rounds], s[0, 0].cpu(),
                                              self.mask[0, 0].bool().cpu(), self.critical[0, 0].bool().cpu()))

    # the editor's hooks (editnb.editing.dual_branch)
    def blend(self, i, t, latents):
        """Eq. 6: the target keeps its own latent inside the mask, the source's outside."""
        self.update(i, latents.shape[-2:])
        return self.mask

    def adaptive_noise(self, i, t, latents):
        """Eq. 11: sampling variance sigma_t inside the critical region, 0 elsewhere."""
        self.update(i, latents.shape[-2:])
        return self.critical
