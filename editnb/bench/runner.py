"""A resumable benchmark runner: one editing method over a PIE-Bench-format benchmark.

``editnb bench run --method NAME --data PATH --out DIR`` writes ``DIR/images/<id>.png`` and
``DIR/rows/<id>.json`` (the item's metrics) for every item, each file written atomically (a
temporary file renamed into place), the row last.  A killed run loses at most the item in
flight; a restart skips every item that has its row.  Under ``accelerate launch -m editnb.bench``
each process takes every n-th item, all writing to the same folder, so the results merge into one
table by construction.

Methods register themselves in :mod:`editnb.methods.registry`, declaring what they need from an item.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .. import metrics as M
from ..methods import get as get_method
from ..methods.registry import ITEM_FIELDS, METHODS, Method, register  # noqa: F401  (re-exported)
from ..images import to_numpy
from ..runtime import data_dir
from . import settings as S
from .data import BenchItem, load_pie_bench

# PIE-Bench's reporting scale for each column
SCALES = {"structure": 1e3, "psnr": 1.0, "lpips": 1e3, "mse": 1e4, "ssim": 1e2, "clip_whole": 100.0,
          "clip_edited": 100.0}


class Context:
    """Loads the models a method needs once per process (through the registry), and counts the
    seconds spent loading, so that an item's time is its edit's alone."""

    def __init__(self, profile: str | None = None):
        import editnb

        self.rt = editnb.current() if profile is None else editnb.setup(profile=profile, verbose=False)
        self._features = None
        self.load_seconds = 0.0

    def model(self, name: str):
        start = time.perf_counter()
        try:
            return self.rt.load(name)  # cached after the first call
        finally:
            self.load_seconds += time.perf_counter() - start

    @property
    def features(self) -> M.ClipFeatures:
        if self._features is None:
            self._features = M.clip_features("clip", profile=self.rt.profile)
        return self._features


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def item_metrics(ctx: Context, item: BenchItem, edited) -> dict:
    """PIE-Bench's metrics for one result: structure distance; PSNR, LPIPS, MSE, SSIM on the
    unedited region (both images times 1 - mask); CLIP similarity of the whole image and of the
    edited region with the target prompt.  Toy-profile feature metrics are toy-* versions."""
    src = to_numpy(item.image)
    out = to_numpy(edited)
    if out.shape != src.shape:
        from ..images import fit

        out = to_numpy(fit(out, src.shape[0]))
    feats = ctx.features
    toy = ctx.rt.profile == "toy"
    if toy:
        structure = M.structure_distance(M.toy_keys(feats), src, out)
        lp = M.toy_lpips(feats, *M.apply_region(src, out, item.mask, "background"))
    else:
        dino, proc = ctx.model("dino")
        structure = M.structure_distance(M.dino_keys(dino, proc), src, out)
        lp = M.lpips(*M.apply_region(src, out, item.mask, "background"))
    return {
        "structure": structure,
        "psnr": min(M.psnr(src, out, item.mask, "background"), 100.0),
        "lpips": lp,
        "mse": M.mse(src, out, item.mask, "background"),
        "ssim": M.ssim(src, out, item.mask, "background"),
        "clip_whole": float(M.clip_similarity(feats, [out], [item.target_prompt])[0]),
        "clip_edited": float(M.clip_region_similarity(feats, [out], [item.target_prompt], [item.mask])[0]),
        "feature_net": "toy-clip (toy-structure, toy-LPIPS)" if toy else "DINO ViT-B/8, LPIPS-Squeeze, CLIP ViT-L/14",
    }



def _shown(data) -> str:
    """The benchmark folder as run.json records it: relative to the shipped data (``data/...``)
    when it is the shipped benchmark, so results carry no path of the machine that made them."""
    path = Path(data).resolve()
    try:
        return str(Path("data") / path.relative_to(data_dir().resolve()))
    except ValueError:
        return str(data)

def run(method: str, data: str | Path, out: str | Path, steps: int = 25, seed: int = 0, limit: int | None = None,
        profile: str | None = None, types=None, process_index: int | None = None,
        num_processes: int | None = None, stop_after: int | None = None, options: dict | None = None) -> dict:
    """Run `method` over the benchmark at `data`, writing into `out`; returns the summary table.

    `options` set the method's own keyword arguments (e.g. ``{"strength": 0.7}`` for sdedit).
    The folder `out` holds one run: method, options, steps, seed, profile and data key it (see
    :mod:`editnb.bench.settings`); a re-run with other settings is refused before any compute.
    Every item is checked before the first edit too.  `stop_after` ends the run after that many
    NEW items (used to test resumption)."""
    from ..runtime import check_limit, check_seed, check_steps, progress

    m = get_method(method)
    steps, seed, limit = check_steps(steps), check_seed(seed), check_limit(limit)
    opts = S.method_options(m, options)
    items = load_pie_bench(data, types)
    if limit is not None:
        items = items[:limit]
    if process_index is None or num_processes is None:
        from accelerate import PartialState

        state = PartialState()
        process_index, num_processes = state.process_index, state.num_processes
    mine = items[process_index::num_processes]
    S.check_items(mine, m.needs, method)
    ctx = Context(profile)
    settings = S.run_settings(method, steps, seed, ctx.rt.profile, data, opts)
    out = Path(out)
    S.claim_folder(out, {"method": method, "data": _shown(data), "n_items": len(items), "settings": settings})
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    done_now = 0
    t0 = time.time()
    for item in progress(mine, desc=f"{method} [{process_index}/{num_processes}]"):
        row_path = out / "rows" / f"{item.id}.json"
        if row_path.exists():
            continue
        gen = ctx.rt.generator(seed)
        t, loading = time.perf_counter(), ctx.load_seconds
        edited = m.run(ctx, item, gen, steps, **(options or {}))
        seconds = time.perf_counter() - t - (ctx.load_seconds - loading)  # the edit, not the model's first load
        buf = _png_bytes(edited)
        _atomic_write(out / "images" / f"{item.id}.png", buf)
        row = {"id": item.id, "method": method, "editing_type": item.editing_type, "seconds": round(seconds, 3),
               **item_metrics(ctx, item, edited), "image_sha256": S.image_digest(buf), "settings": settings}
        _atomic_write(row_path, json.dumps(row).encode())
        done_now += 1
        if stop_after is not None and done_now >= stop_after:
            break
    summary = summarize(out)
    summary["wall_seconds_this_run"] = round(time.time() - t0, 1)
    summary["load_seconds_this_run"] = round(ctx.load_seconds, 1)
    return summary


def _data_of(out: Path, data) -> Path:
    """The benchmark folder a run used: `data` if given, else what its run.json recorded (a
    ``data/...`` path is the shipped data folder, wherever the package is)."""
    if data is not None:
        return Path(data)
    info = out / "run.json"
    if not info.exists():
        raise ValueError(f"{out} has no run.json saying which benchmark it ran on; pass data=... (--data)")
    recorded = json.loads(info.read_text())["data"]
    if recorded.startswith("data/"):
        return data_dir() / recorded.removeprefix("data/")
    return Path(recorded)


def rescore(out: str | Path, data: str | Path | None = None, profile: str | None = None) -> dict:
    """Recompute every row's metrics from its saved image, without running the method again: for
    when a metric's definition changed (e.g. SSIM's window) after the run.  Rows keep their method,
    time and settings; each is rewritten atomically.  Returns the new summary."""
    out = Path(out)
    rs = rows(out)
    if not rs:
        raise ValueError(f"{out} holds no benchmark rows to rescore (no rows/*.json); run `editnb bench run` first")
    items = {it.id: it for it in load_pie_bench(_data_of(out, data))}
    ctx = Context(profile)
    recorded = {r.get("settings", {}).get("profile") for r in rs} - {None}
    if recorded and recorded != {ctx.rt.profile}:
        raise ValueError(f"{out} was run on the {sorted(recorded)} profile; rescore it on the same profile "
                         f"(profile={sorted(recorded)[0]!r}), not {ctx.rt.profile!r}")
    from PIL import Image

    for row in rs:
        if row["id"] not in items:
            raise ValueError(f"item {row['id']} of {out} is not in the benchmark; pass the data folder it ran on")
        edited = np.asarray(Image.open(out / "images" / f"{row['id']}.png").convert("RGB"))
        row.update(item_metrics(ctx, items[row["id"]], edited))
        _atomic_write(out / "rows" / f"{row['id']}.json", json.dumps(row).encode())
    return summarize(out)


def _png_bytes(image) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_numpy(image)).save(buf, format="PNG")
    return buf.getvalue()


def rows(out: str | Path) -> list[dict]:
    """The rows of a run folder, each checked: complete JSON, and its image the one it was scored on."""
    found = []
    for path in sorted(Path(out, "rows").glob("*.json")):
        try:
            row = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a complete row ({e.msg}; a full disk?); delete it and run again with the "
                             f"same settings to redo item {path.stem}") from None
        S.check_row_image(row, Path(out))
        found.append(row)
    return found


def summarize(out: str | Path) -> dict:
    """Mean of each metric over the items done, in PIE-Bench's scaling."""
    rs = rows(out)
    S.check_rows(rs, out)
    run_info = json.loads(Path(out, "run.json").read_text()) if Path(out, "run.json").exists() else {}
    summary = {"method": run_info.get("method", Path(out).name), "items": len(rs),
               "of": run_info.get("n_items")}
    for key, scale in SCALES.items():
        vals = [r[key] for r in rs if key in r]
        summary[key] = float(np.mean(vals) * scale) if vals else float("nan")
    summary["seconds_per_item"] = float(np.mean([r["seconds"] for r in rs])) if rs else float("nan")
    return summary


COLUMNS = [("structure", "Structure dist. x10^3 ↓"), ("psnr", "BG PSNR ↑"), ("lpips", "BG LPIPS x10^3 ↓"),
           ("mse", "BG MSE x10^4 ↓"), ("ssim", "BG SSIM x10^2 ↑"), ("clip_whole", "CLIP whole ↑"),
           ("clip_edited", "CLIP edited ↑")]


def table(dirs) -> "object":
    """Several runs side by side: returns a pandas DataFrame (one row per method)."""
    import pandas as pd

    records = []
    for d in dirs:
        if not Path(d, "rows").exists() or not any(Path(d, "rows").glob("*.json")):
            raise ValueError(f"{d} holds no benchmark results (no rows in rows/); run `editnb bench run` first")
        s = summarize(d)
        records.append({"method": s["method"], "items": s["items"],
                        **{label: s[key] for key, label in COLUMNS}, "s/item": s["seconds_per_item"]})
    return pd.DataFrame.from_records(records).set_index("method")


def markdown(df) -> str:
    cols = list(df.columns)
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in df.iterrows():
        cells = [str(int(v)) if c == "items" else f"{v:.2f}" if isinstance(v, float) else str(v)
                 for c, v in zip(cols, row.tolist())]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: a panel whose values span more than this factor is drawn on a log axis
LOG_SPAN = 5.0


def plot(df):
    """One panel per metric, methods as dots on a value axis that spans the methods' range (not
    from zero: bars from zero make a 30.5-vs-35.1 dB difference look like nothing); the best method
    of each column, by its arrow (↑ or ↓), is drawn filled and named under the panel.  A column whose
    values span more than a factor of :data:`LOG_SPAN` (a method that many times worse than another) gets a log axis."""
    import matplotlib.pyplot as plt

    metric_cols = [label for _, label in COLUMNS]
    colours = plt.cm.tab10.colors
    ncols = 4  # two rows of panels, each wide enough for one upright label per method
    nrows = -(-len(metric_cols) // ncols)
    width = max(2.3, 0.26 * len(df))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(metric_cols):]:
        ax.axis("off")
    for ax, col in zip(axes.flat, metric_cols):
        values = df[col].to_numpy(dtype=float)
        best = int(values.argmax() if col.endswith("↑") else values.argmin())
        for k, v in enumerate(values):
            ax.plot([k], [v], "o", markersize=6, color=colours[k % 10],
                    markerfacecolor=colours[k % 10] if k == best else "white")
        lo, hi = values.min(), values.max()
        if lo > 0 and hi / lo > LOG_SPAN:  # a few methods far off would squash the rest into one line
            ax.set_yscale("log")
            ax.set_ylim(lo / 1.3, hi * 1.3)
            ax.set_title(col + " (log)", fontsize=7)
        else:
            pad = 0.15 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-3)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_title(col, fontsize=7)
        ax.set_xlim(-0.6, len(values) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(range(len(df)))
        ax.set_xticklabels(df.index, rotation=90, fontsize=7)
        ax.set_xlabel(f"best: {df.index[best]}", fontsize=7)
        ax.tick_params(axis="y", which="both", labelsize=7)
    fig.tight_layout()
    return fig
