"""KMeans in torch, on the device the features are on.

LIME clusters every pixel's features (at SD 1.5's sizes 4096 pixels x 3200 channels); scikit-learn
on the CPU then costs more than the whole edit on a GPU (measured: LIME 5.5x InstructPix2Pix on an
H100 with sklearn's KMeans).  This is the same algorithm as sklearn's default: k-means++ seeding,
Lloyd iterations, the best of `n_init` runs by inertia; seeded, so the same input gives the same
labels on the same device.

What makes it fast (the labels are those of the plain loop, ``torch.cdist(x, centres).argmin(1)``
and ``index_add_`` of the rows: :func:`kmeans_reference`, compared in the tests): the points' half
of the distance expansion ||x||^2 - 2 x.c + ||c||^2 is built once, not once per iteration as
``cdist`` does; the cluster sums read a contiguous copy of the points (LIME's features are a
transposed view; ``index_add_`` on the CPU adds row by row through a slow path for those); a run
stops as soon as its labels repeat (the plain loop then finds a zero shift one step later); the
seeding reuses one (N, C) buffer.  Every reduction keeps the layout and order of the plain loop, so
the labels are bit for bit the same, not merely close.
"""
from __future__ import annotations

import torch


def _plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability
    proportional to the squared distance to the nearest centre so far."""
    first = int(torch.randint(len(x), (1,), generator=generator))
    centres = [x[first]]
    differences = x - x[first]  # reused for every next centre: no new (N, C) allocation per draw
    d2 = differences.pow_(2).sum(1)
    for _ in range(1, k):
        weights = d2.double().cpu()
        j = int(torch.multinomial(weights / weights.sum(), 1, generator=generator)) if weights.sum() > 0 \
            else int(torch.randint(len(x), (1,), generator=generator))
        centres.append(x[j])
        d2 = torch.minimum(d2, torch.sub(x, x[j], out=differences).pow_(2).sum(1))
    return torch.stack(centres)


def _check(x: torch.Tensor, k: int) -> torch.Tensor:
    if x.ndim != 2:
        raise ValueError(f"kmeans clusters the rows of an (N, C) matrix, got shape {tuple(x.shape)}")
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be in [1, {len(x)}] (the number of points), got {k}")
    return x.float()


class _Distances:
    """Euclidean distances of the points to any centres, as ``torch.cdist`` computes them for many
    points: [-2x, ||x||^2, 1] . [c, 1, ||c||^2], clamped at 0, square root.  The points' factor is
    built once for all iterations (``cdist`` rebuilds it, a copy of every point, on each call)."""

    def __init__(self, x: torch.Tensor):
        ones = torch.ones(len(x), 1, dtype=x.dtype, device=x.device)
        self.points = torch.cat([x.mul(-2), x.pow(2).sum(-1, True), ones], -1)

    def __call__(self, centres: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(len(centres), 1, dtype=centres.dtype, device=centres.device)
        factor = torch.cat([centres, ones, centres.pow(2).sum(-1, True)], -1)
        return (self.points @ factor.mT).clamp_min_(0).sqrt_()


def kmeans(x: torch.Tensor, k: int, n_init: int = 3, max_iter: int = 300, tol: float = 1e-4,
           seed: int = 0) -> torch.Tensor:
    """Labels (N,) of KMeans on the rows of `x` (N, C), computed on `x`'s device in fp32."""
    x = _check(x, k)
    generator = torch.Generator().manual_seed(seed)
    # sklearn's tolerance: relative to the mean variance of the features
    threshold = tol * x.var(0).mean()
    distances = _Distances(x)
    rows = x.contiguous()  # the same values; only for the cluster sums
    best, best_inertia = None, float("inf")
    for _ in range(n_init):
        centres = _plus_plus(x, k, generator)
        labels, moved = None, True
        for _ in range(max_iter):
            new_labels = distances(centres).argmin(1)
            if labels is not None and torch.equal(new_labels, labels):
                # the same labels give the same centres again: the plain loop stops here with a zero shift
                moved = False
                break
            labels = new_labels
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(centres).index_add_(0, labels, rows)
            # an empty cluster keeps its centre
            new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
            shift = (new - centres).pow(2).sum()
            centres = new
            if shift <= threshold:
                break
        if moved:  # the centres moved after the last assignment
            labels = distances(centres).argmin(1)
        inertia = float((x - centres[labels]).pow(2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def kmeans_reference(x: torch.Tensor, k: int, n_init: int = 3, max_iter: int = 300, tol: float = 1e-4,
                     seed: int = 0) -> torch.Tensor:
    """:func:`kmeans` written plainly (``cdist`` and ``index_add_`` on `x` itself at every
    iteration): the labels the fast version must reproduce; for the tests."""
    x = _check(x, k)
    generator = torch.Generator().manual_seed(seed)
    threshold = tol * x.var(0).mean()
    best, best_inertia = None, float("inf")
    for _ in range(n_init):
        centres = _plus_plus(x, k, generator)
        for _ in range(max_iter):
            labels = torch.cdist(x, centres).argmin(1)
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
            shift = (new - centres).pow(2).sum()
            centres = new
            if shift <= threshold:
                break
        labels = torch.cdist(x, centres).argmin(1)
        inertia = float((x - centres[labels]).pow(2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best
