"""The ``aprnet`` command line: one sub-command per task.

Sub-commands are registered by one module per group: :mod:`.apr` (convert,
info, sweep) and :mod:`.train` (train, eval, predict). Each exposes
``register(subparsers)``; a registered parser sets ``func``.
"""
from __future__ import annotations

import argparse
import sys

from napari_aprnet.cli.apr import register as register_apr
from napari_aprnet.cli.train import register as register_train

_GROUPS = (register_apr, register_train)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="aprnet", description="APR conversion and APRNet training.")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _GROUPS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aprnet`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("aprnet: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError, TypeError, MemoryError) as exc:
        print(f"aprnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
