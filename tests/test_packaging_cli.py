import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from editnb import cli

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_declares_the_package_and_its_dependencies():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "editnb" and meta["requires-python"] == ">=3.10"
    deps = {re.split(r"[<>=!~\[ ]", d)[0].lower() for d in meta["dependencies"]}
    assert {"torch", "diffusers", "transformers", "accelerate", "safetensors", "scikit-learn", "matplotlib",
            "ipywidgets", "pillow", "numpy", "tqdm"} <= deps
    assert "torch" in meta["dependencies"], "torch stays unpinned for users (Colab brings its own)"
    test = {re.split(r"[<>=!~\[ ]", d)[0].lower() for d in meta["optional-dependencies"]["test"]}
    assert {"pytest", "nbval", "jupyterlab", "ipykernel"} <= test


def test_environment_yml_agrees_with_pyproject():
    env = (ROOT / "environment.yml").read_text()
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python = re.search(r"^\s*-\s*python\s*(\S+)", env, re.M)
    assert python and python.group(1) == meta["requires-python"]
    assert re.search(r"^\s*-\s*pip\s*$", env, re.M)
    # the package itself (with its test extra) is installed with pip from the repo, so the
    # dependency list has exactly one source of truth: pyproject.toml
    assert re.search(r"^\s*-\s*-e\s+\.\[test\]\s*$", env, re.M)


def test_ci_pins_torch_and_runs_the_readme_test_command():
    assert "torch==2.13.0" in (ROOT / "constraints/ci.txt").read_text()
    assert "-c constraints/ci.txt" in (ROOT / "scripts/env.sh").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/figures.sh" in readme
    assert "bash scripts/test.sh" in (ROOT / ".ci/run").read_text()


def test_cli_help_for_every_subcommand():
    for args in (["--help"], ["figures", "--help"], ["toy", "--help"], ["toy", "train", "--help"],
                 ["toy", "eval", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli.main(args)
        assert e.value.code == 0


def test_cli_failure_is_one_line_and_nonzero():
    r = subprocess.run([sys.executable, "-m", "editnb", "figures", "no/such.ipynb"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    r = subprocess.run([sys.executable, "-m", "editnb", "toy", "eval", "--only", "nonsense"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "unknown metric" in r.stderr


def test_figures_runs_a_notebook_and_writes_its_pngs(tmp_path):
    import nbformat

    from editnb.figures import run_notebooks

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%matplotlib inline\nimport matplotlib.pyplot as plt\n"
                                          "plt.plot([0, 1]); plt.show()")]
    path = tmp_path / "demo.ipynb"
    nbformat.write(nb, path)
    written = run_notebooks([path], out=tmp_path / "figs")
    assert len(written) == 1 and written[0].read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "figs" / "demo" / "demo.ipynb").exists()
    bad = tmp_path / "bad.ipynb"
    nb.cells = [nbformat.v4.new_code_cell("1 / 0")]
    nbformat.write(nb, bad)
    with pytest.raises(RuntimeError, match="bad.ipynb failed.*ZeroDivisionError"):
        run_notebooks([bad], out=tmp_path / "figs")
