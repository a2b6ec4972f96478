"""``fedguard privacy`` subcommands: epsilon, sigma, ledger."""

from __future__ import annotations

import argparse
import json
import math

from .accountant import EdgeworthAccountant
from .calibration import noise_multiplier_for
from .certified import DEFAULT_VALUE_DISCRETIZATION_INTERVAL
from .events import MechanismEvent
from .ledger import PrivacyLedger

__all__ = ["register"]


def _rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    return float(acc.get_epsilon(delta))


def _cmd_epsilon(args: argparse.Namespace) -> int:
    acc = EdgeworthAccountant(None, args.order, value_discretization_interval=args.vdi)
    acc.add(args.noise_multiplier, args.sample_rate, args.steps)
    res = acc.epsilon(args.delta, warn=False)  # the CLI prints its own warning
    rdp = None if args.no_rdp else _rdp_epsilon(args.noise_multiplier, args.sample_rate, args.steps, args.delta)
    if args.json:
        print(json.dumps({
            "edgeworth": res.epsilon_estimate,
            "certified": res.epsilon_certified,
            "rdp": rdp,
            "delta": args.delta,
            "order": args.order,
            "noise_multiplier": args.noise_multiplier,
            "sample_rate": args.sample_rate,
            "steps": args.steps,
            "relative_gap": res.relative_gap,
            "certified_method": res.certified_method,
            "neighbouring_relation": "add-or-remove-one (example level)",
        }))
        return 0
    print(f"Poisson-subsampled Gaussian: sigma={args.noise_multiplier:g} q={args.sample_rate:g} "
          f"steps={args.steps} delta={args.delta:g} (add/remove neighbours)")
    print(f"  Edgeworth estimate (order {args.order}):  epsilon = {res.epsilon_estimate:.4f}   (approximation)")
    print(f"  certified upper bound:          epsilon = {res.epsilon_certified:.4f}   [{res.certified_method}]")
    if rdp is not None:
        print(f"  Opacus RDP (for comparison):    epsilon = {rdp:.4f}")
    if res.understates():
        print(f"  WARNING: the estimate is {-100 * res.relative_gap:.1f}% below the certified bound; "
              "use the certified value.")
    return 0


def _cmd_sigma(args: argparse.Namespace) -> int:
    sigma = noise_multiplier_for(args.target_epsilon, args.delta, args.sample_rate, args.steps,
                                 order=args.order, method=args.method, relation=args.relation,
                                 value_discretization_interval=args.vdi)
    acc = EdgeworthAccountant(None, args.order, value_discretization_interval=args.vdi)
    acc.add_event(MechanismEvent("dp-sgd", noise_multiplier=sigma, sample_rate=args.sample_rate, steps=args.steps,
                                 relation=args.relation))
    res = acc.epsilon(args.delta, warn=False)  # the CLI prints its own warning
    if args.json:
        print(json.dumps({"noise_multiplier": sigma, "method": args.method, "edgeworth": res.epsilon_estimate,
                          "certified": res.epsilon_certified, "delta": args.delta,
                          "target_epsilon": args.target_epsilon, "relation": args.relation}))
        return 0
    print(f"noise multiplier sigma = {sigma:.6f}  (calibrated on the {args.method} epsilon, "
          f"{args.relation} neighbours)")
    print(f"  at this sigma: Edgeworth epsilon = {res.epsilon_estimate:.4f}, certified epsilon = "
          f"{res.epsilon_certified:.4f} (delta={args.delta:g})")
    if args.method == "edgeworth" and res.epsilon_certified > args.target_epsilon * 1.0001:
        print("  NOTE: the certified epsilon exceeds the target; use --method certified for a guarantee.")
    return 0


def _cmd_ledger(args: argparse.Namespace) -> int:
    """Summarise a ledger. Without --kind each release kind (dp-sgd, activation, label-rr ...) is accounted
    separately: they protect different releases, so one epsilon over all of them would mean nothing."""
    ledger = PrivacyLedger.load(args.path)
    if args.kind:
        groups = [args.kind]
    else:
        groups = [[k] for k in sorted({e.kind for c in ledger.clients() for e in ledger.events(c)})]
    summaries = {",".join(kinds): ledger.summary(args.delta, kinds, warn=False) for kinds in groups}
    if args.json:
        if args.kind:
            print(json.dumps(next(iter(summaries.values())).to_dict()))
        else:
            print(json.dumps({kind: summary.to_dict() for kind, summary in summaries.items()}))
        return 0
    print(f"ledger {args.path}: {len(ledger.clients())} clients, delta={args.delta:g}")
    for kind, summary in summaries.items():
        print(f"release {kind}:")
        print(f"  {'client':<20} {'steps':>8} {'edgeworth':>10} {'certified':>10}")
        for cid, est in summary.per_client.items():
            print(f"  {cid:<20} {est.num_steps:>8} {est.epsilon_estimate:>10.4f} {est.epsilon_certified:>10.4f}")
        if summary.worst_client is not None:
            print(f"  worst client: {summary.worst_client} (certified epsilon {summary.worst.epsilon_certified:.4f}); "
                  f"median certified epsilon {summary.median_epsilon_certified:.4f}, "
                  f"median estimate {summary.median_epsilon_estimate:.4f}")
    return 0


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _common(p: argparse.ArgumentParser, with_sigma: bool) -> None:
    if with_sigma:
        p.add_argument("--noise-multiplier", type=_positive_float, required=True,
                       help="sigma = noise std / L2 sensitivity (clipping norm)")
    p.add_argument("--sample-rate", type=_positive_float, required=True, help="Poisson sampling probability q in (0, 1]")
    p.add_argument("--steps", type=_positive_int, required=True, help="number of composed steps")
    p.add_argument("--delta", type=_positive_float, required=True, help="target delta in (0, 1)")
    p.add_argument("--order", type=int, choices=(1, 2), default=1, help="Edgeworth order (default 1)")
    p.add_argument("--vdi", type=_positive_float, default=DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
                   help="PLD value discretisation interval of the certified bound (default 1e-4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``privacy`` command (with subcommands) to a top-level ``fedguard`` parser."""
    privacy = subparsers.add_parser(
        "privacy", help="differential-privacy accounting: epsilon, noise for a target epsilon, ledgers",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Differential-privacy budgets for DP-SGD-style training (noise added to clipped gradients\n"
                    "of randomly sampled batches):\n"
                    "  epsilon  how private a noise level is: epsilon after a number of steps\n"
                    "  sigma    the noise level that reaches a target epsilon\n"
                    "  ledger   what each client of a run has spent, from its privacy_ledger.json\n"
                    "Smaller epsilon = more private. The certified epsilon is a guarantee; the Edgeworth and RDP\n"
                    "numbers are estimates or other bounds, shown for comparison.",
        epilog="examples:\n"
               "  fedguard privacy epsilon --noise-multiplier 1.0 --sample-rate 0.01 --steps 1000 --delta 1e-5\n"
               "  fedguard privacy sigma --target-epsilon 8 --sample-rate 0.01 --steps 1000 --delta 1e-5\n"
               "  fedguard privacy ledger runs/latest/privacy_ledger.json")
    sub = privacy.add_subparsers(dest="privacy_command", required=True)

    p = sub.add_parser(
        "epsilon", help="epsilon of a Poisson-subsampled Gaussian composition",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="How private is a noise level? Prints the epsilon (at --delta) of --steps steps that each\n"
                    "sample every example with probability --sample-rate and add Gaussian noise of std\n"
                    "noise-multiplier x clipping norm: the certified upper bound (a guarantee) beside the\n"
                    "Edgeworth estimate and, for comparison, Opacus' RDP bound.",
        epilog="example:\n"
               "  fedguard privacy epsilon --noise-multiplier 1.0 --sample-rate 0.01 --steps 1000 --delta 1e-5")
    _common(p, with_sigma=True)
    p.add_argument("--no-rdp", action="store_true", help="skip the Opacus RDP comparison")
    p.set_defaults(func=_cmd_epsilon)

    p = sub.add_parser(
        "sigma", help="noise multiplier for a target epsilon",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="How much noise do I need? Finds the noise multiplier (noise std / clipping norm) whose\n"
                    "epsilon after --steps steps at --sample-rate is --target-epsilon (at --delta), and prints\n"
                    "both the certified epsilon and the estimate at that noise.",
        epilog="example:\n  fedguard privacy sigma --target-epsilon 8 --sample-rate 0.01 --steps 1000 --delta 1e-5")
    p.add_argument("--target-epsilon", type=_positive_float, required=True)
    _common(p, with_sigma=False)
    p.add_argument("--method", choices=("certified", "edgeworth"), default="certified",
                   help="calibrate on the certified bound (default: a guarantee) or on the Edgeworth estimate "
                        "(fast, but may under-state epsilon: not a guarantee)")
    p.add_argument("--relation", choices=("add-remove", "replace-one"), default="add-remove",
                   help="neighbouring relation (default add-remove; replace-one when the data set's size is "
                        "public, as FedGuard clients account)")
    p.set_defaults(func=_cmd_sigma)

    p = sub.add_parser(
        "ledger", help="summarise a saved privacy ledger",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="What has each client spent? Reads a run's privacy_ledger.json and prints, per kind of\n"
                    "release (dp-sgd, activation, label-rr, ...), every client's steps and epsilon (estimate and\n"
                    "certified), the worst client and the median.",
        epilog="examples:\n  fedguard privacy ledger runs/latest/privacy_ledger.json\n"
               "  fedguard privacy ledger runs/latest/privacy_ledger.json --kind dp-sgd --json")
    p.add_argument("path")
    p.add_argument("--delta", type=_positive_float, default=1e-5, help="delta (default 1e-5)")
    p.add_argument("--kind", action="append", default=None, help="only events of this kind (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_ledger)
    return privacy
