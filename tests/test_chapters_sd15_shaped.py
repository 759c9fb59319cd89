"""Every chapter runs top to bottom on the ``sd15-shaped`` profile: the code path that Colab users
take on SD 1.5, here on models of its architecture with random weights (pictures of noise, real
shapes).  nbval cannot do this: the committed outputs are the toy profile's, so each notebook is
executed from a temporary copy by :func:`editnb.figures.execute_notebook` and only cell errors fail
the test (each cell within a deadline; one past it fails with the kernel's stacks)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# the chapters without widgets, the longest first (measured: 03, 04, 02, 00), so that the workers
# finish together; 05 switches itself to the toy profile, and 01, 05, 06 and 07 run on sd15-shaped in
# JupyterLab with their widgets live (tests/test_browser.py)
CHAPTERS = ["03_lime", "04_vimaedit", "02_iedit", "00_toyworld"]


def run_on_sd15_shaped(chapter, tmp_path, monkeypatch):
    import nbformat

    from editnb.figures import CellError, execute_notebook

    # the kernel inherits this process's environment: the profile, static widgets, no progress bars
    monkeypatch.setenv("EDITNB_PROFILE", "sd15-shaped")
    monkeypatch.setenv("EDITNB_STATIC", "1")
    monkeypatch.setenv("EDITNB_NO_PROGRESS", "1")
    path = tmp_path / f"{chapter}.ipynb"
    shutil.copy(NOTEBOOKS / f"{chapter}.ipynb", path)
    nb = nbformat.read(path, as_version=4)
    try:
        execute_notebook(nb, cwd=tmp_path)
    except CellError as e:  # the cell's traceback or the kernel's stacks, shortened
        pytest.fail(f"{chapter} failed on sd15-shaped:\n{str(e)[-3000:]}", pytrace=False)
    setup_line = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "profile=sd15-shaped" in setup_line, f"{chapter} did not run on the sd15-shaped profile"


def _chapter_case(chapter: str) -> type:
    """One test class per chapter: pytest-xdist's --dist loadscope hands out classes, so the
    chapters run on both workers (a parametrized function would be one scope, on one worker)."""

    class Case:
        def test_runs_on_sd15_shaped(self, tmp_path, monkeypatch):
            run_on_sd15_shaped(chapter, tmp_path, monkeypatch)

    Case.__name__ = Case.__qualname__ = f"TestChapter{chapter}"
    return Case


for _chapter in CHAPTERS:
    globals()[f"TestChapter{_chapter}"] = _chapter_case(_chapter)
