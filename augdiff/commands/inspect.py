"""augdiff inspect: what a synthetic store holds and where its writer stands.

    augdiff inspect --store STORE [--data PATH] [--json]

Counts per class and per source, methods, models (tiny-random test weights flagged),
filtered images (manifest counters) and the resume state (complete shards, unfinished files
of a killed writer). Thin over augdiff.data.store.inspect_store.
"""

from __future__ import annotations

import argparse
import json
import sys

from augdiff.commands.export import class_names_of
from augdiff.data.store import format_inspection, inspect_store


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="augdiff inspect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="synthetic store directory")
    p.add_argument("--data", default="", help="image folder / zip whose class names to use")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)

    try:
        info = inspect_store(a.store)
        names = class_names_of(a.data)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"augdiff inspect: error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
    else:
        print("\n".join(format_inspection(info, names)))
    return 0
