#!/usr/bin/env bash
# The main job: execute every chapter on the embedded toy profile and write its figures to figures/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
editnb figures --out figures "$@"
