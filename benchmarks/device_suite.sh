#!/usr/bin/env bash
# The accelerator run (see benchmarks/device_suite.py): augdiff bf16 vs its PyTorch peers.
#
#   bash benchmarks/device_suite.sh OUT_DIR [--dry-run] [--edm-repo DIR] [--rows a,b]
#
# Run from anywhere; it works from the project root. On a GPU machine whose Python lacks
# augdiff's pinned Flax-era packages (diffusers 0.39, transformers 4.57.6, huggingface_hub 0.36,
# tokenizers, grain, array_record, ml_collections), put their wheels in .whl/ of the project
# root: they are installed into a private target directory, nothing else is touched.
# An NVlabs/edm checkout (its public repository, kept outside the project) for the EDM peer:
# --edm-repo DIR or AUGDIFF_EDM_REPO=DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  site="${TMPDIR:-/tmp}/augdiff-device-site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
  export PYTHONPATH="$site:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export DIFFUSERS_VERBOSITY=error TRANSFORMERS_VERBOSITY=error
exec python3 benchmarks/device_suite.py "$@"
