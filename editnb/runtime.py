"""Runtime choices: profile, device, dtype, seeding, offline detection, progress bars.

``editnb.setup()`` is the first call of every chapter.  It decides once, prints one line saying
what it chose and why, and returns a :class:`Runtime` that the notebooks pass around.
"""
from __future__ import annotations

import os
import random
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROFILES = ("sd15", "toy", "sd15-shaped")
#: a profile's cap on the chapters' step counts (``Runtime.steps``): sd15-shaped (tests only, random
#: weights) draws noise, so a handful of steps exercises the code path as well as fifty
PROFILE_STEPS = {"sd15-shaped": 3}
#: a profile's cap on the number of items a chapter evaluates (``Runtime.samples``): on sd15-shaped
#: every item is noise, so four items run each cell's code as fully as forty
PROFILE_SAMPLES = {"sd15-shaped": 4}
HUB_HOST = "huggingface.co"
_OFFLINE_CACHE: dict[str, bool] = {}
#: The model registry's entry points ("load", "missing_offline"), installed by editnb.models when it
#: is imported (``import editnb`` does).  The layers run runtime -> models, so the runtime reaches
#: the registry through this table rather than by importing a module above it.
MODEL_HOOKS: dict = {}


def data_dir() -> Path:
    """The project's data folder (``EDITNB_DATA`` overrides): the package's ``_data``, which in the
    repository is a link to its ``data/`` and in an installed wheel the shipped copy of it."""
    env = os.environ.get("EDITNB_DATA")
    return Path(env) if env else Path(__file__).resolve().parent / "_data"


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

    seed = check_seed(seed)
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

    def steps(self, n: int) -> int:
        """The number of denoising steps to use where a chapter asks for `n`: `n`, or the profile's
        cap (``PROFILE_STEPS``: 3 on sd15-shaped, whose random weights make pictures of noise)."""
        return min(check_steps(n), PROFILE_STEPS.get(self.profile, n))

    def samples(self, n: int) -> int:
        """The number of items (edits, scenes, quartets) to evaluate where a chapter asks for `n`:
        `n`, or the profile's cap (``PROFILE_SAMPLES``: 4 on sd15-shaped, whose numbers mean nothing)."""
        if not _is_int(n) or n < 1:
            raise ValueError(f"samples takes a positive number of items, got {n!r}; e.g. rt.samples(24)")
        return min(int(n), PROFILE_SAMPLES.get(self.profile, n))

    def load(self, name: str):
        """Load a model of this profile by its course name (see :mod:`editnb.models`)."""
        return MODEL_HOOKS["load"](name, profile=self.profile, device=self.device, dtype=self.dtype)

    def __str__(self):
        return f"editnb: profile={self.profile} device={self.device} dtype={str(self.dtype).removeprefix('torch.')} seed={self.seed} ({self.reason})"


_CURRENT: Runtime | None = None


def setup(profile: str = "auto", device: str | None = None, seed: int = 0, verbose: bool = True) -> Runtime:
    """Choose profile, device, dtype and seed; print them, and the versions and GPU that a bug report
    needs (:func:`environment`); return a :class:`Runtime`.

    - ``profile="auto"``: ``sd15`` when a CUDA GPU is present and the Hub is reachable, else
      ``toy``.  The environment variable ``EDITNB_PROFILE`` replaces ``"auto"``; an explicit
      ``profile="toy"``/``"sd15"`` wins over it, with a warning when the two disagree.
    - ``device``: ``cpu``, ``cuda[:N]`` or ``mps``; one that this machine lacks is refused.
    - dtype: fp16 on CUDA, fp32 on CPU and MPS.
    - ``seed``: an integer in [0, 2**32) (NumPy's limit); every generator is seeded from it.
    - ``profile="sd15"`` without the Hub checks the local cache at once and warns, naming the
      models that are missing and pointing to the toy profile.
    """
    import torch

    global _CURRENT
    seed = check_seed(seed)
    requested, reason = _requested_profile(profile)
    dev = check_device(device)
    if requested == "auto":
        if dev.type != "cuda":
            chosen, reason = "toy", "auto: no CUDA GPU"
        elif not hub_reachable():
            chosen, reason = "toy", "auto: GPU found but the Hugging Face Hub is unreachable"
        else:
            chosen, reason = "sd15", "auto: GPU and Hub available"
    else:
        chosen = requested
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    seed_everything(seed)
    rt = Runtime(chosen, dev, dtype, seed, reason)
    if chosen == "sd15" and not hub_reachable() and "missing_offline" in MODEL_HOOKS:
        missing = MODEL_HOOKS["missing_offline"]("sd15")
        if missing:
            warnings.warn(
                "the Hugging Face Hub is unreachable and these sd15 models are not in the local cache: "
                + ", ".join(missing) + ". Loading them will fail; use the toy profile "
                "(editnb.setup(profile='toy') or EDITNB_PROFILE=toy).", stacklevel=2)
    if verbose:
        print(rt)
        print(environment())
    _CURRENT = rt
    return rt


def environment() -> str:
    """One line: the versions of torch, diffusers and transformers, and the GPU with its memory (what
    a Colab runtime changes under a course without asking)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    gpu = "none"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name} ({props.total_memory / 2 ** 30:.1f} GiB)"
    return (f"versions: torch {torch.__version__}, diffusers {installed('diffusers')}, "
            f"transformers {installed('transformers')}; GPU: {gpu}")


def _requested_profile(profile: str) -> tuple[str, str]:
    """(profile asked for, why): an explicit argument beats ``EDITNB_PROFILE``, which beats "auto"."""
    env = os.environ.get("EDITNB_PROFILE") or None
    for value, source in ((profile, "profile argument"), (env, "EDITNB_PROFILE")):
        if (value is not None or source == "profile argument") and value not in PROFILES + ("auto",):
            raise ValueError(f"unknown profile {value!r} (from the {source}); use 'auto', 'sd15', 'toy' or "
                             "'sd15-shaped' (tests only)")
    if profile != "auto":
        if env not in (None, "auto", profile):
            warnings.warn(f"profile={profile!r} was asked for explicitly, so EDITNB_PROFILE={env!r} is ignored; "
                          "unset EDITNB_PROFILE or pass profile='auto' to follow it", stacklevel=3)
        return profile, "requested"
    if env not in (None, "auto"):
        return env, "set by EDITNB_PROFILE"
    return "auto", ""


def check_device(device):
    """A torch.device that this machine has (default: cuda when available, else cpu)."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device ({e}); use 'cpu', 'cuda' or 'mps'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was asked for but no CUDA GPU is available; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"numbered from 0; use device='cuda:0'")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device={device!r} was asked for but this machine has no Apple MPS backend; "
                             "use device='cpu'" + (" or 'cuda'" if torch.cuda.is_available() else ""))
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r} is not supported by editnb; use 'cpu', 'cuda' or 'mps'")
    return dev


def current() -> Runtime:
    """The runtime of the last :func:`setup` call (sets up the defaults if there was none)."""
    return _CURRENT if _CURRENT is not None else setup(verbose=False)


# ------------------------------------------------------------------ argument checks
# The package's functions call these first, so that a bad argument fails at once with a message
# that names it, instead of deep inside diffusers, sklearn or a tokenizer.


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_number(value, name: str, example: str = "7.5") -> float:
    """`value` as a finite real number, or a ValueError naming `name` (a string, a bool, None, NaN or
    inf would otherwise run a whole edit and fail deep inside torch, or give NaN images)."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, e.g. {name}={example}; got {value!r}")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, e.g. {name}={example}; got {value!r}")
    return float(value)


def check_scale(value, name: str = "guidance"):
    """A guidance scale as the samplers take it: a finite number, or a list, array or tensor of
    finite numbers (one per item, or a per-pixel map); returned unchanged."""
    import torch

    if isinstance(value, (bool, str, bytes)) or value is None:
        check_number(value, name)
    if isinstance(value, (int, float, np.integer, np.floating)):
        check_number(value, name)
        return value
    try:
        values = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, one number per item, or a map of numbers; got {value!r}") from None
    if values.dtype == torch.bool or not torch.isfinite(values.double()).all():
        raise ValueError(f"{name} must hold finite numbers; got {value!r}")
    return value


def check_seed(seed) -> int:
    """`seed` as an int in [0, 2**32), or a ValueError saying how to pass one."""
    if not _is_int(seed) or not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}; pass e.g. seed=0 "
                         "(a fixed seed is what makes the chapters reproducible)")
    return int(seed)


def check_steps(steps, name: str = "steps") -> int:
    """`steps` as a positive int, or a ValueError (0 and non-integers otherwise fail inside diffusers)."""
    if not _is_int(steps) or steps < 1:
        raise ValueError(f"{name} must be a positive integer (a number of denoising steps), got {steps!r}; "
                         f"e.g. {name}=25")
    return int(steps)


def check_limit(limit) -> int | None:
    """A benchmark's item limit: None (every item) or a positive int."""
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ValueError(f"limit must be a positive number of items, got {limit!r}; leave it out to run every item")
    return limit


def check_prompts(prompts, n: int | None = None, words: bool = False, what: str = "prompt") -> list[str]:
    """One prompt or a list of them -> a list of strings.

    With `n`, a single string is repeated `n` times and a list must hold exactly `n` prompts
    (one per image).  ``words=True`` refuses empty prompts (methods that align words need some);
    an empty string is otherwise the unconditional prompt and allowed.
    """
    if isinstance(prompts, str):
        out = [prompts] * (n or 1)
    elif prompts is None or not isinstance(prompts, (list, tuple)):
        raise ValueError(f"the {what} must be a string or a list of strings, got {type(prompts).__name__}")
    else:
        out = list(prompts)
        if not out:
            raise ValueError(f"no {what} given (an empty list); pass at least one string")
        bad = [p for p in out if not isinstance(p, str)]
        if bad:
            raise ValueError(f"every {what} must be a string; got a {type(bad[0]).__name__} ({bad[0]!r})")
        if n is not None and len(out) != n:
            raise ValueError(f"{len(out)} {what}s for {n} images; pass one {what} per image, or one string for all")
    if words and any(not p.strip() for p in out):
        raise ValueError(f"an empty {what} ({out}); this method aligns the words of its prompts, so each needs some")
    return out


def check_blend_words(blend_words):
    """P2P's local-blend words: None, or a pair (source word(s), target word(s))."""
    if blend_words is None:
        return None
    if isinstance(blend_words, str) or not isinstance(blend_words, (list, tuple)) or len(blend_words) != 2:
        raise ValueError(f"blend_words is a pair (source word(s), target word(s)), e.g. ('circle', 'square'), "
                         f"got {blend_words!r}; for one word on both sides pass ('red', 'red')")
    return tuple(blend_words)


def check_n_clusters(n_clusters, n_points: int) -> int:
    """A cluster count for `n_points` feature vectors (a square grid of them, as LIME clusters)."""
    side = int(round(n_points ** 0.5))
    where = f"the {side}x{side} feature grid" if side * side == n_points else f"the {n_points} feature vectors"
    if not _is_int(n_clusters) or not 1 <= n_clusters <= n_points:
        raise ValueError(f"n_clusters must be an integer from 1 to {n_points}, the number of points of {where}; "
                         f"got {n_clusters!r} (LIME uses 8)")
    return int(n_clusters)
