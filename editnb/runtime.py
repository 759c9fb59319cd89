"""Runtime choices: profile, device, dtype, seeding, offline detection, progress bars.

``editnb.setup()`` is the first call of every chapter.  It decides once, prints one line saying
what it chose and why, and returns a :class:`Runtime` that the notebooks pass around.
"""
from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROFILES = ("sd15", "toy")
HUB_HOST = "huggingface.co"
_OFFLINE_CACHE: dict[str, bool] = {}


def data_dir() -> Path:
    """The project's data folder (``EDITNB_DATA`` overrides; default: ``data/`` of the repo)."""
    env = os.environ.get("EDITNB_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


def progress_disabled() -> bool:
    """Progress bars are off under tests (``EDITNB_NO_PROGRESS=1``, set by the test suite)."""
    return os.environ.get("EDITNB_NO_PROGRESS", "") not in ("", "0")


def progress(iterable=None, **kwargs):
    """`tqdm.auto` progress bar that the test suite can switch off."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", progress_disabled())
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


def hub_reachable(timeout: float = 1.5) -> bool:
    """True when the Hugging Face Hub answers within `timeout` seconds.

    ``HF_HUB_OFFLINE=1`` (or ``EDITNB_OFFLINE=1``) answers False at once; otherwise one TCP connect
    with a short timeout, cached for the process, so nothing ever waits on the network for long.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "EDITNB_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes", "on"):
            return False
    if HUB_HOST not in _OFFLINE_CACHE:
        try:
            with socket.create_connection((HUB_HOST, 443), timeout=timeout):
                _OFFLINE_CACHE[HUB_HOST] = True
        except OSError:
            _OFFLINE_CACHE[HUB_HOST] = False
    return _OFFLINE_CACHE[HUB_HOST]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Runtime:
    """What :func:`setup` chose.  ``generator(seed)`` gives an explicit torch generator on the
    right device, the way every sampling call in the course takes its randomness."""

    profile: str
    device: "object"
    dtype: "object"
    seed: int
    reason: str

    def generator(self, seed: int | None = None):
        import torch

        return torch.Generator(device=self.device).manual_seed(self.seed if seed is None else seed)

    def load(self, name: str):
        """Load a model of this profile by its course name (see :mod:`editnb.models`)."""
        from .models import load

        return load(name, profile=self.profile, device=self.device, dtype=self.dtype)

    def __str__(self):
        return f"editnb: profile={self.profile} device={self.device} dtype={str(self.dtype).removeprefix('torch.')} seed={self.seed} ({self.reason})"


_CURRENT: Runtime | None = None


def setup(profile: str = "auto", device: str | None = None, seed: int = 0, verbose: bool = True) -> Runtime:
    """Choose profile, device, dtype and seed; print one line; return a :class:`Runtime`.

    - ``profile="auto"``: ``sd15`` when a CUDA GPU is present and the Hub is reachable, else
      ``toy``.  The environment variable ``EDITNB_PROFILE`` overrides the argument.
    - dtype: fp16 on CUDA, fp32 on CPU.
    - ``profile="sd15"`` without the Hub checks the local cache at once and warns, naming the
      models that are missing and pointing to the toy profile.
    """
    import torch

    global _CURRENT
    env = os.environ.get("EDITNB_PROFILE")
    requested = env or profile
    if requested not in PROFILES + ("auto",):
        raise ValueError(f"unknown profile {requested!r}; use 'auto', 'sd15' or 'toy'"
                         + (" (from EDITNB_PROFILE)" if env else ""))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is available; use device='cpu'")
    if requested == "auto":
        if dev.type != "cuda":
            chosen, reason = "toy", "auto: no CUDA GPU"
        elif not hub_reachable():
            chosen, reason = "toy", "auto: GPU found but the Hugging Face Hub is unreachable"
        else:
            chosen, reason = "sd15", "auto: GPU and Hub available"
    else:
        chosen, reason = requested, "set by EDITNB_PROFILE" if env else "requested"
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    seed_everything(seed)
    rt = Runtime(chosen, dev, dtype, seed, reason)
    if chosen == "sd15" and not hub_reachable():
        from .models import missing_offline

        missing = missing_offline("sd15")
        if missing:
            import warnings

            warnings.warn(
                "the Hugging Face Hub is unreachable and these sd15 models are not in the local cache: "
                + ", ".join(missing) + ". Loading them will fail; use the toy profile "
                "(editnb.setup(profile='toy') or EDITNB_PROFILE=toy).", stacklevel=2)
    if verbose:
        print(rt)
    _CURRENT = rt
    return rt


def current() -> Runtime:
    """The runtime of the last :func:`setup` call (sets up the defaults if there was none)."""
    return _CURRENT if _CURRENT is not None else setup(verbose=False)
