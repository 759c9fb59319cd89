#!/usr/bin/env bash
# Shared set-up of the two README commands: a virtual environment in .venv with editnb and its
# test tools, torch pinned to the CPU build (constraints/ci.txt). Re-running it is cheap.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.editnb-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints/ci.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints/ci.txt -e ".[test]"
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
# progress bars stay on for the main job; the test suite turns them off (conftest.py)
export EDITNB_PROFILE=toy HF_HUB_OFFLINE=1 EDITNB_STATIC=1
