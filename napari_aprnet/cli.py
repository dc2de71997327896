"""The ``aprnet`` command line: one sub-command per task.

Sub-commands are registered by small modules, each owning a group:
``cli_apr`` (convert, info, sweep) and ``cli_train`` (train, eval, predict).
Each exposes ``register(subparsers)``; a registered parser sets ``func``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

_GROUPS = ("napari_aprnet.cli_apr", "napari_aprnet.cli_train")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="aprnet", description="APR conversion and APRNet training.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
