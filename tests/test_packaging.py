"""A regular install carries the course's embedded default: a wheel built from the repository
holds the ToyWorld models and the toy benchmarks as package data, so ``import editnb;
editnb.setup()`` works from any folder, with no checkout beside it."""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RUN_FROM_ANYWHERE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np, torch
    import editnb
    from editnb import diffusion
    from editnb.runtime import data_dir
    from editnb.toy import world

    package = Path(editnb.__file__).resolve().parent
    assert not package.is_relative_to(Path(sys.argv[1])), package   # the installed copy, not the checkout
    assert not data_dir().is_symlink() and data_dir().resolve().is_relative_to(package)
    rt = editnb.setup(profile="toy", device="cpu")
    edit = world.edit_for("test", 0, "recolor")
    res = diffusion.instruct_pix2pix(rt.load("ip2p"), edit.source_image(), edit.instruction, steps=2,
                                     generator=torch.Generator().manual_seed(0))
    print(json.dumps({"image": list(np.asarray(res.image).shape), "data": str(data_dir())}))
""")


@pytest.mark.slow
def test_a_wheel_of_the_repository_runs_a_toy_edit_and_a_toy_benchmark_from_any_folder(tmp_path):
    """Build the wheel, install it (without dependencies: they are this environment's) into a fresh
    virtual environment, and from a folder outside the checkout run a 2-step toy edit and a two-item
    `editnb bench run` on the shipped toy-pie benchmark.  Fails when the models or the benchmark are
    left out of the wheel, or when editnb looks for data/ beside a checkout."""
    # built from a copy of the package's sources, as a fresh clone holds them: setuptools builds in
    # place, and its build/ folder would keep files from earlier builds
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "mutants", ".editnb-train", "figures", "notebooks", "tests", "*.egg-info", "__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, cwd=tmp_path)
    wheel = next(wheels.glob("editnb-*.whl"))
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    target = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)
    # the dependencies (torch, diffusers, ...) from this environment: its folders as plain path
    # entries, so its editable install of editnb (a .pth hook there) is not seen
    (target / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDITNB_DATA", "EDITNB_PROFILE")}
    clean["EDITNB_NO_PROGRESS"] = "1"
    done = subprocess.run([python, "-c", RUN_FROM_ANYWHERE, str(ROOT)], cwd=elsewhere, env=clean,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["image"][-1] == 3 and Path(found["data"]).is_relative_to(target)
    bench = subprocess.run([python, "-m", "editnb", "bench", "run", "--method", "ip2p", "--limit", "2", "--steps", "2",
                            "--out", "out"], cwd=elsewhere, env=clean, capture_output=True, text=True)
    assert bench.returncode == 0, bench.stderr[-3000:]
    rows = sorted((elsewhere / "out" / "rows").glob("*.json"))
    assert len(rows) == 2 and len(list((elsewhere / "out" / "images").glob("*.png"))) == 2
