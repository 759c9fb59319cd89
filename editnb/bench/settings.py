"""What keys a benchmark run folder, and the checks a run makes before it spends any compute.

A run folder holds the results of ONE setting: the method, its options, the step count, the
seed, the model profile and the benchmark's data (its ``mapping_file.json``, by content hash).
``run.json`` records them under ``"settings"`` and every row repeats them, so a folder can never
mix runs: a re-run with other settings is refused with a message that names the differences and
says how to proceed.  The number of items (``limit``, ``types``) is not part of the key: items
are independent, so a later run may extend a folder to more items.

Under concurrent writers: the first process claims a new folder by creating ``run.json``
atomically (:func:`claim_folder`), so a second process with other settings is refused before its
first item, whichever starts first; processes with the same settings share the folder (each item
is written once, image then row, each atomically).  Every row records the SHA-256 of its image,
and reading a folder (table, resume, rescore) refuses a row whose image is not its own.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
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
    # NaN and infinity are not JSON either: they would run every item to a NaN image, and reach run.json
    non_finite = [name for name, value in merged.items() if not _json_finite(value)]
    if non_finite:
        raise ValueError(f"option(s) {non_finite} of {method.name!r} must be finite numbers; got "
                         + ", ".join(f"{n}={merged[n]!r}" for n in non_finite))
    return merged


def _json_finite(value) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except ValueError:
        return False


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


def claim_folder(out: Path, record: dict) -> None:
    """Make `out` the folder of one run, atomically: ``run.json`` (`record`, with its ``settings``)
    is created by hard-linking a complete file, which fails when one exists, so of two processes
    that start into a new folder at once exactly one claims it, and one with other settings is
    refused before any item; a process with the same settings joins (accelerate's processes, a
    resume) and brings run.json up to date."""
    import uuid

    out.mkdir(parents=True, exist_ok=True)
    check_folder(out, record["settings"])  # rows of a run from before run.json was the claim
    info = out / "run.json"
    tmp = out / f".run.json.{os.getpid()}.{uuid.uuid4().hex}"
    tmp.write_bytes(json.dumps(record, indent=1).encode())
    try:
        os.link(tmp, info)  # atomic, and run.json appears complete
        tmp.unlink()
        return
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links: exclusive create (still atomic as a claim)
        try:
            fd = os.open(info, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(tmp.read_bytes())
            tmp.unlink()
            return
    try:
        held = json.loads(info.read_text()).get("settings")
        if held is not None and held != record["settings"]:
            diff = [f"{k}: {held.get(k)!r} there, {v!r} now" for k, v in record["settings"].items() if held.get(k) != v]
            raise ValueError(f"{out} is the folder of another run ({'; '.join(diff)}). A folder holds one run: write "
                             "into a new --out folder, or re-run with the settings it holds to continue")
        os.replace(tmp, info)  # same settings (or an older run.json without them and no rows): refresh it
    finally:
        tmp.unlink(missing_ok=True)


def image_digest(data: bytes) -> str:
    """What a row records of its image (the PNG's bytes), so that a row proves its image is its own."""
    return hashlib.sha256(data).hexdigest()


def check_row_image(row: dict, out: Path) -> None:
    """Refuse a row whose image is missing or is not the image its metrics were computed from."""
    image = Path(out) / "images" / f"{row['id']}.png"
    if not image.exists():
        raise ValueError(f"item {row['id']} of {out} has a row but no image ({image.name}); delete rows/{row['id']}.json "
                         "and run again with the same settings to redo it")
    if "image_sha256" in row and image_digest(image.read_bytes()) != row["image_sha256"]:
        raise ValueError(f"the image of item {row['id']} in {out} is not the one its row was computed from (another "
                         f"run wrote into this folder?); delete rows/{row['id']}.json and images/{row['id']}.png "
                         "and run again to redo it")
