"""What keys a benchmark run folder, and the checks a run makes before it spends any compute.

A run folder holds the results of ONE setting: the method, its options, the step count, the
seed, the model profile and the benchmark's data (its ``mapping_file.json``, by content hash).
``run.json`` records them under ``"settings"`` and every row repeats them, so a folder can never
mix runs: a re-run with other settings is refused with a message that names the differences and
says how to proceed.  The number of items (``limit``, ``types``) is not part of the key: items
are independent, so a later run may extend a folder to more items.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

#: the arguments every registered method takes before its options
RUN_ARGS = 4  # (context, item, generator, steps)


def method_options(method, options: dict | None = None) -> dict:
    """The method's options (the keyword arguments of its ``run`` after the first four, with
    their defaults), updated with `options`; unknown names are refused."""
    params = list(inspect.signature(method.run).parameters.values())[RUN_ARGS:]
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    unknown = sorted(set(options or {}) - set(defaults))
    if unknown:
        raise ValueError(f"method {method.name!r} has no option {unknown}; its options are "
                         f"{defaults or 'none'}")
    merged = {**defaults, **(options or {})}
    try:
        json.dumps(merged)
    except TypeError as e:
        raise ValueError(f"the options of {method.name!r} must be JSON values (numbers, strings, lists): {e}") from None
    return merged


def data_fingerprint(root: str | Path) -> str:
    """The benchmark's name and a hash of its mapping file (prompts, masks, image paths)."""
    mapping = Path(root) / "mapping_file.json"
    return f"{Path(root).resolve().name}:sha256:{hashlib.sha256(mapping.read_bytes()).hexdigest()[:16]}"


def run_settings(method: str, steps: int, seed: int, profile: str, data: str | Path, options: dict) -> dict:
    return {"method": method, "steps": steps, "seed": seed, "profile": profile, "data": data_fingerprint(data),
            "options": options}


def check_folder(out: Path, settings: dict) -> None:
    """Refuse to add results to a folder whose results came from other settings."""
    first_row = next(iter(sorted((out / "rows").glob("*.json"))), None)
    if first_row is None:
        return  # nothing to mix with
    info = out / "run.json"
    row = json.loads(first_row.read_text())
    recorded = row["settings"] if "settings" in row else json.loads(info.read_text()).get("settings") \
        if info.exists() else None
    if recorded is None:
        raise ValueError(f"{out} holds results of an earlier editnb that did not record their settings (profile, "
                         "data, options), so new items cannot safely join them; write into a new --out folder, "
                         "or delete this one to start over")
    diff = [f"{k}: {recorded.get(k)!r} there, {v!r} now" for k, v in settings.items() if recorded.get(k) != v]
    if diff:
        raise ValueError(f"{out} holds results of other settings ({'; '.join(diff)}). A folder holds one run, "
                         "so its table never mixes settings: write into a new --out folder, or delete this one "
                         "(or re-run with the settings it holds) to continue")


def check_items(items, needs: tuple[str, ...], method: str) -> None:
    """Everything about the items that would fail only after an edit was computed: the fields
    the method needs, square images whose side is a multiple of 8, masks of the image's size."""
    for item in items:
        missing = [f for f in needs if not getattr(item, f)]
        if missing:
            raise ValueError(f"item {item.id} lacks {missing}, which method {method!r} needs")
        w, h = item.image.size
        if w != h or w % 8:
            raise ValueError(f"item {item.id}: the image is {w}x{h}; benchmark images must be square with a side "
                             "that is a multiple of 8 (PIE-Bench's are 512x512). Resize the images and their masks "
                             "(editnb.images.fit does the images)")
        if item.mask.shape != (h, w):
            raise ValueError(f"item {item.id}: the mask is {item.mask.shape[1]}x{item.mask.shape[0]} but the image "
                             f"is {w}x{h}")


def check_rows(rows: list[dict], out) -> None:
    """The rows of one folder must come from one setting (rows of earlier versions carry none)."""
    seen = {json.dumps(r["settings"], sort_keys=True) for r in rows if "settings" in r}
    if len(seen) > 1:
        raise ValueError(f"{out} mixes rows of {len(seen)} different settings; its means would be meaningless. "
                         "Move the rows of each setting into a folder of its own")
