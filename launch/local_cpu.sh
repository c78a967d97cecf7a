#!/usr/bin/env bash
# Run one augdiff command as N JAX processes on this machine (CPU collectives over localhost).
# This is how the multi-process code paths are tested without a cluster.
#   launch/local_cpu.sh N [devices_per_process] -- augdiff train --config configs/x.py:smoke ...
# Each process gets AUGDIFF_COORDINATOR/AUGDIFF_NUM_PROCESSES/AUGDIFF_PROCESS_ID, and augdiff
# calls jax.distributed.initialize once with them. Logs: ${AUGDIFF_LOG_DIR:-.}/process_<i>.log
set -euo pipefail
n=${1:?number of processes}; shift
per=1
if [[ "${1:-}" != "--" ]]; then per=$1; shift; fi
[[ "${1:-}" == "--" ]] && shift
port=${AUGDIFF_PORT:-$((20000 + RANDOM % 20000))}
logdir=${AUGDIFF_LOG_DIR:-.}
mkdir -p "$logdir"
pids=()
for ((i = 0; i < n; i++)); do
  AUGDIFF_COORDINATOR=127.0.0.1:$port AUGDIFF_NUM_PROCESSES=$n AUGDIFF_PROCESS_ID=$i \
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$per" \
    "$@" >"$logdir/process_$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
