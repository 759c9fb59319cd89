"""The ``editnb`` command (also ``python -m editnb``).

    editnb figures [--out DIR] [NOTEBOOK ...]   run the chapters on the toy profile, write figures
    editnb toy train MODEL [--steps N ...]      train one ToyWorld model (resumable)
    editnb toy eval [--json PATH]               measure the shipped ToyWorld models
    editnb bench run --method M --data D --out O   run a method over a PIE-Bench-format benchmark
    editnb bench table DIR ...                  compare runs (markdown table, optional plot)
    editnb bench rescore DIR ...                recompute the metrics of runs from their saved images
    editnb bench toy-pie | toy-magicbrush       write the ToyWorld benchmarks

Failures exit non-zero with a one-line reason on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="editnb", description="Text-guided image editing course helpers.")
    sub = p.add_subparsers(dest="command", required=True)

    fig = sub.add_parser("figures", help="execute the chapter notebooks on the toy profile and write their figures")
    fig.add_argument("notebooks", nargs="*", help="notebooks to run (default: all of notebooks/)")
    fig.add_argument("--out", default="figures", help="folder for executed notebooks and PNG figures (default: figures)")
    fig.add_argument("--profile", default="toy", choices=["toy", "sd15", "auto"], help="model profile (default: toy)")
    fig.add_argument("--timeout", type=int, default=300, help="per-cell deadline in seconds (a cell past it fails with the kernel's stacks)")

    toy = sub.add_parser("toy", help="ToyWorld models: train and evaluate")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    tr = toy_sub.add_parser("train", help="train one ToyWorld model (resumes from its checkpoint)")
    from .toy.train import MODELS

    tr.add_argument("model", choices=MODELS)
    tr.add_argument("--steps", type=int, help="total optimisation steps (default: the recipe's)")
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--work-dir", default=".editnb-train", help="checkpoint folder (default: .editnb-train)")
    tr.add_argument("--out", help="output folder (default: WORK_DIR/out/toy-MODEL; a shipped model is replaced only "
                                  "when --out names it, e.g. --out data/models/toy-sd)")
    tr.add_argument("--no-export", action="store_true", help="only train and checkpoint")
    tr.add_argument("--workers", type=int, help="data-rendering processes (default: 0 on CPU, up to 8 on CUDA)")
    tr.add_argument("--init", help="continue from the UNet of this pipeline folder (sd, ip2p), e.g. data/models/toy-ip2p")
    tr.add_argument("--ema-decay", type=float, help="EMA decay of the exported weights (default: the recipe's)")
    tr.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                    help="a task option, e.g. --option frozen='[\"time_embedding\"]' (repeatable; values read as JSON)")

    bench = sub.add_parser("bench", help="benchmarks in the PIE-Bench format: build, run, tabulate")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    br = bsub.add_parser("run", help="run one method over a benchmark (resumable; shard with accelerate launch)")
    br.add_argument("--method", required=True, help="a registered method: sdedit, ip2p, p2p, ...")
    br.add_argument("--data", help="PIE-Bench-format folder (default: the shipped toy benchmark, data/bench/toy-pie "
                    "of the package, wherever you run from)")
    br.add_argument("--out", required=True, help="results folder (images/, rows/); it holds one run: a re-run with "
                    "another method, options, steps, seed, profile or data is refused")
    br.add_argument("--steps", type=int, default=25)
    br.add_argument("--seed", type=int, default=0)
    br.add_argument("--limit", type=int, help="only the first N items (N >= 1)")
    br.add_argument("--types", nargs="*", help="editing types to keep (PIE-Bench ids 0-9)")
    br.add_argument("--profile", choices=["toy", "sd15"], help="model profile (default: EDITNB_PROFILE, else auto)")
    br.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                    help="a method option, e.g. --option strength=0.7 (repeatable; values read as JSON)")
    bt = bsub.add_parser("table", help="put several runs side by side (markdown; --plot PNG)")
    bt.add_argument("dirs", nargs="+")
    bt.add_argument("--plot", help="also save a bar chart to this PNG")
    brs = bsub.add_parser("rescore", help="recompute the metrics of runs from their saved images (after a metric "
                          "changed), without running the methods again")
    brs.add_argument("dirs", nargs="+")
    brs.add_argument("--data", help="the benchmark folder (default: what each run.json recorded)")
    brs.add_argument("--profile", choices=["toy", "sd15"], help="model profile (default: EDITNB_PROFILE, else auto)")
    bp = bsub.add_parser("toy-pie", help="write the ToyWorld benchmark in the PIE-Bench format")
    bp.add_argument("--out", default="data/bench/toy-pie")
    bp.add_argument("--per-type", type=int, default=20)
    bp.add_argument("--seed", type=int, default=0)
    bm = bsub.add_parser("toy-magicbrush", help="write the MagicBrush-style ToyWorld split (single and multi turn)")
    bm.add_argument("--out", default="data/bench/toy-magicbrush")
    bm.add_argument("--seed", type=int, default=0)

    ev = toy_sub.add_parser("eval", help="evaluate the shipped ToyWorld models with the oracle")
    ev.add_argument("--json", help="write the figures to this JSON file")
    ev.add_argument("--n", type=int, default=None, help="held-out items per measurement (default: each metric's own)")
    ev.add_argument("--only", nargs="*", help="metrics to compute (default: all)")
    ev.add_argument("--update-cards", action="store_true", help="write the figures into the model cards")
    ev.add_argument("--matched-ip2p", help="folder of UIP2P's matched InstructPix2Pix retrain, measured beside toy-uip2p")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "figures":
            from .figures import run_notebooks

            run_notebooks(args.notebooks, out=args.out, profile=args.profile, timeout=args.timeout)
        elif args.command == "toy" and args.toy_command == "train":
            from .toy.train import train

            summary = train(args.model, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            device=args.device, seed=args.seed, work_dir=args.work_dir,
                            out_dir=args.out, export=not args.no_export, workers=args.workers,
                            ema_decay=args.ema_decay, init=args.init, options=_options(args.option))
            out = "(not exported)" if args.no_export else args.out or Path(args.work_dir) / "out" / f"toy-{args.model}"
            print(f"trained {args.model}: {summary['steps']} steps in {summary['train_seconds'] / 60:.1f} min, "
                  f"final loss {summary['final_loss']:.4f} -> {out}")
        elif args.command == "toy" and args.toy_command == "eval":
            from .toy.evaluate import evaluate, print_table

            results = evaluate(n=args.n, only=args.only, json_path=args.json, update_cards=args.update_cards,
                               matched_ip2p=args.matched_ip2p)
            print_table(results)
        elif args.command == "bench":
            _bench(args)
        return 0
    except KeyboardInterrupt:
        print("editnb: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, RuntimeError, OSError, KeyError) as e:  # a user's error: one line, no traceback
        print(f"editnb: error: {e}", file=sys.stderr)
        return 1


def _bench(args) -> None:
    from .bench import data, runner

    if args.bench_command == "run":
        from .runtime import data_dir

        data_path = args.data if args.data is not None else data_dir() / "bench" / "toy-pie"
        s = runner.run(args.method, data_path, args.out, steps=args.steps, seed=args.seed, limit=args.limit,
                       profile=args.profile, types=args.types, options=_options(args.option))
        print(runner.markdown(runner.table([args.out])))
        print(f"{s['items']}/{s['of']} items done; {s['wall_seconds_this_run']:.0f} s in this run, "
              f"{s['load_seconds_this_run']:.0f} s of it loading models (s/item counts the edits alone)")
    elif args.bench_command == "table":
        df = runner.table(args.dirs)
        print(runner.markdown(df))
        if args.plot:
            runner.plot(df).savefig(args.plot, dpi=90)
    elif args.bench_command == "rescore":
        for d in args.dirs:
            s = runner.rescore(d, data=args.data, profile=args.profile)
            print(f"{d}: {s['items']} rows rescored")
        print(runner.markdown(runner.table(args.dirs)))
    elif args.bench_command == "toy-pie":
        out = data.write_toy_pie(args.out, per_type=args.per_type, seed=args.seed)
        print(f"wrote {len(data.load_pie_bench(out))} items to {out}")
    elif args.bench_command == "toy-magicbrush":
        out = data.write_toy_magicbrush(args.out, seed=args.seed)
        print(f"wrote the single- and multi-turn splits to {out}")


def _options(pairs: list[str]) -> dict:
    """``["strength=0.7", "mode=refine"]`` -> ``{"strength": 0.7, "mode": "refine"}`` (JSON values, else text)."""
    import json

    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--option takes NAME=VALUE, got {pair!r}")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out
