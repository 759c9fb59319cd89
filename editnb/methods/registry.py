"""The method registry: every editing method registers here how it runs on one benchmark item.

It sits inside ``methods`` so that methods never import the benchmark runner (a higher layer);
the runner reads this registry (``editnb.methods.get``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

#: what a method can ask of a benchmark item (the fields of ``editnb.bench.data.BenchItem``)
ITEM_FIELDS = ("source_prompt", "target_prompt", "instruction", "blend_words", "mask")


@dataclass
class Method:
    name: str
    run: Callable  # (context, item, generator, steps) -> PIL image
    needs: tuple[str, ...]
    models: tuple[str, ...]
    description: str = ""


METHODS: dict[str, Method] = {}


def register(name: str, needs=(), models=(), description: str = ""):
    """Decorator: ``@register("lime", needs=("instruction",), models=("ip2p",))``."""
    bad = [f for f in needs if f not in ITEM_FIELDS]
    if bad:
        raise ValueError(f"unknown item fields {bad}; methods can need {ITEM_FIELDS}")

    def deco(fn):
        METHODS[name] = Method(name, fn, tuple(needs), tuple(models), description or (fn.__doc__ or "").strip())
        return fn

    return deco
