"""ViMAEdit's own numbers (Wang et al., Tables 1 and 2), typed once here so that chapter 04 prints the
paper's numbers beside the toy's instead of quoting them.

All rows are PIE-Bench (700 images, SD 1.5 backbone) in PIE-Bench's scaling: structure distance x10^3
(lower is better), background PSNR, LPIPS x10^3, MSE x10^4 (lower), SSIM x10^2, CLIP similarity of the
whole image and of the edited region (higher).  Table 1 groups the methods by inversion and sampler:
"PnP-I" is Direct Inversion (Ju et al. 2024), the inversion the toolkit's ``inversion="direct"`` runs;
Table 2 (the ablation) uses virtual inversion and DDIM(50).  ``None`` marks a figure that the paper
prints but our text copy of it lost (the extraction of Table 2 dropped some cells); the chapter shows
those cells as missing rather than guessing them.
"""
from __future__ import annotations

from .. import tables

#: the columns, in the paper's order: PIE-Bench's
COLUMNS = tables.PIE_COLUMNS

#: Table 1, the Direct Inversion (PnP-I) + DDIM(50) block: the configuration the toy benchmark runs
TABLE_1_PNP_INVERSION = {
    "P2P-Zero": (51.13, 21.23, 143.87, 135.00, 77.23, 23.36, 21.03),
    "MasaCtrl": (24.47, 22.78, 87.38, 79.91, 81.36, 24.42, 21.38),
    "PnP": (24.29, 22.64, 106.06, 80.45, 79.68, 25.41, 22.62),
    "P2P": (11.64, 27.19, 54.44, 33.15, 84.71, 25.03, 22.13),
    "ViMAEdit": (11.90, 28.75, 43.07, 28.85, 85.95, 25.43, 22.40),
}

#: Table 1, the other inversions: P2P against ViMAEdit with each (EF = edit-friendly DDPM inversion,
#: VI = virtual inversion)
TABLE_1_OTHER_INVERSIONS = {
    "P2P (EF, DPM-Solver++ 20)": (14.52, 27.05, 50.72, 37.48, 84.97, 25.36, 22.43),
    "ViMAEdit (EF, DPM-Solver++ 20)": (14.16, 28.12, 45.62, 33.56, 85.61, 25.51, 22.56),
    "P2P (VI, DDIM 50)": (13.15, 27.54, 51.44, 35.07, 84.98, 25.19, 22.26),
    "ViMAEdit (VI, DDIM 50)": (12.65, 28.27, 45.67, 30.29, 85.65, 25.91, 22.96),
}

#: Table 2, the ablation (VI, DDIM 50); the keys are the benchmark runner's method names
TABLE_2 = {
    "vimaedit": (12.65, 28.27, 45.67, 30.29, 85.65, 25.91, 22.96),
    "vimaedit-no-image": (12.91, 27.47, 51.58, 34.89, 84.89, 25.40, 22.55),
    "vimaedit-ca": (None, 27.80, 48.45, 31.99, None, 25.90, 22.92),
    "vimaedit-dpl": (None, 28.06, 47.74, 31.85, None, 25.82, 22.91),
    "vimaedit-var0": (None, 28.29, 45.84, 30.42, 85.64, 25.83, 22.86),
    "vimaedit-var1": (None, 28.09, 49.91, 35.51, 85.29, 26.01, 23.11),
}

#: the rows of Table 2 in words
TABLE_2_NAMES = {
    "vimaedit": "ViMAEdit",
    "vimaedit-no-image": "w/o image embedding guidance",
    "vimaedit-ca": "w/ CA-based grounding",
    "vimaedit-dpl": "w/ DPL-based grounding",
    "vimaedit-var0": "w/ fixed sampling variance (zero)",
    "vimaedit-var1": "w/ fixed sampling variance (non-zero)",
}


def table(rows: dict):
    """A paper table as a DataFrame (rows as given, the columns above; lost cells are NaN)."""
    return tables.frame(rows, COLUMNS)


def agreement(paper, toy, baseline: str, rows=None):
    """Where the toy follows the paper, column by column (:func:`editnb.methods.tables.agreement`
    over this table's columns)."""
    return tables.agreement(paper, toy, baseline, rows, columns=COLUMNS)
