"""editnb: the helper package of a Jupyter course on text-guided image editing with diffusion models.

Layers (imports run downward only; ``tests/test_architecture.py`` checks the import-linter
contract in ``pyproject.toml``):

    cli
    bench, viz, toy.train, toy.evaluate        the commands: benchmarks, figures, toy training/eval
    methods                                    one module or package per paper + registry.py
    editing, training, metrics, toy.tasks      dual-branch editing, the trainer and its toy tasks
    diffusion, attention, features             (features: the one CLIP wrapper, measuring or differentiable)
    models                                     the model registry
    runtime, images, layout, pixels, toy.world/oracle/data/vocab/architectures

``toy.train`` (the ``editnb toy train`` entry) and ``toy.evaluate`` sit above ``methods``
because a toy model may be a method's fine-tune (toy-iedit is trained by iEdit's own task,
``methods.iedit.task``); the toy models' own tasks (``toy.tasks``) sit beside the trainer.
The runtime reaches the model registry through ``runtime.MODEL_HOOKS``, which ``models``
fills when imported (below), so that the lowest layer imports nothing above it.
"""
from . import models as _models  # noqa: F401  (installs the model loader that Runtime.load uses)
from .colab import REPOSITORY
from .runtime import Runtime, current, setup

__version__ = "0.1.0"
__all__ = ["setup", "current", "Runtime", "REPOSITORY", "__version__"]
