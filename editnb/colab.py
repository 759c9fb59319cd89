"""The one repository address, and the cells that use it: each chapter's Colab badge and its
guarded install block.

The notebooks cannot import ``editnb`` before installing it, so their first cells hold the address
as text; ``python scripts/colab_cells.py`` (re)writes those cells from :data:`REPOSITORY`, and the tests
(``tests/test_colab.py``) fail when a notebook or the README disagrees with it.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPOSITORY = "https://github.com/editnb/editnb"
BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
INSTALL_START = "# On Colab: install the course"
INSTALL_END = "    sys.path.insert(0, CLONE)"

INSTALL_BLOCK = f'''{INSTALL_START} (nothing happens elsewhere); a failed clone or install stops here with the reason.
REPOSITORY = "{REPOSITORY}"
try:
    import google.colab  # noqa: F401
except ImportError:
    pass
else:
    import os, subprocess, sys
    CLONE = "/content/editnb"
    _clone = [] if os.path.isdir(os.path.join(CLONE, ".git")) else [["git", "clone", "--depth", "1", REPOSITORY + ".git", CLONE]]
    for _cmd in _clone + [[sys.executable, "-m", "pip", "install", "-e", CLONE]]:
        _done = subprocess.run(_cmd, capture_output=True, text=True)
        if _done.returncode != 0:
            raise RuntimeError(f"{{' '.join(_cmd)}} failed (exit {{_done.returncode}}):\\n{{(_done.stderr or _done.stdout)[-3000:]}}")
{INSTALL_END}'''


def colab_url(notebook: str) -> str:
    """The address that opens `notebook` (a file name under notebooks/) on Colab."""
    path = REPOSITORY.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{BRANCH}/notebooks/{Path(notebook).name}"


def badge(notebook: str) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"


def _first(cells: list, kind: str) -> dict:
    return next(c for c in cells if c["cell_type"] == kind)


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _set_source(cell: dict, text: str) -> None:
    lines = text.split("\n")
    cell["source"] = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def problems(notebook: Path) -> list[str]:
    """What is wrong with `notebook`'s first cells: the badge, the install block, the address."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    name = Path(notebook).name
    out = []
    if badge(name) not in _source(_first(cells, "markdown")):
        out.append(f"{name}: the first markdown cell lacks the Colab badge {badge(name)}")
    code = _source(_first(cells, "code"))
    if not code.startswith(INSTALL_BLOCK):
        out.append(f"{name}: the first code cell does not start with the install block of editnb.colab "
                   "(run python scripts/colab_cells.py)")
    for address in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+?(?:\.git)?(?=[\"'\s/]|$)", code):
        if address.removesuffix(".git") != REPOSITORY:
            out.append(f"{name}: the first code cell names {address}, the repository is {REPOSITORY}")
    return out


def update(notebook: Path) -> bool:
    """Rewrite the badge and the install block of `notebook` (only those two cells' sources;
    read and written at once, so edits of other cells in the meantime are kept).  True if changed."""
    path = Path(notebook)
    nb = json.loads(path.read_text())
    md, code = _first(nb["cells"], "markdown"), _first(nb["cells"], "code")
    text = _source(md)
    text = re.sub(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)\n*", "", text)
    title, _, rest = text.partition("\n")
    new_md = f"{title}\n\n{badge(path.name)}\n" + (f"\n{rest.lstrip(chr(10))}" if rest.strip() else "")
    src = _source(code)
    # the old block: from the top of the cell to the end of the google.colab guard
    end = src.find(INSTALL_END)
    if end >= 0:
        rest_code = src[end + len(INSTALL_END):]
    else:
        m = re.search(r"except ImportError:\n\s+pass\n", src)
        rest_code = src[m.end():] if m and "google.colab" in src[:m.start()] else "\n" + src
    body = rest_code.lstrip("\n")
    new_code = INSTALL_BLOCK + ("\n\n" + body if body.strip() else "")
    if new_md == _source(md) and new_code == src:
        return False
    _set_source(md, new_md)
    _set_source(code, new_code)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


def main(argv=None) -> int:
    """``python scripts/colab_cells.py [--check] [NOTEBOOK ...]`` (default: every notebook of notebooks/)."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [Path(a) for a in args if a != "--check"] or sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
    bad = []
    for p in paths:
        if check:
            bad += problems(p)
        elif update(p):
            print(f"updated {p}")
    print("\n".join(bad))
    return 1 if bad else 0
