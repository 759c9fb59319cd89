"""Editing methods: one module per paper, plus the baselines (SDEdit, Prompt-to-Prompt,
InstructPix2Pix).  Importing :func:`register_builtin` registers them with the benchmark runner."""


def register_builtin() -> None:
    from . import baselines, iedit, lime  # noqa: F401  (registration happens at import)
