"""Prompt-to-Prompt (Hertz et al., ICLR 2023) as attention controllers.

The batch holds one source prompt and one or more target prompts, denoised from the same noise;
under classifier-free guidance the UNet sees ``[uncond x B, cond x B]`` and the edits touch only
the conditional half (as the official code does).

- word swap (``mode="replace"``): the target's cross-attention maps are the source's, routed
  through a word alignment (a swapped word takes its counterpart's map);
- refinement (``mode="refine"``): prompts of different length; tokens present in both take the
  source map, new tokens keep their own;
- reweighting: scale the target's cross-attention of chosen words (``equalizer``);
- self-attention replacement for the first ``self_replace`` fraction of steps;
- local blend: a mask from the cross-attention of the blend words, accumulated over the steps
  so far (P2P defaults: maps at a quarter of the latent resolution, 3x3 max-pool, threshold 0.3)
  keeps the latent outside it equal to the source branch.
"""
from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F

from ..images import latent_hw
from .controller import NOTHING, PROBS, Controller, layout_of
from .words import token_indices, word_tokens

_PROBS = frozenset({PROBS})


def replacement_mapper(tokenizer, source: str, target: str) -> torch.Tensor:
    """(L, L) matrix M with target_map = source_map @ M for a word swap (same number of words)."""
    L = tokenizer.model_max_length
    src, tgt = word_tokens(tokenizer, source), word_tokens(tokenizer, target)
    if len(src) != len(tgt):
        raise ValueError(f"word swap needs prompts with the same number of words ({len(src)} vs {len(tgt)}): "
                         f"{source!r} -> {target!r}; use mode='refine' for prompts of different length")
    M = torch.zeros(L, L)
    M[0, 0] = 1.0
    for (_, s_pos), (_, t_pos) in zip(src, tgt):
        for s in s_pos:
            for t in t_pos:
                M[s, t] = 1.0 / len(s_pos)
    end_s, end_t = src[-1][1][-1] + 1, tgt[-1][1][-1] + 1
    for k in range(L - max(end_s, end_t)):  # end token and padding keep their own order
        M[end_s + k, end_t + k] = 1.0
    return M


def refinement_mapper(tokenizer, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, alpha): target token j takes source token index[j] where alpha[j] = 1 (shared
    words, aligned with difflib), and keeps its own map where alpha[j] = 0 (new words)."""
    L = tokenizer.model_max_length
    src = [w for w, pos in word_tokens(tokenizer, source) for _ in pos]
    tgt = [w for w, pos in word_tokens(tokenizer, target) for _ in pos]
    index = torch.arange(L)
    alpha = torch.ones(L)
    alpha[1:len(tgt) + 1] = 0.0
    for block in difflib.SequenceMatcher(a=src, b=tgt, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            index[block.b + k + 1] = block.a + k + 1
            alpha[block.b + k + 1] = 1.0
    # the end token and padding of the target take the source's end token and padding
    for j in range(len(tgt) + 1, L):
        index[j] = min(L - 1, j - len(tgt) + len(src))
        alpha[j] = 1.0
    return index, alpha


class PromptToPrompt(Controller):
    """The P2P controller for prompts ``[source, target_1, ...]``.

    Parameters follow the paper: ``cross_replace`` and ``self_replace`` are fractions of the
    denoising steps during which the target takes the source's cross / self attention;
    ``equalizer`` maps target words to attention weights (reweighting); ``blend_words`` =
    (source words, target words) switches on local blend from step ``blend_start * steps``.
    """

    def __init__(self, tokenizer, prompts: list[str], steps: int, mode: str = "replace",
                 cross_replace: float = 0.8, self_replace: float = 0.4, equalizer: dict | None = None,
                 blend_words=None, blend_threshold: float = 0.3, blend_start: float = 0.2,
                 self_max_resolution: int | None = None, blend_resolution: int | None = None):
        super().__init__()
        if len(prompts) < 2:
            raise ValueError("Prompt-to-Prompt needs a source prompt and at least one target prompt")
        if mode not in ("replace", "refine", "none"):
            raise ValueError(f"mode must be 'replace', 'refine' or 'none', got {mode!r}")
        for name, frac in (("cross_replace", cross_replace), ("self_replace", self_replace)):
            if not 0.0 <= frac <= 1.0:
                raise ValueError(f"{name} is a fraction of the steps in [0, 1], got {frac}")
        self.prompts, self.n_steps, self.mode = list(prompts), steps, mode
        self.cross_steps = int(round(cross_replace * steps))
        self.self_steps = int(round(self_replace * steps))
        self.self_max_resolution = self_max_resolution
        if mode == "replace":
            self.mappers = torch.stack([replacement_mapper(tokenizer, prompts[0], p) for p in prompts[1:]])
        elif mode == "refine":
            pairs = [refinement_mapper(tokenizer, prompts[0], p) for p in prompts[1:]]
            self.index = torch.stack([i for i, _ in pairs])
            self.alpha = torch.stack([a for _, a in pairs])
        self.equalizer = None
        if equalizer:
            eq = torch.ones(len(prompts) - 1, tokenizer.model_max_length)
            for word, weight in equalizer.items():
                for j, p in enumerate(prompts[1:]):
                    eq[j, token_indices(tokenizer, p, word)] = float(weight)
            self.equalizer = eq
        self.blend = None
        if blend_words is not None:
            src_words, tgt_words = blend_words
            src_words = [src_words] if isinstance(src_words, str) else list(src_words)
            tgt_words = [tgt_words] if isinstance(tgt_words, str) else list(tgt_words)
            alpha = torch.zeros(len(prompts), tokenizer.model_max_length)
            for w in src_words:
                if w:
                    alpha[0, token_indices(tokenizer, prompts[0], w)] = 1.0
            for j, p in enumerate(prompts[1:], start=1):
                for w in tgt_words:
                    if w:
                        alpha[j, token_indices(tokenizer, p, w)] = 1.0
            if alpha.sum() == 0:
                raise ValueError(f"local blend needs at least one blend word; got {blend_words}")
            self.blend = alpha
        self.blend_threshold, self.blend_start = blend_threshold, int(round(blend_start * steps))
        self.blend_resolution = blend_resolution
        self._blend_maps: list[torch.Tensor] = []
        self._blend_sum: torch.Tensor | None = None
        self.last_mask: torch.Tensor | None = None
        # the accumulated blend-word attention that last_mask thresholds (scaled to its maximum, the
        # union of source and target as the mask is), to show where the threshold cuts
        self.last_map: torch.Tensor | None = None

    # -- attention
    def wants(self, site):
        """Probabilities only where P2P reads or changes them: cross-attention while it replaces
        or reweights maps and at the local-blend resolution; self-attention while it replaces
        them, up to half the latent resolution.  Elsewhere the layer runs its own SDPA."""
        if site.kind == "cross":
            editing = (self.step < self.cross_steps and self.mode != "none") or self.equalizer is not None
            blending = self.blend is not None and site.resolution == self._blend_res
            return _PROBS if editing or blending else NOTHING
        return _PROBS if self.step < self.self_steps and site.resolution <= self._self_max() else NOTHING

    def _self_max(self) -> int:
        return self.self_max_resolution or self._latent_resolution // 2

    def _cond_rows(self, p, site) -> list[int]:
        rows = layout_of(site, p.shape[0]).cond_rows()
        if len(rows) != len(self.prompts):
            raise ValueError(f"P2P expects a guided batch of {2 * len(self.prompts)} (uncond + cond for "
                             f"{len(self.prompts)} prompts), got {p.shape[0]}")
        return rows

    def forward(self, probs, site):
        p = probs.reshape(-1, site.heads, *probs.shape[1:])
        rows = self._cond_rows(p, site)
        base, targets = p[rows[0]], p[rows[1:]]
        if site.kind == "cross":
            if self.blend is not None:
                self._record_blend(p[rows], site)
            new = targets
            if self.step < self.cross_steps and self.mode == "replace":
                new = torch.einsum("hqw,bwn->bhqn", base, self.mappers.to(base))
            elif self.step < self.cross_steps and self.mode == "refine":
                mapped = base[:, :, self.index.to(base.device)].permute(2, 0, 1, 3)  # (b, h, q, n)
                a = self.alpha.to(base)[:, None, None, :]
                new = mapped * a + targets * (1 - a)
            if self.equalizer is not None:
                new = new * self.equalizer.to(base)[:, None, None, :]
            if new is not targets:
                p = p.clone()
                p[rows[1:]] = new
        elif self.step < self.self_steps and site.resolution <= self._self_max():
            p = p.clone()
            p[rows[1:]] = base.expand_as(targets)
        return p.reshape(probs.shape)

    # -- local blend
    _latent_resolution = 64
    _blend_res = 16
    _blend_hw = (16, 16)

    def configure(self, unet) -> "PromptToPrompt":
        """Read the latent resolution and the attention resolutions from the UNet: P2P blends
        with maps at a quarter of the latent resolution (16x16 for SD's 64x64 latents); a small
        model without that level uses its nearest level."""
        self._latent_resolution = latent_hw(unet)[0]
        levels = [self._latent_resolution // 2 ** k for k in range(len(unet.config.block_out_channels))]
        self._blend_res = blend_level(levels, self._latent_resolution, self.blend_resolution)
        return self

    def _record_blend(self, cond_maps, site):
        if site.resolution == self._blend_res:
            self._blend_maps.append(cond_maps.mean(1).float())  # (B, q, keys), head-averaged
            self._blend_hw = site.hw

    def reset(self):
        super().reset()
        self._blend_maps, self._blend_sum, self.last_mask, self.last_map = [], None, None, None

    def local_blend(self, i, t, latents):
        """``on_step`` hook: x_t <- x_src + mask * (x_t - x_src) for each target (P2P LocalBlend)."""
        if self.blend is None:
            return None
        maps, self._blend_maps = self._blend_maps, []
        if maps:  # accumulate over the steps so far, as P2P's LocalBlend reads its attention store
            step_mean = torch.stack(maps).mean(0)
            self._blend_sum = step_mean if self._blend_sum is None else self._blend_sum + step_mean
        if i < self.blend_start or self._blend_sum is None:
            return None
        m = self._blend_sum  # (B, q, keys)
        m = (m * self.blend.to(m)[:, None, :]).sum(-1).reshape(-1, 1, *self._blend_hw)
        m = F.max_pool2d(m, 3, stride=1, padding=1)
        m = F.interpolate(m, size=latents.shape[-2:], mode="bilinear", align_corners=False)
        m = m / m.flatten(1).max(1).values.clamp_min(1e-8)[:, None, None, None]
        mask = (m > self.blend_threshold).to(latents.dtype)
        mask = ((mask[:1] + mask) > 0).to(latents.dtype)  # union with the source words' region
        self.last_mask = mask[1:].detach().cpu()
        self.last_map = torch.maximum(m[:1], m[1:]).detach().float().cpu()  # last_mask = last_map > threshold
        return torch.cat([latents[:1], latents[:1] + mask[1:] * (latents[1:] - latents[:1])])


def blend_level(levels, latent_side: int, want: int | None = None) -> int:
    """The attention level where word maps are grounded: P2P's local-blend level, a quarter of the
    latent side (SD 1.5: 16 of 64; toy-sd: 8 of 16), or `want`; the nearest level (the smaller on a
    tie) when the model has no such level."""
    want = want or max(latent_side // 4, 1)
    return min(levels, key=lambda r: (abs(r - want), r))
