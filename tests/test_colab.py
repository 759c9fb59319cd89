"""The one repository address: the chapters' first cells, their Colab badges and the README agree
with editnb.REPOSITORY, and the install block stops loudly when the clone fails."""
from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from editnb import REPOSITORY, colab

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_every_notebook_has_the_badge_and_the_install_block():
    assert NOTEBOOKS
    problems = [p for nb in NOTEBOOKS for p in colab.problems(nb)]
    assert not problems, "\n".join(problems) + "\nrun: python scripts/colab_cells.py"


def test_readme_and_pyproject_name_the_same_address():
    readme = (ROOT / "README.md").read_text()
    addresses = set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", readme))
    assert addresses == {REPOSITORY}, f"the README names {addresses}, editnb.REPOSITORY is {REPOSITORY}"
    for nb in NOTEBOOKS:
        assert colab.badge(nb.name) in readme, f"the README lacks the Colab badge of {nb.name}"
    pyproject = re.search(r'^Repository = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert pyproject and pyproject.group(1) == REPOSITORY


def test_a_disagreeing_first_cell_is_reported(tmp_path):
    nb = json.loads(NOTEBOOKS[0].read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["source"] = [line.replace(REPOSITORY, "https://github.com/someone/else") for line in code["source"]]
    path = tmp_path / NOTEBOOKS[0].name
    path.write_text(json.dumps(nb))
    assert any("someone/else" in p or "install block" in p for p in colab.problems(path))
    assert colab.update(path) and not colab.problems(path)


def test_install_block_fails_loudly_when_the_clone_fails(tmp_path, monkeypatch):
    """On Colab (google.colab importable) a clone that fails raises with git's own message."""
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    block = colab.INSTALL_BLOCK.replace(f'"{REPOSITORY}"', repr(str(tmp_path / "no-such-repository")))
    block = block.replace('"/content/editnb"', repr(str(tmp_path / "clone")))
    with pytest.raises(RuntimeError, match=r"git clone .* failed \(exit \d+\)"):
        exec(compile(block, "install-block", "exec"), {})
