"""augdiff export: a synthetic store as an image folder plus a provenance table.

    augdiff export --store STORE --out DIR [--data PATH] [--table csv|jsonl]

Writes DIR/<class>/<key>.png and DIR/provenance.csv (one row per key: key, label, class,
source, path, method, model, parent image, prompt, seed, guidance, λ / mask fields and the
full provenance as JSON); --data (an image folder / zip, e.g. the real dataset) names the
class folders, else they are class_<id>. Thin over augdiff.data.store.export_store.
"""

from __future__ import annotations

import argparse
import sys

from augdiff.data.sources import open_real_source
from augdiff.data.store import export_store


def class_names_of(data: str) -> list[str] | None:
    """Class names of the ``train`` split of the image folder / zip ``data`` (``None``: none)."""
    if not data:
        return None
    return list(open_real_source({"path": data}, "train", subset=False).class_names)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="augdiff export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="synthetic store directory")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data", default="", help="image folder / zip whose class names to use")
    p.add_argument("--table", default="csv", choices=("csv", "jsonl"))
    a = p.parse_args(argv)
    try:
        out = export_store(a.store, a.out, class_names=class_names_of(a.data), table=a.table)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"augdiff export: error: {e}", file=sys.stderr)
        return 2
    print(f"augdiff export: {out['num_images']:,} images into {out['out_dir']} "
          f"({len(out['counts_per_class'])} class folders); provenance: {out['table']}")
    return 0
