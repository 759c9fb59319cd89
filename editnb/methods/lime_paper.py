"""The LIME supplement's tables (Simsar et al., WACV 2025, supplement Tables 3, 4, 7 and 8), typed once
here so that chapter 03 prints the paper's numbers beside the toy's instead of quoting them.

Table 4 is PIE-Bench (PIE-Bench's columns and scaling).  Table 3 is MagicBrush with HIVE as the base
editor.  In Tables 7 and 8 every row is IP2P as the base editor, evaluated on the MagicBrush test set with MagicBrush's metrics
(L1, L2 lower is better; CLIP-I, DINO, CLIP-T higher is better).  The agglomerative rows are indexed
by the paper's distance threshold ("the higher the threshold, the more clusters"), which
:func:`editnb.methods.lime.cluster` reads as a bound on cosine similarity.
"""
from __future__ import annotations

from . import tables

#: the columns of Tables 7 and 8, in the paper's order
MAGICBRUSH_COLUMNS = ("L1", "L2", "CLIP-I", "DINO", "CLIP-T")

#: Table 7 (token selection, Sec. A.7.1): plain IP2P, Eq. 4 ("related" rewarded), Eq. 3 ("unrelated"
#: suppressed, LIME's choice, KMeans 8 clusters)
TABLE_7 = {
    "IP2P": (0.112, 0.037, 0.852, 0.743, 0.276),
    "IP2P + LIME, related rewarded (Eq. 4)": (0.065, 0.018, 0.930, 0.897, 0.292),
    "IP2P + LIME, unrelated suppressed (Eq. 3)": (0.058, 0.017, 0.935, 0.906, 0.293),
}

#: Table 3 (Sec. A.1, MagicBrush single-turn): LIME inside HIVE (an IP2P fine-tuned on a larger set and then
#: with a reward model), without and with MagicBrush fine-tuning ("w/MB"), beside IP2P; the multi-turn half of
#: the table orders the rows the same way
TABLE_3 = {
    "IP2P": (0.112, 0.037, 0.852, 0.743, 0.276),
    "IP2P w/MB": (0.063, 0.020, 0.933, 0.899, 0.278),
    "HIVE": (0.109, 0.034, 0.852, 0.750, 0.275),
    "HIVE + LIME": (0.051, 0.016, 0.940, 0.909, 0.293),
    "HIVE w/MB": (0.066, 0.022, 0.919, 0.866, 0.281),
    "HIVE w/MB + LIME": (0.053, 0.016, 0.939, 0.906, 0.300),
}

#: Sec. A.1's text (it has no table row): InstructDiffusion ("IDiff") on the MagicBrush test set without
#: and with LIME, to the two decimals the text gives
INSTRUCTDIFFUSION_MAGICBRUSH = {
    "InstructDiffusion": (0.085, 0.03, 0.90, 0.83, 0.30),
    "InstructDiffusion + LIME": (0.071, 0.02, 0.92, 0.86, 0.30),
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


#: PIE-Bench's columns (Table 4), as ``editnb bench table`` names them
PIE_COLUMNS = tables.PIE_COLUMNS

#: Table 4 (PIE-Bench, 700 images): each base editor without and with LIME (the rows the text of the
#: supplement holds; its "GT Mask" rows are named in the caption but not in the table we have)
TABLE_4 = {
    "InstructDiffusion": (75.44, 20.28, 155.66, 349.66, 75.53, 23.26, 21.34),
    "DirectInversion + P2P": (11.65, 27.22, 54.55, 32.86, 84.76, 25.02, 22.10),
    "IP2P": (57.91, 20.82, 158.63, 227.78, 76.26, 23.61, 21.64),
    "IP2P + LIME": (32.80, 21.36, 110.69, 159.93, 80.20, 23.73, 21.11),
    "IP2P w/MB": (22.25, 27.68, 47.61, 40.03, 85.82, 23.83, 21.26),
    "IP2P w/MB + LIME": (10.81, 28.80, 41.08, 27.80, 86.51, 23.54, 20.90),
    "HIVE": (56.37, 21.76, 142.97, 159.10, 76.73, 23.30, 21.52),
    "HIVE + LIME": (37.05, 22.90, 112.99, 107.17, 78.67, 23.41, 21.12),
    "HIVE w/MB": (34.91, 20.85, 158.12, 227.18, 76.47, 23.90, 21.75),
    "HIVE w/MB + LIME": (26.98, 26.09, 68.28, 63.70, 84.58, 23.96, 21.36),
}


def pie_table(rows: dict = TABLE_4):
    """Table 4 as a DataFrame with :data:`PIE_COLUMNS` (compare it with :func:`editnb.methods.tables.agreement`)."""
    return tables.frame(rows, PIE_COLUMNS)


def table(rows: dict):
    """A paper table as a DataFrame (rows as given, MagicBrush's columns)."""
    import pandas as pd

    return pd.DataFrame.from_dict(rows, orient="index", columns=list(MAGICBRUSH_COLUMNS))
