"""``fedguard`` command-line entry point: the tools that work on runs and privacy budgets outside ``flwr run``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedguard import __version__

DESCRIPTION = """\
FedGuard tools for federated split-LoRA runs (start a run itself with `flwr run .`):

  privacy   compute differential-privacy budgets: epsilon for a noise level, the noise for a target
            epsilon, or a summary of a run's privacy ledger
  attack    attack a finished run (text reconstruction, membership inference, canary exposure) to
            measure what it leaks in practice
  report    write a self-contained HTML page (and PNG plots) describing a finished run
  check     check a run's config and GPU request (--federation-config) before `flwr run`

Run `fedguard COMMAND --help` for the options of each command."""

EPILOG = """\
examples:
  fedguard report runs/latest
  fedguard check --federation-config "client-resources-num-gpus=0.25"
  fedguard attack all runs/latest
  fedguard privacy epsilon --noise-multiplier 1.0 --sample-rate 0.01 --steps 1000 --delta 1e-5"""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    from fedguard import check as check_cli
    from fedguard.attacks import cli as attacks_cli
    from fedguard.privacy import cli as privacy_cli
    from fedguard.report import cli as report_cli

    parser = argparse.ArgumentParser(prog="fedguard", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fedguard {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    privacy_cli.register(subparsers)
    attacks_cli.register(subparsers)
    report_cli.register(subparsers)
    check_cli.register(subparsers)
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
