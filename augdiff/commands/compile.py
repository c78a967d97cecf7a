r"""augdiff compile: compile every program of an experiment for a TPU topology, before launch.

    augdiff compile --config configs/exp_seed003_diffinv.py --topology v5e:2x4 \
        [--stage generate] [--only NAME] [--batch N] [--json rows.jsonl] [--config.k=v ...]

Needs libtpu (pip install -e '.[tpu]'), no TPU: each jitted program the experiment runs is
built at its real size from abstract parameters (no weights), sharded on the topology's mesh
exactly as a launch shards it (config.mesh), compiled by XLA:TPU and measured per chip
(augdiff.aot.compile). One row per program; a program that does not compile or does not fit a
chip is also one line on stderr naming it and the bytes, and the exit status is 1. --json
appends each row as it is measured and skips programs already compiled there (resumable; one
that failed is tried again). --config.FIELD=VALUE overrides a field of the config.
"""

from __future__ import annotations

import argparse
import json
import sys

from augdiff.aot import chips
from augdiff.aot.compile import HEADER, compile_config, markdown_row, one_line, read_rows
from augdiff.config import ConfigError, load_config, validate
from augdiff.files import atomic_write


def _host_bounds(text: str) -> tuple[int, int, int] | None:
    if not text:
        return None
    dims = [int(x) for x in text.lower().split("x")]
    return tuple((dims + [1, 1])[:3])  # type: ignore[return-value]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="augdiff compile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/<name>.py[:variant]")
    p.add_argument("--topology", required=True,
                   help="TPU slice, e.g. v5e:2x4 (v5e-8), v5p:2x2x1 (v5p-8), v6e:2x4, v5e:16x16")
    p.add_argument("--stage", default="", help="only the programs of this stage")
    p.add_argument("--only", default="", help="only programs whose name contains this")
    p.add_argument("--batch", type=int, default=0, help="global batch instead of the config's")
    p.add_argument("--chips-per-host", default="", help="host size, e.g. 2x2 (default: Cloud "
                   "TPU's for the slice)")
    p.add_argument("--target-config", default="", help="GPU topologies (h100:8, h200:2x8): "
                   "the GPU's XLA target description (a *.gpu_target_config.pbtxt that XLA "
                   "dumps with --xla_dump_to on that GPU)")
    p.add_argument("--json", default="", help="append rows to this JSON-lines file; rows "
                   "already in it are skipped")
    p.add_argument("--md", default="", help="write the table to this markdown file")
    args, rest = p.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        print(f"augdiff compile: unexpected argument {unknown[0]!r}", file=sys.stderr)
        return 2
    chips.ensure_libtpu_env()
    try:
        chips.parse(args.topology)
        config = load_config(args.config, overrides)
        validate(config)
    except (ConfigError, chips.TopologyError) as e:
        print(f"augdiff compile: {e}", file=sys.stderr)
        return 2
    # programs compiled before are shown, not compiled again; one that failed is tried again
    previous = [r for r in read_rows(args.json)
                if r.get("topology") == args.topology and r.get("compiled")]
    rows = list(previous)
    print(f"augdiff compile: {args.config} on {args.topology}", flush=True)
    print(HEADER, flush=True)
    for r in previous:
        print(markdown_row(r), flush=True)
    status = 0
    try:
        for row in compile_config(config, args.topology, stage=args.stage, batch=args.batch,
                                  only=args.only, chips_per_host=_host_bounds(args.chips_per_host),
                                  target_config=args.target_config,
                                  done=[r["program"] for r in previous]):
            rows.append(row)
            print(markdown_row(row), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if not row.get("compiled") or not row.get("fits"):
                print(one_line(row), file=sys.stderr, flush=True)
                status = 1
    except (ConfigError, chips.TopologyError, ValueError) as e:
        print(f"augdiff compile: {e}", file=sys.stderr)
        return 2
    if args.md:
        atomic_write(args.md, (HEADER + "\n" + "\n".join(markdown_row(r) for r in rows) + "\n"))
    return status
