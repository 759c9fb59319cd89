"""Pixel comparisons shared by the metrics and the ToyWorld oracle (both layers import from here)."""
from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None, peak: float = 255.0) -> float:
    """PSNR (dB) between two arrays of equal shape over the pixels where `keep` (H, W) is True
    (all pixels by default); identical pixels give inf."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    err = (a - b) ** 2
    mse = (err[keep] if keep is not None else err).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(peak ** 2 / mse))
