"""augdiff export: a synthetic store as files other tools read.

    augdiff export --store STORE --out DIR [--format folder|imagefolder|webdataset]
                   [--data PATH] [--table csv|jsonl] [--shard-size N] [--overwrite]

Formats:
  folder       DIR/<class>/<key>.png and DIR/provenance.csv (or .jsonl): one row per key with
               key, label, class, source, path, method, model, parent, prompt, seed, guidance,
               lambda / mask fields and the whole provenance as JSON.
  imagefolder  the Hugging Face imagefolder convention: DIR/<class>/<key>.png and
               DIR/metadata.jsonl (file_name, label = the store's class id, class = its name,
               and the provenance columns); load with
               datasets.load_dataset("imagefolder", data_dir=DIR).
  webdataset   WebDataset tar shards DIR/shard-000000.tar ... holding <key>.png, <key>.cls
               (class id) and <key>.json (the provenance row) per image, plus DIR/info.json
               (shards, class names, counts); read with webdataset.WebDataset(shard paths).

Class names come from the store's manifest (class_names), else from --data (an image folder
or zip, e.g. the real dataset), else they are class_000, class_001, ...

Nothing from the store is trusted as a path: a key or class name that is empty, hidden
(leading dot), has a path separator, "..", or a control character is refused (exit 1,
naming the store file and the key) before anything is written, and every file written is
checked to lie inside DIR. The export is written into a temporary folder beside DIR and
renamed into place at the end, so a failure midway leaves DIR as it was. A non-empty DIR
is refused unless --overwrite is given; --overwrite replaces DIR's contents as a whole.
"""

from __future__ import annotations

import argparse
import sys

from augdiff.data.export import FORMATS, TABLES, export


def main(argv: list[str]) -> int:
    doc = __doc__.split("\n\n", 2)
    p = argparse.ArgumentParser(
        prog="augdiff export", description=doc[0],
        epilog=doc[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="synthetic store directory")
    p.add_argument("--out", required=True, help="output folder (must be empty or missing)")
    p.add_argument("--format", default="folder", choices=FORMATS,
                   help="folder (default), imagefolder (Hugging Face) or webdataset")
    p.add_argument("--data", default="",
                   help="image folder / zip whose class names to use when the store has none")
    p.add_argument("--table", default="csv", choices=TABLES,
                   help="provenance table format of --format folder (default csv)")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="images per tar shard of --format webdataset (default 1000)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the contents of a non-empty --out")
    a = p.parse_args(argv)
    try:
        out = export(a.store, a.out, fmt=a.format, data=a.data, table=a.table,
                     shard_size=a.shard_size, overwrite=a.overwrite)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"augdiff export: error: {e}", file=sys.stderr)
        return 1
    print(f"augdiff export: {out['num_images']:,} images into {out['out_dir']} as "
          f"{out['format']} ({len(out['counts_per_class'])} classes, names from "
          f"{out['class_names_from']}); {out['table']}")
    return 0
