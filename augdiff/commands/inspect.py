"""augdiff inspect: what a synthetic store holds and where its writer stands.

    augdiff inspect --store STORE [--data PATH] [--json] [--verify]

Counts per class and per source, methods, models (tiny-random test weights flagged),
filtered images (manifest counters) and the resume state (complete shards, unfinished files
of a killed writer). --verify reads every record and lists every bad file (a shard
whose bytes differ from its sidecar's hash, a record that does not read or does not match
its sidecar, a manifest or sidecar that does not parse) by name; exit 1 if there is one. A
folder that is not a store, or a corrupt one, is an error (exit 1). Thin over
augdiff.data.store.inspect_store and augdiff.data.store.verify.
"""

from __future__ import annotations

import argparse
import json
import sys

from augdiff.data.export import class_names_of
from augdiff.data.store import format_inspection, inspect_store, verify


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="augdiff inspect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="synthetic store directory")
    p.add_argument("--data", default="", help="image folder / zip whose class names to use")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--verify", action="store_true",
                   help="read every record and list the bad shards (exit 1 if any)")
    a = p.parse_args(argv)

    try:
        if a.verify:
            bad = verify(a.store)
            if a.json:
                print(json.dumps({"root": a.store, "bad": bad}, indent=2, sort_keys=True))
            else:
                for name, why in sorted(bad.items()):
                    print(f"BAD {name}: {why}")
                print(f"store {a.store}: {len(bad)} bad file(s)" if bad else
                      f"store {a.store}: every shard verified (hash, records, sidecar)")
            return 1 if bad else 0
        info = inspect_store(a.store)
        names = class_names_of(a.data) or info.get("class_names") or None
    except (OSError, ValueError, RuntimeError) as e:
        print(f"augdiff inspect: error: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
    else:
        print("\n".join(format_inspection(info, names)))
    return 0
