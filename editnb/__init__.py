"""editnb: the helper package of a Jupyter course on text-guided image editing with diffusion models."""
from .runtime import Runtime, current, setup

__version__ = "0.1.0"
__all__ = ["setup", "current", "Runtime", "__version__"]
