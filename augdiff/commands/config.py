"""augdiff config show: print a config as resolved, without running anything.

    augdiff config show configs/casd_cifar10.py:smoke --config.train.lr=0.01
    augdiff config show configs/quickstart.py --json

Loads CONFIG[:variant] (a shipped configs/NAME.py or a file of your own), applies the
--config.FIELD=VALUE overrides, checks every value range and prints the result: YAML-like as
ml_collections prints a ConfigDict, or JSON with --json. Nothing is trained, sampled or
written. A config file is Python and runs when loaded: load only configs you trust.
"""

from __future__ import annotations

import argparse
import json
import sys

from augdiff.config import ConfigError, load_config, to_dict, validate


def build_parser() -> argparse.ArgumentParser:
    """The flags of augdiff config."""
    p = argparse.ArgumentParser(prog="augdiff config", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True, metavar="show")
    show = sub.add_parser("show", help="print CONFIG[:variant] as resolved",
                          description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("spec", metavar="CONFIG[:variant]",
                      help="configs/NAME.py[:variant] (shipped) or a path to a config file")
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.epilog = ("--config.FIELD=VALUE  set one field (dotted path); repeatable; an unknown "
                   "field or a value out of range is an error naming the field")
    p.epilog = show.format_help()
    return p


def main(argv: list[str]) -> int:
    args, rest = build_parser().parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        print(f"augdiff config: unexpected argument {unknown[0]!r}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.spec, overrides)
        validate(config)
    except ConfigError as e:
        print(f"augdiff config: config error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(to_dict(config), indent=2, sort_keys=True) if args.json else str(config))
    return 0
