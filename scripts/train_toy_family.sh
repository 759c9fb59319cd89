#!/usr/bin/env bash
# Train the whole ToyWorld family in dependency order, as shipped, replacing the shipped models
# (each --out names one); every step resumes after a kill.
# vae and clip are independent, so on a CPU they train side by side with one thread each.
# On a GPU the whole family takes about 25 minutes; on the 2-core CPU, many hours.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ "${PARALLEL_FIRST:-1}" = 1 ]; then
  OMP_NUM_THREADS=1 $PY -m editnb toy train vae --out data/models/toy-vae "$@" & a=$!
  OMP_NUM_THREADS=1 $PY -m editnb toy train clip --out data/models/toy-clip "$@" & b=$!
  wait $a; wait $b
else
  $PY -m editnb toy train vae --out data/models/toy-vae "$@"
  $PY -m editnb toy train clip --out data/models/toy-clip "$@"
fi
$PY -m editnb toy train sd --out data/models/toy-sd "$@"
$PY -m editnb toy train ip2p --out data/models/toy-ip2p "$@"
# the shipped toy-ip2p continued for 3700 steps on a fresh stretch of data (seed 1)
$PY -m editnb toy train ip2p --out data/models/toy-ip2p --init data/models/toy-ip2p --seed 1 --steps 3700 --lr 3e-4 \
  --work-dir .editnb-train/ip2p-continued "$@"
# then 3000 steps at batch 32 (CPU, 53 min) with 35% of each batch "add" edits, its weakest kind
# (per-kind success on 60 held-out edits of each kind: add 0.55 -> 0.80, remove 0.72 -> 0.75)
$PY -m editnb toy train ip2p --out data/models/toy-ip2p --init data/models/toy-ip2p --seed 2 --steps 3000 --batch-size 32 --lr 1e-4 \
  --option kind_share='{"add": 0.35}' --work-dir .editnb-train/ip2p-add "$@"
$PY -m editnb toy train ip-adapter --out data/models/toy-ip-adapter "$@"
$PY -m editnb toy train clipseg --out data/models/toy-clipseg "$@"
$PY -m editnb toy train iedit --out data/models/toy-iedit "$@"
