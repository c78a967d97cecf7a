"""The TPU table of BENCHMARKS.md from the rows ``benchmarks/tpu_table.sh`` measured.

    python benchmarks/tpu_table.py OUT_DIR

One markdown table per topology (``OUT_DIR/<topology>.jsonl``, written by ``augdiff compile
--json``), rows in the order they were compiled, then the throughput floor of each slice.
"""

from __future__ import annotations

import glob
import os
import sys

from augdiff.aot.compile import HEADER, markdown_row, read_rows

# Published figures of peers on TPUs, for scale (not the same models or settings).
PEERS = (
    "diffusers + JAX, SDXL 1024², 25 steps, CFG, on a v5e-4: four images in about 2.3 s "
    "(Hugging Face blog, \"Accelerating Stable Diffusion XL Inference with JAX on Cloud TPU "
    "v5e\", 2023)",
)


def main(argv: list[str]) -> int:
    out_dir = argv[0] if argv else "."
    for path in sorted(glob.glob(os.path.join(out_dir, "*.jsonl"))):
        rows = read_rows(path)
        if not rows:
            continue
        topo = rows[0]["topology"]
        print(f"### {topo}\n\n{HEADER}")
        for r in rows:
            print(markdown_row(r))
        print()
    print("Peers: " + "; ".join(PEERS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
