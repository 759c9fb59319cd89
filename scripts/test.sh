#!/usr/bin/env bash
# Every test: unit tests and nbval over the chapter notebooks (toy profile, CPU, offline).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest "$@"
