"""No chapter cell hard-codes a size of the toy models (64x64 images, 16x16 and 8x8 latents, the
32x32 feature grid, 256 = 16x16 positions): sizes come from the model, the data or a store, so the
same cells run on SD 1.5 (512x512 images, 64x64 latents)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
TOY_SIZES = "(?:64|32|16|8|4)"
PATTERNS = {
    "a square size pair": re.compile(rf"\(\s*{TOY_SIZES}\s*,\s*{TOY_SIZES}\b"),
    "an NxN size in text": re.compile(rf"\b{TOY_SIZES}x{TOY_SIZES}\b"),
    "a reshape to a fixed grid": re.compile(r"reshape\(\s*\d"),
    "a fixed upscale (np.kron)": re.compile(r"\bkron\("),
    "a fixed resolution": re.compile(r"\b(?:resolution|size|sample_size|res)\s*=\s*(?:64|32|16|8|256)\b"),
    "the 16x16 position count": re.compile(r"\b256\b"),
}
#: numbers that look like sizes and are not: LIME's cluster counts
ALLOWED = ("(4, 8, 16, 32)",)


def offending_lines(source: str) -> list[str]:
    return [f"{name}: {line.strip()}" for line in source.splitlines()
            if not line.lstrip().startswith("#") and not any(a in line for a in ALLOWED)
            for name, pattern in PATTERNS.items() if pattern.search(line.split("  #")[0])]


def test_the_patterns_catch_the_old_toy_geometry():
    old = ['noise = rng.normal(0, 12, (64, 64, 3))', 'title="cross-attention (all layers at 16x16)"',
           'inside = roi.reshape(16, 2, 16, 2).any((1, 3))', 'roi = np.kron(loc.roi, np.ones((2, 2)))',
           'store.aggregate("cross", resolution=16)', 'm.reshape(256, -1)', 'for r in (16, 8)']
    assert all(offending_lines(line) for line in old)
    assert not offending_lines('shown = sorted({int(k) for k in np.linspace(0, STEPS, 6).round()})\n'
                               'fig = grid(tiles, labels, ncols=8, size=1.5)')


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_cell_assumes_a_toy_size(path):
    cells = json.loads(path.read_text())["cells"]
    found = [f"cell {i}: {hit}" for i, c in enumerate(cells) if c["cell_type"] == "code"
             for hit in offending_lines("".join(c["source"]))]
    assert not found, f"{path.name} hard-codes toy sizes (read them from the model or the data):\n" + "\n".join(found)
