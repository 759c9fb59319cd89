"""Which rows of a UNet batch are which: the contract between the sampling loops and the
attention controllers.

A batch is laid out guidance-major: for every guidance branch (``"uncond"``, ``"cond"``, or
InstructPix2Pix's ``"cond"``, ``"image"``, ``"uncond"``) come the edit branches in order
(``"source"``, ``"target"``, or ``"0"``, ``"1"``, ... for plain samples).  The sampling loop that
builds the batch publishes its layout; a controller reads rows from it instead of guessing
(the second half, ``out[1]``, ...).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchLayout:
    guidance: tuple[str, ...]
    branches: tuple[str, ...]

    @classmethod
    def plain(cls, n: int, guidance=("uncond", "cond")) -> "BatchLayout":
        """``n`` independent samples under the given guidance branches."""
        return cls(tuple(guidance), tuple(str(i) for i in range(n)))

    @property
    def size(self) -> int:
        return len(self.guidance) * len(self.branches)

    def rows(self, guidance: str | None = None, branch: str | None = None) -> list[int]:
        """Row indices of one guidance branch and/or one edit branch, in batch order."""
        for name, known in (("guidance", self.guidance), ("branch", self.branches)):
            value = guidance if name == "guidance" else branch
            if value is not None and value not in known:
                raise ValueError(f"no {name} {value!r} in this batch; it has {known}")
        return [g * len(self.branches) + b
                for g, gname in enumerate(self.guidance) if guidance in (None, gname)
                for b, bname in enumerate(self.branches) if branch in (None, bname)]

    def cond_rows(self) -> list[int]:
        """Rows of the text-conditioned guidance branch (what P2P and the stores read)."""
        return self.rows(guidance="cond")


# The sampling loop publishes the layout of the batch it is about to run on the UNet it runs; the
# observing attention processors, installed on that UNet, read it.  A weak map keeps this module
# free of any import of the loops or the controllers (they sit in layers above it).
_PUBLISHED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def publish(unet, layout: BatchLayout | None) -> None:
    """Declare the layout of the batches that `unet` is about to see (None: unknown)."""
    if layout is None:
        _PUBLISHED.pop(unet, None)
    else:
        _PUBLISHED[unet] = layout


def published(unet) -> BatchLayout | None:
    """The layout last published for `unet`, or None."""
    return _PUBLISHED.get(unet)
