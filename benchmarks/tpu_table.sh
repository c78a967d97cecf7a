#!/usr/bin/env bash
# The TPU table of BENCHMARKS.md: `augdiff compile` on the seeds' real settings, one row at a
# time, resumable (rows already in OUT/<topology>.jsonl are skipped; kill and start it again).
#   benchmarks/tpu_table.sh OUT_DIR [TOPOLOGY ...]     (default: v5e:2x4 v5p:2x2x1 v6e:2x4)
#   python benchmarks/tpu_table.py OUT_DIR > table.md  (the markdown of every row measured)
# The data-parallel stages also run on v5e:16x16 (a v5e-256, 64 hosts): TOPOLOGY=v5e:16x16.
set -uo pipefail
out=${1:?usage: benchmarks/tpu_table.sh OUT_DIR [TOPOLOGY ...]}; shift
topologies=${*:-v5e:2x4 v5p:2x2x1 v6e:2x4}
mkdir -p "$out"
export ALLOW_MULTIPLE_LIBTPU_LOAD=1 TPU_SKIP_MDS_QUERY=1
run() {  # run TOPOLOGY CONFIG [augdiff compile arguments ...]
  local topo=$1; shift
  echo "== $topo $*" >&2
  augdiff compile --topology "$topo" --json "$out/${topo/:/_}.jsonl" "$@" || true
}
for topo in $topologies; do
  if [ "$topo" != "v5e:16x16" ]; then
    # SD-1.5 512² DDIM-50 CFG, 4 images per chip
    run "$topo" --config configs/sd_generate.py --config.sd.sampler=ddim --batch 32
    # Diffusion Inversion: stage-1 step and 128² PNDM-100 CFG generation (seed 003)
    run "$topo" --config configs/diffinv_cifar10.py
    # InstructPix2Pix 256² edits, Euler-ancestral 100 steps (seed 000 / DiffuseMix)
    run "$topo" --config configs/diffusemix_cifar100.py --stage generate
    # SD-2.1 unCLIP 768², DDIM-30 CFG (seed 001)
    run "$topo" --config configs/augcond_cifar10.py
  fi
  # EDM DDPM++ CIFAR-10 train step (batch 512, augment pipe) and Heun-18 (35 NFE) (seed 004)
  [ -n "${SKIP_EDM:-}" ] || run "$topo" --config configs/casd_cifar10.py
  # PreActResNet18 and ResNet-50 train and eval steps, the seeds' global batch 128 (rounded
  # up to a multiple of the chips)
  run "$topo" --config configs/classify_cifar10.py --config.model.name=preact_resnet18
  run "$topo" --config configs/classify_cifar10.py --config.model.name=resnet50
  # the classifier step beside online generation (the shipped generator, quickstart:online)
  run "$topo" --config configs/quickstart.py:online --stage train_mixed
done
