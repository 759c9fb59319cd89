#!/usr/bin/env bash
# Train the whole ToyWorld family in dependency order; every step resumes after a kill.
# vae and clip are independent, so on a CPU they train side by side with one thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ "${PARALLEL_FIRST:-1}" = 1 ]; then
  OMP_NUM_THREADS=1 $PY -m editnb toy train vae "$@" & a=$!
  OMP_NUM_THREADS=1 $PY -m editnb toy train clip "$@" & b=$!
  wait $a; wait $b
else
  $PY -m editnb toy train vae "$@"
  $PY -m editnb toy train clip "$@"
fi
$PY -m editnb toy train sd "$@"
$PY -m editnb toy train ip2p "$@"
$PY -m editnb toy train ip-adapter "$@"
