"""The ``midre`` command line.

Each group of commands lives in its own module with a ``register(subparsers)`` function that adds
its sub-commands and sets ``func`` on them; this file only assembles them. Service commands
(serve, worker, demo, admin, jobs, predict) live in ``services/cli.py`` and are loaded only when the
service package is installed, so ``midre`` stays usable on a bare PyTorch machine.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (
    "midre.commands.train",
    "midre.commands.study",
    "services.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="midre",
        description="MIDRE: harden image classifiers against model inversion with random erasing, "
        "and measure the privacy they leak.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # optional layer not installed (e.g. bare GPU box)
            if exc.name and name.startswith(exc.name.split(".")[0]):
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        # Library errors name the field or file that is wrong; show them without a traceback.
        print(f"midre {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
