#!/usr/bin/env bash
# Run one augdiff command on every worker of a Cloud TPU VM slice at once.
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh augdiff train --config configs/classify_cifar100.py
# Every worker runs the same command; augdiff calls jax.distributed.initialize() once
# (AUGDIFF_DISTRIBUTED=1 lets JAX discover the slice), builds the mesh from config.mesh
# over all chips of all hosts, and each process reads/writes only its own data shard.
# The repo must be checked out at the same path on every worker (e.g. clone it there first
# with the same --worker=all command) and installed with: pip install -e '.[tpu]'. Compile the
# experiment for the slice first, from any machine: augdiff compile --config ... --topology v5e:2x4.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR=${REPO_DIR:-augdiff}
cmd=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "cd $REPO_DIR && AUGDIFF_DISTRIBUTED=1 $cmd"
