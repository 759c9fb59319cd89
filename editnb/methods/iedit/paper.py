"""iEdit's own numbers (Bodur et al. 2024), printed beside the toy's in chapter 02.

Table 1: (a) generated images (LDM), (b) real images (COCO, ImageNet, AnimalFaces-HQ).  CLIPScore
is Hessel et al.'s, 2.5 * max(cos, 0), in percent; FID is Inception FID; SSIM-M and SSIM-M-bar are
SSIM inside and outside the ground-truth masks, in percent.  Table 2: the loss ablation on generated
images (the last row adds masked inference)."""
from __future__ import annotations

COLUMNS = ("CLIPScore", "FID", "SSIM-M", "SSIM-M-bar")

TABLE_1A = {
    "SDEdit": (62.58, 171, 82.44, 50.64),
    "DALL-E 2": (65.44, 143, 82.45, 94.76),
    "InstructPix2Pix": (65.12, 108, 88.62, 76.43),
    "iEdit": (65.76, 158, 82.70, 52.02),
    "iEdit-M": (66.36, 114, 83.08, 78.18),
}
TABLE_1B = {
    "SDEdit": (65.84, 180, 74.36, 64.60),
    "DALL-E 2": (65.46, 162, 74.41, 93.97),
    "InstructPix2Pix": (66.91, 145, 80.59, 79.92),
    "iEdit": (67.02, 166, 74.59, 70.09),
    "iEdit-M": (67.44, 147, 74.98, 80.44),
}
TABLE_2 = {
    "L_global + L_pairs (LAION-caption-200K)": (65.95, 158, 78.84, 55.14),
    "L_global + L_LDM + L_loc": (65.62, 156, 79.61, 62.08),
    "L_global + L_LDM + L_loc + L_perc": (65.64, 153, 79.75, 62.20),
    "L_global + L_mask + L_loc + L_perc": (66.09, 146, 79.31, 59.54),
    "L_global + L_mask + L_loc + L_perc + masked inference": (66.97, 128, 79.65, 77.99),
}


def table(rows: dict) -> dict[str, dict[str, float]]:
    """{method: {column: value}} of one of the tables above (pandas-ready)."""
    return {name: dict(zip(COLUMNS, values)) for name, values in rows.items()}


def ranking(rows: dict, column: str, methods=("SDEdit", "iEdit", "iEdit-M")) -> list[str]:
    """`methods` ordered best first by `column` of a paper table (lower is better only for FID)."""
    k = COLUMNS.index(column)
    return sorted(methods, key=lambda m: rows[m][k], reverse=column != "FID")
