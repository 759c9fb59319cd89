#!/usr/bin/env bash
# Every test: unit tests and nbval over the chapter notebooks (toy profile, CPU, offline), on one
# pytest-xdist worker per core (at most 4; EDITNB_TEST_WORKERS overrides, 0 runs in one process).
# A notebook's cells stay on one worker, the longest scopes first (--dist loadscope in collection
# order; see conftest.py).  (--dist loadgroup would be the natural choice, but pytest-xdist 3.8 sets
# the group into item._nodeid, which pytest 9.2 no longer reads, so it falls back to single tests.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
workers=${EDITNB_TEST_WORKERS:-$(python -c "import os; print(min(4, os.cpu_count() or 1))")}
python -m pytest -n "$workers" --dist loadscope --no-loadscope-reorder "$@"
