"""The papers' tables beside the toy's: which way a column is better, and where the toy follows
the paper's comparison and where it reverses it (used by chapters 03, 04 and 05)."""
from __future__ import annotations


#: PIE-Bench's columns in its reporting scale, named as ``editnb bench table`` names them (the same
#: quantities as ``editnb.bench.runner.COLUMNS``; the arrow says which way is better)
PIE_COLUMNS = ("Structure dist. x10^3 ↓", "BG PSNR ↑", "BG LPIPS x10^3 ↓", "BG MSE x10^4 ↓", "BG SSIM x10^2 ↑",
               "CLIP whole ↑", "CLIP edited ↑")


def frame(rows: dict, columns):
    """A paper table as a DataFrame: rows as given ({name: values in column order}), the given
    columns; ``None`` (a figure our copy of the paper lost) becomes NaN."""
    import pandas as pd

    return pd.DataFrame.from_dict({k: [float("nan") if v is None else v for v in vals] for k, vals in rows.items()},
                                  orient="index", columns=list(columns))


def better(column: str, a: float, b: float) -> bool:
    """Is `a` better than `b` in `column` (the arrow in its name, ↑ or ↓, says which way)?"""
    if not column.endswith(("↑", "↓")):
        raise ValueError(f"column {column!r} does not say which way is better: end its name with ↑ or ↓")
    return a > b if column.endswith("↑") else a < b


def agreement(paper, toy, baseline: str, rows=None, columns=None) -> "object":
    """Where the toy follows the paper: for each row (other than `baseline`) and column, "follows" if
    the row beats (or loses to) the baseline in both tables, "reversed" if the toy says the opposite,
    "missing" where the paper's figure is lost.  `paper` and `toy` are DataFrames indexed by the same
    row names, with the `columns` (default: the paper's) in both."""
    import pandas as pd

    columns = list(paper.columns if columns is None else columns)
    rows = [r for r in (rows or toy.index) if r != baseline]
    verdicts = {}
    for r in rows:
        verdicts[r] = {}
        for c in columns:
            p, q = paper.loc[r, c], paper.loc[baseline, c]
            if pd.isna(p) or pd.isna(q):
                verdicts[r][c] = "missing"
            else:
                verdicts[r][c] = "follows" if better(c, p, q) == better(c, toy.loc[r, c], toy.loc[baseline, c]) \
                    else "reversed"
    return pd.DataFrame.from_dict(verdicts, orient="index", columns=columns)
