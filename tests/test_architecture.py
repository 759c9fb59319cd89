"""The package's layers (pyproject.toml, [tool.importlinter]): imports run downward only."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_linter_contract_holds():
    cli = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(cli)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_nothing_below_methods_imports_methods():
    """The loop the layers replaced: the runner once owned the method registry that methods import."""
    import grimp

    graph = grimp.build_graph("editnb")
    lower = ["editnb.runtime", "editnb.images", "editnb.models", "editnb.diffusion", "editnb.attention",
             "editnb.metrics", "editnb.training", "editnb.toy.tasks", "editnb.toy.world", "editnb.toy.oracle"]
    for module in lower:
        assert not graph.chain_exists(importer=module, imported="editnb.methods", as_packages=True), module


def test_runtime_loads_models_without_importing_them():
    import editnb
    from editnb import runtime

    rt = editnb.setup(profile="toy", device="cpu", verbose=False)
    assert runtime.MODEL_HOOKS["load"] is editnb.models.load
    model, processor = rt.load("clip")
    assert type(model).__name__ == "CLIPModel"
