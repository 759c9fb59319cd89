"""Per-module counts of a mutmut run (`scripts/mutation.sh`): killed, survived, no test, timeout,
the score, and the survivors.  Reads `mutmut results --all true`."""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict

#: mutmut's statuses, as this report names them
COLUMNS = {"killed": "killed", "survived": "survived", "no tests": "no test", "timeout": "timeout",
           "suspicious": "suspicious", "segfault": "crashed", "not checked": "not run", "skipped": "skipped"}


def module_of(mutant: str) -> str:
    """editnb.metrics.x_psnr__mutmut_3 -> editnb.metrics (methods: x<sep>Class<sep>method__mutmut_N)."""
    return re.split(r"\.x[_\u01c1]", mutant, maxsplit=1)[0]


def main(prefix: str = "editnb") -> int:
    out = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if not name.startswith(prefix):
            continue
        counts[module_of(name)][COLUMNS.get(status, status)] += 1
        if status == "survived":
            survivors.append(name)
    if not counts:
        print(f"no mutants under {prefix!r}; is it in [tool.mutmut] only_mutate of pyproject.toml?")
        return 1
    cols = ["killed", "survived", "no test", "timeout"]
    print(f"| module | {' | '.join(cols)} | score |\n|---|{'---:|' * (len(cols) + 1)}")
    total = Counter()
    for module, c in sorted(counts.items()):
        total += c
        tested = c["killed"] + c["survived"] + c["timeout"]
        print(f"| {module} | {' | '.join(str(c[k]) for k in cols)} | {c['killed'] / max(tested, 1):.0%} |")
    tested = total["killed"] + total["survived"] + total["timeout"]
    print(f"| all | {' | '.join(str(total[k]) for k in cols)} | {total['killed'] / max(tested, 1):.0%} |")
    print(f"\nscore: {total['killed']}/{tested} mutants that a test runs are killed ({total['killed'] / max(tested, 1):.1%}); "
          f"{total['no test']} are in code no fast test runs")
    if survivors:
        print(f"\nsurvivors ({len(survivors)}; `mutmut show NAME` prints the diff):")
        print("\n".join(f"  {s}" for s in survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
