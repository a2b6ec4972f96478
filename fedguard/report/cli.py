"""``fedguard report RUN_DIR``: write a run's report page."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]

DESCRIPTION = """\
Write RUN_DIR/report.html: one page you can open in any browser, offline, that shows what a run
did: its configuration, accuracy and loss per round (perplexity for causal LMs, beside a
centralized baseline when there is one), the privacy loss epsilon per adversary and round
(guarantees and estimates kept apart), bytes and time per round, dropped and refused clients,
attack verdicts and generated text. The same plots are written as PNG files to RUN_DIR/report/.
Parts the run does not have are left out."""

EPILOG = """\
examples:
  fedguard report runs/latest
  fedguard report runs/latest --baseline runs/centralized.json

A baseline file (or RUN_DIR/baseline.json, used when present) looks like
  {"label": "centralized LoRA", "rounds": [{"round": 1, "accuracy": 0.79}, {"round": 2, "accuracy": 0.82}]}"""


def _cmd_report(args: argparse.Namespace) -> int:
    from fedguard.report.writer import write_report

    path = write_report(Path(args.run_dir), args.baseline)
    print(f"report: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to the ``fedguard`` parser."""
    parser = subparsers.add_parser("report", help="write a self-contained HTML report of a finished run",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run's output-dir, e.g. runs/latest")
    parser.add_argument("--baseline", type=Path, default=None, metavar="PATH",
                        help="centralized-baseline JSON to compare accuracy with (default: RUN_DIR/baseline.json "
                             "when present)")
    parser.set_defaults(func=_cmd_report)
    return parser
