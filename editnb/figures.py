"""The main job: execute the chapter notebooks top to bottom and write their figures.

``editnb figures`` runs every notebook of ``notebooks/`` (on the toy profile unless told
otherwise), saves the executed copy and every PNG output under ``figures/<notebook>/``, and stops
with a one-line error naming the notebook and cell that failed.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebooks(notebooks=(), out: str | Path = "figures", profile: str = "toy", timeout: int = 1200) -> list[Path]:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    paths = [Path(p) for p in notebooks] or sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    if not paths:
        raise RuntimeError(f"no notebooks found in {NOTEBOOKS_DIR}")
    out = Path(out)
    os.environ["EDITNB_PROFILE"] = profile  # the kernel inherits it; setup() obeys it
    os.environ.setdefault("EDITNB_NO_PROGRESS", "1")
    os.environ.setdefault("EDITNB_STATIC", "1")
    written = []
    for path in paths:
        if not path.exists():
            raise RuntimeError(f"notebook {path} does not exist")
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        print(f"running {path.name} ...", flush=True)
        try:
            client.execute()
        except CellExecutionError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else "cell failed"
            raise RuntimeError(f"{path.name} failed: {first}") from None
        folder = out / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / path.name)
        n = 0
        for i, cell in enumerate(nb.cells):
            for output in cell.get("outputs", []):
                png = output.get("data", {}).get("image/png")
                if png:
                    n += 1
                    target = folder / f"cell{i:02d}_{n:02d}.png"
                    target.write_bytes(base64.b64decode(png))
                    written.append(target)
        print(f"  {n} figure(s) -> {folder}", flush=True)
    return written
