"""``fedguard attack {inversion,membership,client-update,exposure,all} RUN_DIR``: run the privacy attacks against a
finished run."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

__all__ = ["register"]


def _cmd_attack(args: argparse.Namespace) -> int:
    from fedguard.attacks.inversion import InverterSettings
    from fedguard.attacks.optimisation import OptimisationSettings
    from fedguard.attacks.report import REPORT_FILE, AttackOptions, attack_run

    if args.max_examples < 2 or args.public_examples < 1 or args.epochs < 1:
        raise ValueError("--max-examples must be >= 2, --public-examples and --epochs >= 1")
    if args.max_candidates < 1:
        raise ValueError(f"--max-candidates={args.max_candidates}: must be >= 1")
    if args.opt_steps < 0 or args.opt_max_examples < 0 or args.opt_candidates < 0:
        raise ValueError("--opt-steps, --opt-max-examples and --opt-candidates must be >= 0")
    optimisation = replace(OptimisationSettings(), steps=args.opt_steps, max_examples=args.opt_max_examples,
                           candidates=args.opt_candidates, seed=args.seed)
    options = AttackOptions(args.max_examples, args.public_examples, args.seed,
                            replace(InverterSettings(), epochs=args.epochs, seed=args.seed), args.max_candidates,
                            optimisation)
    report = attack_run(Path(args.run_dir), args.attack, options)
    if args.json:
        print(json.dumps(report["attacks"]))
        return 0
    for name, entry in report["attacks"].items():
        print(f"[{name}] {entry['verdict']}")
    print(f"report: {Path(args.run_dir) / REPORT_FILE} (also summarised under 'attacks' in metrics.json)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``attack`` subcommand to the ``fedguard`` parser."""
    parser = subparsers.add_parser(
        "attack", help="run the empirical privacy attacks against a finished run directory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  fedguard attack all runs/latest\n"
               "  fedguard attack inversion runs/latest --max-examples 128\n"
               "  fedguard attack exposure runs/latest --json\n\nThe run must have been made with "
               "--run-config \"capture-activations=256\" (inversion,\nmembership, client-update) and/or "
               "\"canaries=8\" (exposure).",
        description="Measure what a finished run leaks by attacking it:\n"
                    "  inversion      reconstruct client text from the captured activations (the server as\n"
                    "                 adversary: nearest-neighbour, learned (base and final client weights),\n"
                    "                 averaged releases, optimisation; the verdict is their maximum)\n"
                    "  membership     tell training examples from others with the released model (loss-threshold\n"
                    "                 and calibrated)\n"
                    "  client-update  the same against single clients' updates, as the server sees them\n"
                    "  exposure       how far the released model ranks the secrets inserted with canaries=N above\n"
                    "                 the other candidates (in 'all' when the run has canaries)\n"
                    "Inversion, membership and client-update need a run made with capture-activations=N. Writes\n"
                    "RUN_DIR/attack_report.json and an 'attacks' entry in RUN_DIR/metrics.json.")
    parser.add_argument("attack", choices=("inversion", "membership", "client-update", "exposure", "all"))
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run's output-dir, e.g. runs/latest")
    parser.add_argument("--max-examples", type=int, default=512,
                        help="captured examples to invert; members (and as many non-members) to score (default 512)")
    parser.add_argument("--public-examples", type=int, default=400,
                        help="public held-out sentences the learned inverter trains on (default 400)")
    parser.add_argument("--epochs", type=int, default=8, help="learned-inverter training epochs (default 8)")
    parser.add_argument("--max-candidates", type=int, default=10_000,
                        help="exposure: candidate secrets scored per canary; all of them when there are at most "
                             "this many, else a uniform sample and an estimated rank (default 10000)")
    parser.add_argument("--opt-steps", type=int, default=40,
                        help="optimisation inversion: Adam steps per batch of examples (default 40; 0 = keep the "
                             "learned inverter's guess)")
    parser.add_argument("--opt-max-examples", type=int, default=0,
                        help="optimisation inversion: attack at most this many of the inverted examples (seeded "
                             "sample; default 0 = all)")
    parser.add_argument("--opt-candidates", type=int, default=32,
                        help="optimisation inversion: candidate tokens per position, the learned inverter's best "
                             "(default 32; 0 = the whole vocabulary from a uniform start: slow for large ones)")
    parser.add_argument("--seed", type=int, default=0, help="the attacker's sampling seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the attacks' report entries as JSON")
    parser.set_defaults(func=_cmd_attack)
