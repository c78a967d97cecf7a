#!/usr/bin/env bash
# Run one augdiff command on one multi-GPU host.
#   launch/gpu_host.sh augdiff generate --config configs/diffusemix_cifar100.py
# Default: ONE process drives every visible GPU (the mesh spans them all; simplest, fastest).
# PER_GPU=1: one process per GPU on localhost, coordinated by jax.distributed (the layout a
# multi-host cluster uses; handy to test multi-process code paths on one machine).
set -euo pipefail
if [[ "${PER_GPU:-0}" != "1" ]]; then exec "$@"; fi
ngpu=${NUM_GPUS:-$(nvidia-smi -L | wc -l)}
port=${AUGDIFF_PORT:-$((20000 + RANDOM % 20000))}
logdir=${AUGDIFF_LOG_DIR:-.}
pids=()
for ((i = 0; i < ngpu; i++)); do
  AUGDIFF_COORDINATOR=127.0.0.1:$port AUGDIFF_NUM_PROCESSES=$ngpu AUGDIFF_PROCESS_ID=$i \
  AUGDIFF_LOCAL_DEVICE_IDS=$i "$@" >"$logdir/process_$i.log" 2>&1 &
  pids+=($!)
done
rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc
