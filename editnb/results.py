"""Measured results that the chapters show, kept beside the models they measure.

A chapter's held-out table (iEdit's Table 1 on fifteen edits at two strengths, EditCLIP's on
twenty-four quartets, ...) is a deterministic function of the code, the shipped models and the
chapter's settings.  Recomputing it on every run of the chapter costs minutes of CPU and gives the
same numbers, so :func:`measured` keeps the last measurement in ``data/results/NAME.json`` with a
key that names everything the numbers depend on:

- the source of every ``editnb`` module loaded when the measurement ended (its syntax tree without
  docstrings, so an edited comment keeps the key; code that the measurement reached but that is
  not loaded yet must be called from a loaded module, whose source then changes);
- every file under ``data/`` except ``data/results/`` and ``data/bench/results/`` (what the chapters
  and the benchmark runs wrote: outputs, which no measurement reads; the models and the benchmarks'
  items are the inputs);
- the source of the function that computes the result and of the same-module functions it
  calls, and its settings;
- the profile (only the toy profile is kept: sd15's weights live outside ``data/``).

When the key holds, the stored result is returned and one line says when and how it was measured;
when anything changed, the result is measured again and stored.  ``EDITNB_RECOMPUTE=1`` measures
again regardless.  Nothing is ever read back that other code or models produced.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .runtime import data_dir

#: the profiles whose results are kept: their models are files under data/
KEPT_PROFILES = ("toy",)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def file_digest(path: Path) -> str:
    """SHA-256 of a Python file's syntax tree, docstrings and comments left out."""
    tree = _strip_docstrings(ast.parse(path.read_text(encoding="utf-8")))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def module_digests(names) -> dict[str, str | None]:
    """Each module's :func:`file_digest` by module name (None: no such module now)."""
    out = {}
    for name in sorted(names):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # its package is gone
            spec = None
        origin = spec.origin if spec is not None else None
        out[name] = file_digest(Path(origin)) if origin and origin.endswith(".py") else None
    return out


def loaded_modules() -> list[str]:
    return sorted(n for n, m in list(sys.modules.items()) if (n == "editnb" or n.startswith("editnb.")) and m is not None)


_FILE_DIGESTS: dict[tuple, str] = {}


#: folders of data/ that hold outputs (the stored results, the committed benchmark runs), not inputs
OUTPUTS = (("results",), ("bench", "results"))


def data_digest(root: Path, skip=OUTPUTS) -> str:
    """SHA-256 over every file under `root` (names and contents) except those under the folders
    `skip` (each a tuple of path parts relative to `root`)."""
    h = hashlib.sha256()
    kept = lambda p: not any(p.relative_to(root).parts[:len(s)] == s for s in skip)  # noqa: E731
    for path in sorted(p for p in root.rglob("*") if p.is_file() and kept(p)):
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _FILE_DIGESTS:  # hashing 50 MB of weights once per process is enough
            _FILE_DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + _FILE_DIGESTS[key].encode())
    return h.hexdigest()


def _names(code) -> set[str]:
    """The global names a code object reads, its nested lambdas and comprehensions included."""
    return set(code.co_names).union(*(_names(c) for c in code.co_consts if inspect.iscode(c)))


def _function_source(compute: Callable, seen: set | None = None) -> str:
    """The source of `compute` and of the functions of its own module that it calls by name (a
    chapter's cell calling a lambda of the same cell), so that editing either changes the key."""
    if not inspect.isfunction(compute):  # a callable object: its class's source
        return inspect.getsource(type(compute))
    seen = set() if seen is None else seen
    seen.add(id(compute))
    try:  # a chapter's cell: IPython keeps cell sources where inspect finds them
        parts = [inspect.getsource(compute)]
    except (OSError, TypeError):
        code = compute.__code__
        parts = [repr((code.co_code, code.co_consts, code.co_names))]
    for name in sorted(_names(compute.__code__)):
        called = compute.__globals__.get(name)
        if (inspect.isfunction(called) and called.__module__ == compute.__module__ and id(called) not in seen):
            parts.append(_function_source(called, seen))
    return "\n".join(parts)


def _jsonable(value: Any, name: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except TypeError as e:
        raise TypeError(f"measured({name!r}): the result must be JSON data (dicts with string keys, lists, "
                        f"numbers, strings) so that it can be stored; convert it first ({e})") from None


def key_of(name: str, profile: str, compute: Callable, settings: dict) -> dict:
    """Everything the result depends on, as a JSON object."""
    return {"name": name, "profile": profile, "settings": _jsonable(settings, name),
            "function": hashlib.sha256(_function_source(compute).encode()).hexdigest(),
            "data": data_digest(data_dir())}


def path_of(name: str) -> Path:
    return data_dir() / "results" / f"{name}.json"


def measured(name: str, compute: Callable[..., Any], *, profile: str, **settings) -> Any:
    """``compute(**settings)``, or its stored value when nothing it depends on has changed.

    `settings` are the numbers and names the result depends on beyond the code and the models
    (edit counts, steps, strengths); they must be JSON data.  The result is returned as JSON data
    in both cases (dict keys are strings, tuples become lists), so that a stored and a fresh result
    look alike.  Only the toy profile's results are stored (``KEPT_PROFILES``)."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"a result's name is its file name: letters, digits, '-' and '_', got {name!r}")
    if profile not in KEPT_PROFILES:
        return _jsonable(compute(**settings), name)
    key = key_of(name, profile, compute, settings)
    path = path_of(name)
    if path.exists() and os.environ.get("EDITNB_RECOMPUTE", "") in ("", "0"):
        stored = json.loads(path.read_text())
        if stored.get("key") == key and stored.get("code") == module_digests(stored.get("code", {})):
            m = stored["measured"]
            print(f"{name}: measured {m['at'][:10]} in {m['seconds']:.0f} s on {m['machine']}, loaded from "
                  f"data/results/{name}.json (same code, models and settings; EDITNB_RECOMPUTE=1 measures again)")
            return stored["result"]
    start = time.perf_counter()
    result = _jsonable(compute(**settings), name)
    seconds = time.perf_counter() - start
    record = {"key": key, "code": module_digests(loaded_modules()), "result": result,
              "measured": {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 1),
                           "machine": f"{platform.machine()}, {os.cpu_count()} cores"}}
    try:  # atomic: two runs of one chapter never leave half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            json.dump(record, f, indent=1)
        os.replace(f.name, path)
        where = f"stored in data/results/{name}.json"
    except OSError as e:  # a read-only install: the result is still returned
        where = f"not stored ({e.strerror})"
    print(f"{name}: measured now in {seconds:.0f} s, {where}")
    return result
