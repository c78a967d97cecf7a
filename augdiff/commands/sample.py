r"""``augdiff sample``: sample the latest checkpoint of a workdir into a synthetic store.

    augdiff sample --config configs/casd_cifar10.py[:smoke] --config.workdir=DIR \
        --config.num_samples=N [--config.sample.store=STORE] [--config.sample.source_label=0]

Uses the same config as ``train-diffusion`` (a mismatch in model/EDM fields is an error naming
them); resumable: examples already in the store are skipped.
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections

from augdiff.config import ConfigError
from augdiff.edm.sampling import sample_to_store
from augdiff.files import locked


def store_of(config: ml_collections.ConfigDict) -> str:
    """The store ``sample`` writes (``sample.store``, default ``<workdir>/store``): its lock."""
    store = str(config.get("sample", {}).get("store", "") or "")
    return store or (os.path.join(str(config.workdir), "store") if config.get("workdir") else "")


@locked(store_of)
def main(config: ml_collections.ConfigDict) -> int:
    try:
        summary = sample_to_store(config)
    except (ConfigError, FileNotFoundError) as e:
        print(f"augdiff sample: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0
