"""``augdiff evaluate``: FID, KID, precision/recall/density/coverage and replication of a
synthetic store against a real split; writes ``workdir/metrics.json``."""

from __future__ import annotations

import sys

import jax
import ml_collections

from augdiff.files import locked, workdir_of
from augdiff.metrics.evaluate import evaluate_store, summary_lines


@locked(workdir_of)
def main(config: ml_collections.ConfigDict) -> int:
    try:
        result = evaluate_store(config)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"augdiff evaluate: error: {e}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        print(f"augdiff evaluate: {result['synthetic']['num_images']} synthetic vs "
              f"{result['real']['num_images']} real ({result['real']['split']}) images")
        for line in summary_lines(result):
            print("  " + line)
        print(f"augdiff evaluate: wrote {config.workdir}/metrics.json", flush=True)
    return 0
