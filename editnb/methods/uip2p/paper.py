"""UIP2P's own numbers (Simsar et al., supplement Tables 1 and 3), typed once here so that chapter 05
prints the paper's numbers beside the toy's instead of quoting them.

Table 1 is PIE-Bench (SD 1.5 backbone) in PIE-Bench's scaling: structure distance x10^3, background
PSNR, LPIPS x10^3, MSE x10^4, SSIM x10^2, CLIP similarity of the whole image and of the edited region.
Table 3 is the MagicBrush test set: L1 and L2 against the ground-truth target, CLIP-I and DINO
similarity to it, CLIP-T to its local caption.  Our text copy of Table 3 labels the UIP2P rows of the
single-turn block "Multi-turn"; they sit in the single-turn block, and are read as single-turn here.
"""
from __future__ import annotations

from .. import tables
from ..tables import agreement  # noqa: F401  (chapter 05 reads it from here)

#: Table 1 (PIE-Bench); the same columns as editnb.methods.vimaedit.paper.COLUMNS
PIE_COLUMNS = ("Structure dist. x10^3 ↓", "BG PSNR ↑", "BG LPIPS x10^3 ↓", "BG MSE x10^4 ↓", "BG SSIM x10^2 ↑",
               "CLIP whole ↑", "CLIP edited ↑")
TABLE_1 = {
    "InstructDiffusion": (75.44, 20.28, 155.66, 349.66, 75.53, 23.26, 21.34),
    "IP2P": (57.91, 20.82, 158.63, 227.78, 76.26, 23.61, 21.64),
    "UIP2P": (27.05, 26.85, 60.57, 40.07, 83.69, 24.78, 21.89),
}

#: Table 3 (MagicBrush test set), the instruction-guided rows; UIP2P trained on InstructPix2Pix's
#: own data ("w/ IP2P Dataset") is the row the toy's matched comparison mirrors (same data, no edited images)
MAGICBRUSH_COLUMNS = ("L1 ↓", "L2 ↓", "CLIP-I ↑", "DINO ↑", "CLIP-T ↑")
TABLE_3 = {
    "single": {
        "HIVE": (0.1092, 0.0341, 0.8519, 0.7500, 0.2752),
        "IP2P": (0.1122, 0.0371, 0.8524, 0.7428, 0.2764),
        "IP2P w/ MagicBrush": (0.0625, 0.0203, 0.9332, 0.8987, 0.2781),
        "UIP2P w/ IP2P Dataset": (0.0722, 0.0193, 0.9243, 0.8876, 0.2944),
        "UIP2P w/ CC3M Dataset": (0.0680, 0.0183, 0.9262, 0.8924, 0.2966),
        "UIP2P w/ CC12M Dataset": (0.0619, 0.0174, 0.9318, 0.9039, 0.2964),
    },
    "multi": {
        "HIVE": (0.1521, 0.0557, 0.8004, 0.6463, 0.2673),
        "IP2P": (0.1584, 0.0598, 0.7924, 0.6177, 0.2726),
        "IP2P w/ MagicBrush": (0.0964, 0.0353, 0.8924, 0.8273, 0.2754),
        "UIP2P w/ IP2P Dataset": (0.1104, 0.0358, 0.8779, 0.8041, 0.2892),
        "UIP2P w/ CC3M Dataset": (0.1040, 0.0337, 0.8816, 0.8130, 0.2909),
        "UIP2P w/ CC12M Dataset": (0.0976, 0.0323, 0.8857, 0.8235, 0.2901),
    },
}


def table(rows: dict, columns=PIE_COLUMNS):
    """A paper table as a DataFrame (rows as given, the given columns)."""
    return tables.frame(rows, columns)
