"""The ``midre`` command line.

Each group of commands lives in its own module with a ``register(subparsers)`` function that adds
its sub-commands and sets ``func`` on them; this file only assembles them. The science commands
(train, pipeline, attack, prior, evaluate) are built in and need only the core dependencies. Other
packages add their groups through the ``midre.commands`` entry-point group (the service's serve,
worker, demo, admin, jobs, datasets, models, predict, keys, webhooks, integrations come from
``services.cli`` that way), so this module never names the service and ``midre`` stays usable on a
bare PyTorch machine.

Registering the science groups imports parts of the library (a default of ``midre sweep`` comes from
``midre.sweep``, which imports torch: seconds). A command that a plugin provides, such as the REST
client ``midre jobs list``, needs none of that, so :func:`main` registers only the plugins when the
command line names one of their commands; ``midre --help`` and the science commands get every group.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

#: The built-in groups: the science layer, importable with torch + torchvision + numpy.
COMMAND_MODULES = (
    "midre.commands.train",
    "midre.commands.study",
    "midre.commands.stylegan",
)

#: Entry-point group through which installed packages add sub-commands (``register(subparsers)``).
PLUGIN_GROUP = "midre.commands"

log = logging.getLogger(__name__)


def _plugins() -> list[Callable[[argparse._SubParsersAction], None]]:  # type: ignore[type-arg]
    """The ``register`` functions of the installed plugins, sorted by entry-point name.

    A plugin that fails to import is skipped with a warning rather than taking the science
    commands down with it.
    """
    found = []
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            found.append(ep.load())
        except ImportError as exc:
            log.warning("midre: command plugin %s (%s) not loaded: %s", ep.name, ep.value, exc)
    return found


def _empty_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:  # type: ignore[type-arg]
    parser = argparse.ArgumentParser(
        prog="midre",
        description="MIDRE: harden image classifiers against model inversion with random erasing, "
        "and measure the privacy they leak.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def command_word(argv: list[str]) -> str | None:
    """The sub-command named on a command line (``midre -v jobs list`` -> ``jobs``), or ``None``.

    The top-level parser has only flags without values (``-v``, ``-h``), so the first word that is not
    a flag is the command; with ``-h`` before it, the whole list is wanted (``None``).
    """
    for word in argv:
        if word in ("-h", "--help"):
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``midre`` parser: every group, or only the plugins' when ``command`` is one of theirs.

    The plugins register first into a throw-away parser to learn their command names; that costs
    only argparse work, since a plugin imports its heavy modules when a command runs.
    """
    plugins = _plugins()
    parser, subparsers = _empty_parser()
    if command is not None:
        _, probe = _empty_parser()
        for register in plugins:
            register(probe)
        if command in probe.choices:
            for register in plugins:
                register(subparsers)
            return parser
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for register in plugins:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(command_word(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        build_parser().print_help()  # every group, as `midre --help` lists them
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
