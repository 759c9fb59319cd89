#!/usr/bin/env bash
# Every test: unit tests and nbval over the chapter notebooks (toy profile, CPU, offline), on one
# pytest-xdist worker per core (at most 4; EDITNB_TEST_WORKERS overrides, 0 runs in one process).
# A notebook's cells stay on one worker, the longest scopes first (--dist loadscope in collection
# order; see conftest.py).  (--dist loadgroup would be the natural choice, but pytest-xdist 3.8 sets
# the group into item._nodeid, which pytest 9.2 no longer reads, so it falls back to single tests.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# tests/test_browser.py drives Debian's Chromium (playwright's own browser download is not used)
if [ -z "${EDITNB_CHROMIUM:-}" ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  else
    echo "scripts/test.sh: the browser test needs Chromium: sudo apt-get install chromium, or EDITNB_CHROMIUM=/path/to/it" >&2
  fi
fi
workers=${EDITNB_TEST_WORKERS:-$(python -c "import os; print(min(4, os.cpu_count() or 1))")}
python -m pytest -n "$workers" --dist loadscope --no-loadscope-reorder "$@"
