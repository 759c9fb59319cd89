"""Per-module counts of a mutmut run (`scripts/mutation.sh`): killed, survived, no test, timeout,
equivalent, the score, and the survivors.  Reads `mutmut results --all true`, and
`tests/mutation_equivalent.txt`: the mutants triaged as equivalent (they change no behaviour), one
per line with its reason, which count in no score."""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

EQUIVALENT = Path(__file__).resolve().parent.parent / "tests" / "mutation_equivalent.txt"

#: mutmut's statuses, as this report names them
COLUMNS = {"killed": "killed", "survived": "survived", "no tests": "no test", "timeout": "timeout",
           "suspicious": "suspicious", "segfault": "crashed", "not checked": "not run", "skipped": "skipped"}


def module_of(mutant: str) -> str:
    """editnb.metrics.x_psnr__mutmut_3 -> editnb.metrics (methods: x<sep>Class<sep>method__mutmut_N)."""
    return re.split(r"\.x[_\u01c1]", mutant, maxsplit=1)[0]


def equivalent() -> dict[str, str]:
    """name -> reason, from tests/mutation_equivalent.txt ('#' starts a comment line)."""
    out = {}
    for line in EQUIVALENT.read_text().splitlines() if EQUIVALENT.exists() else []:
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.strip().partition(" ")
            if not reason.strip():
                raise SystemExit(f"{EQUIVALENT.name}: {name} has no reason; say why the mutant changes no behaviour")
            out[name] = reason.strip()
    return out


def score(c: Counter) -> str:
    """Killed (a timeout is a kill: the mutant hangs a test) over the non-equivalent mutants,
    survivors and mutants in code that no fast test runs included."""
    unequal = c["killed"] + c["survived"] + c["timeout"] + c["no test"]
    return f"{(c['killed'] + c['timeout']) / unequal:.0%}" if unequal else "-"


def main(prefix: str = "editnb") -> int:
    out = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    same = equivalent()
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if not name.startswith(prefix):
            continue
        if name in same and status in ("survived", "no tests"):
            status = "equivalent"
        counts[module_of(name)][COLUMNS.get(status, status)] += 1
        if status == "survived":
            survivors.append(name)
    if not counts:
        print(f"no mutants under {prefix!r}; is it in [tool.mutmut] only_mutate of pyproject.toml?")
        return 1
    cols = ["killed", "survived", "no test", "timeout", "equivalent"]
    print(f"| module | {' | '.join(cols)} | score |\n|---|{'---:|' * (len(cols) + 1)}")
    total = Counter()
    for module, c in sorted(counts.items()):
        total += c
        print(f"| {module} | {' | '.join(str(c[k]) for k in cols)} | {score(c)} |")
    print(f"| all | {' | '.join(str(total[k]) for k in cols)} | {score(total)} |")
    unequal = total["killed"] + total["survived"] + total["timeout"] + total["no test"]
    killed = total["killed"] + total["timeout"]
    print(f"\nscore: {killed}/{unequal} non-equivalent mutants killed ({killed / max(unequal, 1):.1%}; a timeout "
          f"counts as killed, a mutant in code that no fast test runs as not killed); "
          f"{total['equivalent']} triaged as equivalent ({EQUIVALENT.name}); "
          f"{sum(c['not run'] for c in counts.values())} not run yet")
    if survivors:
        print(f"\nsurvivors ({len(survivors)}; `mutmut show NAME` prints the diff):")
        print("\n".join(f"  {s}" for s in survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
