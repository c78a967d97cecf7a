"""Loader throughput: images/s of real-only and real+synthetic (1:1) streams, 0 and N workers.

    python benchmarks/bench_loader.py [--zip ../shared/data/cifar10-jpeg.zip] [--batches 40]

The synthetic store is built once in a temporary directory from real CIFAR-10 images (PNG
shards, as every augdiff generator writes them). Every figure is also printed as a ratio to
the real-only, 0-worker stream measured in the same run, so runs on different machines can be
compared by their ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from absl import flags

flags.FLAGS.mark_as_parsed()

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from augdiff.data.loader import MixedLoader  # noqa: E402
from augdiff.data.sources import open_real_source  # noqa: E402
from augdiff.data.store import StoreWriter, SyntheticStore  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_store(real, root: str, n: int) -> SyntheticStore:
    with StoreWriter(root, method="bench-copy", process_index=0, shard_size=256) as w:
        for i in tqdm(range(n), desc="building synthetic store", leave=False):
            rec = real[i * (len(real) // n)]
            w.add(f"copy-{i}", rec["image"], int(rec["label"]), provenance={"parents": [i]})
    return SyntheticStore(root)


def measure(real, synthetic, *, share: float, workers: int, batch: int, batches: int) -> float:
    """Images/s over ``batches`` batches after one warm-up batch (worker start-up excluded)."""
    ld = MixedLoader(
        real,
        synthetic if share > 0 else None,
        batch_size=batch,
        schedule=share,
        epochs=1,
        steps_per_epoch=batches + 1,
        seed=0,
        num_workers=workers,
        process_index=0,
        process_count=1,
    )
    with ld:
        it = iter(ld)
        next(it)
        t0 = time.perf_counter()
        n = sum(b["image"].shape[0] for b in it)
        return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zip", default=os.path.join(REPO, "..", "shared/data/cifar10-jpeg.zip"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    p.add_argument("--store-size", type=int, default=2048)
    args = p.parse_args()
    cfg = ml_collections.ConfigDict(dict(path=args.zip, image_size=32, channels=3))
    real = open_real_source(cfg, "train")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores")
    print(f"real: {real}, batch {args.batch_size}, {args.batches} timed batches per row\n")
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(real, tmp, args.store_size)
        rows = []
        for workers in (int(w) for w in args.workers.split(",")):
            for name, share in (("real only", 0.0), ("mixed 1:1", 0.5)):
                ips = measure(
                    real, store, share=share, workers=workers,
                    batch=args.batch_size, batches=args.batches,
                )  # fmt: skip
                rows.append((name, workers, ips))
        base = rows[0][2]
        print(f"{'stream':<12}{'workers':>8}{'images/s':>12}{'vs real/0w':>12}")
        for name, workers, ips in rows:
            print(f"{name:<12}{workers:>8}{ips:>12.0f}{ips / base:>11.2f}x")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
