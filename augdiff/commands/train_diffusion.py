r"""``augdiff train-diffusion``: train an EDM model in dm / sda / casd mode (resumable).

    augdiff train-diffusion --config configs/casd_cifar10.py[:smoke] \
        --config.mode={dm,sda,casd} --config.workdir=DIR

Writes ``DIR/config.json``, ``DIR/metrics.jsonl`` and orbax checkpoints under
``DIR/checkpoints``; rerunning the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import sys

import ml_collections

from augdiff.config import ConfigError
from augdiff.edm.train import NonFiniteLossError, train
from augdiff.files import locked, workdir_of


@locked(workdir_of)
def main(config: ml_collections.ConfigDict) -> int:
    try:
        last = train(config)
    except (ConfigError, FileNotFoundError, NonFiniteLossError) as e:
        print(f"augdiff train-diffusion: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"workdir": str(config.workdir), "mode": str(config.mode), **last}))
    return 0
