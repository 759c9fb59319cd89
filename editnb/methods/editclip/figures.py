"""EditCLIP's embedding figures: the t-SNE of edit embeddings with the lines joining each
quartet's reference and query pairs (supplement Fig. 4 left), and KMeans clusters against the
true edit kinds.  Deterministic for a fixed seed (t-SNE and KMeans get explicit random states)."""
from __future__ import annotations

import numpy as np

#: colours of the six edit kinds: a qualitative palette apart from ToyWorld's pure object colours
KIND_COLORS = {"recolor": "#e377c2", "reshape": "#8c564b", "add": "#17becf", "remove": "#7f7f7f",
               "move": "#bcbd22", "background": "#ff7f0e"}
LINE_COLOR = "#6a3d9a"  # the supplement's purple lines between a quartet's two pairs


def tsne_2d(embeddings, seed: int = 0, perplexity: float = 50.0) -> np.ndarray:
    """t-SNE to 2-D with the supplement's settings (perplexity 50, PCA initialisation).  scikit-learn
    needs fewer neighbours than points (perplexity < n): for n <= 50 points (a capped profile's few
    quartets) the perplexity is lowered to n - 1."""
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float64)
    perplexity = min(perplexity, len(x) - 1)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def plot_quartet_tsne(points: np.ndarray, kinds, ax=None, title: str = ""):
    """Points are [reference pairs; query pairs] (2n, 2) with kinds per quartet (n): dots for the
    reference pairs, crosses for the query pairs, a line joining the two pairs of each quartet."""
    import matplotlib.pyplot as plt

    n = len(kinds)
    if points.shape != (2 * n, 2):
        raise ValueError(f"expected {2 * n} points (reference pairs, then query pairs) for {n} quartets, "
                         f"got {points.shape}")
    ax = ax or plt.subplots(figsize=(5.5, 5))[1]
    ref, qry = points[:n], points[n:]
    for a, b in zip(ref, qry):
        ax.plot([a[0], b[0]], [a[1], b[1]], color=LINE_COLOR, lw=0.7, alpha=0.6, zorder=1)
    for kind, color in KIND_COLORS.items():
        sel = np.array([k == kind for k in kinds])
        if sel.any():
            ax.scatter(*ref[sel].T, s=22, color=color, label=kind, zorder=2)
            ax.scatter(*qry[sel].T, s=30, color=color, marker="x", zorder=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, loc="best", title="dot: exemplar pair, x: query pair", title_fontsize=7)
    ax.set_title(title, fontsize=9)
    return ax


def kmeans_table(embeddings, kinds, n_clusters: int | None = None, seed: int = 0):
    """KMeans (explicit random state) of the embeddings against the true kinds: (contingency table
    as {kind: counts per cluster}, adjusted Rand index)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    names = sorted(set(kinds))
    k = n_clusters or len(names)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(np.asarray(embeddings, np.float64))
    table = {name: [int(np.sum((labels == c) & (np.asarray(kinds) == name))) for c in range(k)] for name in names}
    return table, float(adjusted_rand_score(kinds, labels))
