r"""``augdiff train``: train and evaluate a classifier on real (+ synthetic) data.

    augdiff train --config configs/classify_cifar10.py:smoke \
        --config.data.path=../shared/data/cifar10-jpeg.zip --config.workdir=DIR
"""

from __future__ import annotations

import json
import sys

import ml_collections

from augdiff.config import ConfigError, require
from augdiff.files import locked, workdir_of
from augdiff.methods import online
from augdiff.train.classifier import NonFiniteLossError, train_and_evaluate


@locked(workdir_of)
def main(config: ml_collections.ConfigDict) -> int:
    try:
        require(config, "workdir", "model.name", "batch_size", "epochs")
        if not (config.data.get("path") or config.data.get("tfds_name")):
            raise ConfigError(
                "set --config.data.path (image folder or zip) or --config.data.tfds_name"
            )
        result = train_and_evaluate(config, online=online.build)
    except (ConfigError, NonFiniteLossError, FileNotFoundError, ValueError) as e:
        print(f"augdiff train: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    final = {k: result[k] for k in ("train_loss", "test_top1", "test_top5") if k in result}
    print(json.dumps({"workdir": config.workdir, **final}), flush=True)
    return 0
