"""Editing methods: one module or package per paper, plus the baselines (SDEdit, Prompt-to-Prompt,
InstructPix2Pix).  Each registers itself in :mod:`editnb.methods.registry` when imported;
:func:`get` imports the built-in ones on first use, so the benchmark runner only reads the registry."""
from __future__ import annotations

from .registry import ITEM_FIELDS, METHODS, Method, register

__all__ = ["ITEM_FIELDS", "METHODS", "Method", "register", "register_builtin", "get"]


def register_builtin() -> None:
    from . import baselines, editclip, iedit, lime, uip2p, vimaedit  # noqa: F401  (registration happens at import)


def get(name: str) -> Method:
    """The registered method `name` (the built-in methods are imported on first use)."""
    if name not in METHODS:
        register_builtin()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name]
