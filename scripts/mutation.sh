#!/usr/bin/env bash
# Mutation testing of the modules that hold the papers' equations and the metrics ([tool.mutmut] in
# pyproject.toml): each mutant (a flipped operator, a changed constant, a dropped argument, ...) runs
# against the fast unit tests that cover its function; a surviving mutant is a wrong equation that no
# test catches.  Not part of CI (the whole run takes hours on a 2-core CPU; one module, minutes).
#
#   bash scripts/mutation.sh                                   # every module
#   bash scripts/mutation.sh editnb.methods.vimaedit.grounding # one module (or any dotted prefix)
#
# Prints killed / survived / no test / timeout per module, the score (killed over mutants that some
# test runs), and every survivor (`mutmut show NAME` prints its diff).  Results are kept in mutants/,
# so a second run only re-tests what changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
python -c "import mutmut" 2>/dev/null || python -m pip install -q "mutmut==3.8.1"
export OMP_NUM_THREADS=1 EDITNB_NO_PROGRESS=1  # one thread per mutant process: mutmut forks one per core
prefix="${1:-editnb}"
mkdir -p build mutants/editnb
# mutmut copies editnb/ without its link to the data (editnb/_data -> ../data) and copies data/ beside it
ln -sfn ../data mutants/editnb/_data
# mutmut draws a progress line per mutant; the log keeps it, the report below is the result
mutmut run "${prefix}*" > build/mutation.log 2>&1 || { tail -20 build/mutation.log; exit 1; }
python scripts/mutation_report.py "$prefix"
