"""Where InstructPix2Pix leaks on ToyWorld, and what LIME does there (chapter 03, section 5).

    python scripts/lime_leak_search.py [--search-only]

1. The search: plain IP2P (s_T = 7.5) over 60 held-out edits of each object-local kind (test scenes
   60000+), the mean leak per stratum (edit kind x where the nearest other object is).
2. The leak-prone split: the strata at least 1.5x the pool's mean leak; 100 fresh edits of them
   (test scenes 80000+, never the pool's).  (``leak_search.SEARCH`` and ``SPLIT``.)
3. The spill split: the "kind / adjacent" strata where a neighbouring object at least doubles the
   leak of its kind (``leak_search.neighbour_effect``), 100 fresh edits of them likewise.
4. IP2P and IP2P + LIME on each split at equal s_T (7.5 and 2) and at the paper's pair (LIME s_T = 2
   against IP2P s_T = 7.5): leak, success, background PSNR; LIME's leak cut with a 90 % bootstrap interval.

The measurements go through ``editnb.results.measured``: stored in data/results/ (lime-leak-search,
lime-leak-prone, lime-leak-spill), read back by chapter 03 while the code and models stay the same.
"""
from __future__ import annotations

import argparse

from editnb import leak_search
from editnb.results import measured


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--search-only", action="store_true")
    args = ap.parse_args()
    records = measured("lime-leak-search", leak_search.search, profile="toy", **leak_search.SEARCH)
    overall = sum(r["leak"] for r in records) / len(records)
    print(f"search: {len(records)} edits, mean IP2P leak {overall:.2f} grey levels")
    for s, row in leak_search.strata_table(records).items():
        print(f"  {s:<22} {row['edits']:3d} edits  mean leak {row['mean leak']:6.2f}  ({row['mean leak'] / overall:.2f}x)")
    strata = leak_search.leak_prone(records)
    print("leak-prone strata (>= 1.5x the pool's mean):", strata)
    if args.search_only:
        return
    spill = leak_search.neighbour_effect(records)
    print("strata where an adjacent object at least doubles its kind's leak:", spill)
    for name, chosen in (("lime-leak-prone", strata), ("lime-leak-spill", spill)):
        result = measured(name, leak_search.compare, profile="toy", strata=chosen, **leak_search.SPLIT)
        print(f"{name}: {len(result['edits'])} held-out edits of {chosen}; RoI IoU {sum(result['roi iou']) / len(result['roi iou']):.3f}")
        for setting, row in leak_search.summary(result).items():
            print(f"  {setting:<14} leak {row['leak']:6.2f}  done {row['done']:.2f}  background PSNR "
                  f"{row['background PSNR']:.2f} dB  leak inside the RoI {row['leak in RoI']:.2f}")
        for lime_s, ip2p_s in (("LIME s_T=7.5", "IP2P s_T=7.5"), ("LIME s_T=2", "IP2P s_T=2"), ("LIME s_T=2", "IP2P s_T=7.5")):
            c = leak_search.leak_cut(result, lime_s, ip2p_s)
            print(f"  {lime_s} vs {ip2p_s}: leak cut {100 * c['cut']:.1f} % (90 % interval {100 * c['low']:.1f} to "
                  f"{100 * c['high']:.1f}), success {c['success points']:+.1f} points")


if __name__ == "__main__":
    main()
