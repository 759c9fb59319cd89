"""The LIME supplement's MagicBrush tables (Simsar et al., WACV 2025, supplement Tables 7 and 8), typed
once here so that chapter 03 prints the paper's numbers beside the toy's instead of quoting them.

Every row is IP2P as the base editor, evaluated on the MagicBrush test set with MagicBrush's metrics
(L1, L2 lower is better; CLIP-I, DINO, CLIP-T higher is better).  The agglomerative rows are indexed
by the paper's distance threshold ("the higher the threshold, the more clusters"), which
:func:`editnb.methods.lime.cluster` reads as a bound on cosine similarity.
"""
from __future__ import annotations

#: the columns of Tables 7 and 8, in the paper's order
MAGICBRUSH_COLUMNS = ("L1", "L2", "CLIP-I", "DINO", "CLIP-T")

#: Table 7 (token selection, Sec. A.7.1): plain IP2P, Eq. 4 ("related" rewarded), Eq. 3 ("unrelated"
#: suppressed, LIME's choice, KMeans 8 clusters)
TABLE_7 = {
    "IP2P": (0.112, 0.037, 0.852, 0.743, 0.276),
    "IP2P + LIME, related rewarded (Eq. 4)": (0.065, 0.018, 0.930, 0.897, 0.292),
    "IP2P + LIME, unrelated suppressed (Eq. 3)": (0.058, 0.017, 0.935, 0.906, 0.293),
}

#: Table 8 (clustering method, Sec. A.7.2): KMeans with 4-32 clusters, agglomerative clustering with
#: cosine distance thresholds 0.7-0.4; the first row is plain IP2P
TABLE_8 = {
    "IP2P": (0.112, 0.037, 0.852, 0.743, 0.276),
    "KMeans 4": (0.080, 0.022, 0.923, 0.885, 0.295),
    "KMeans 8": (0.058, 0.017, 0.935, 0.906, 0.293),
    "KMeans 16": (0.062, 0.018, 0.933, 0.903, 0.294),
    "KMeans 32": (0.064, 0.018, 0.932, 0.901, 0.291),
    "agglomerative 0.7": (0.080, 0.022, 0.927, 0.893, 0.294),
    "agglomerative 0.6": (0.076, 0.021, 0.929, 0.894, 0.294),
    "agglomerative 0.5": (0.063, 0.018, 0.933, 0.902, 0.293),
    "agglomerative 0.4": (0.072, 0.020, 0.930, 0.896, 0.293),
}


def table(rows: dict):
    """A paper table as a DataFrame (rows as given, MagicBrush's columns)."""
    import pandas as pd

    return pd.DataFrame.from_dict(rows, orient="index", columns=list(MAGICBRUSH_COLUMNS))
