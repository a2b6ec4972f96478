"""``fedguard`` command-line entry point; subcommands register themselves via ``register(subparsers)``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedguard import __version__


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    from fedguard.attacks import cli as attacks_cli
    from fedguard.privacy import cli as privacy_cli

    parser = argparse.ArgumentParser(prog="fedguard", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fedguard {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    privacy_cli.register(subparsers)
    attacks_cli.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError) as exc:
        print(f"fedguard: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
