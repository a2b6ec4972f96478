"""Privacy sweep: accuracy, certified ε and empirical attack success as the defences are turned up.

Each point is one federated run (`flwr run .` in isolation, via ``fedguard.apps.local_run.flwr_run``, with
``capture-activations`` on) followed by ``fedguard attack all`` on its run directory. The points vary one
knob at a time around a base configuration:

* ``act``: activation noise ``act-noise-multiplier`` σ at a fixed ``act-clip-norm`` C (local Gaussian on the
  hidden states; certified ``epsilon_activation``);
* ``dp``: DP-SGD ``dp-noise-multiplier`` over the whole split model (certified ``epsilon_model_certified``, against third parties);
* ``split``: the split layer (no noise).

Writes ``OUT/sweep.csv``, ``OUT/accuracy_vs_epsilon.png`` (accuracy against the certified ε of the release
each point protects; points without a guarantee are drawn at the right edge, marked "none"),
``OUT/attack_vs_accuracy.png`` (best inversion content-token recovery and membership AUC against accuracy),
and prints two markdown tables: the sweep, and a GuardedTuning-style summary (utility, privacy as ε per
release and the best attack, cost as client compute and bytes per round, side by side). Usage::

    python simulations/privacy_sweep.py --out runs/privacy-sweep                 # the whole sweep (hours on CPU)
    python simulations/privacy_sweep.py --quick --out /tmp/sweep-check           # one tiny point, to check it runs
    python simulations/privacy_sweep.py --axes dp --canaries 16 --canary-repeats 8  # + label-flip canary memorisation
    python simulations/privacy_sweep.py --axes act --act-sigmas 0,0.05,0.2       # one axis, chosen values
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from fedguard.apps.local_run import flwr_run
from fedguard.attacks.inversion import InverterSettings
from fedguard.attacks.report import AttackOptions, attack_run
from fedguard.privacy.certified import gaussian_epsilon

FIELDS = ["point", "split_layer", "act_clip_norm", "act_noise_multiplier", "dp_noise_multiplier", "accuracy",
          "epsilon_model_certified", "epsilon_activation", "nn_recovery", "learned_recovery",
          "prior_recovery", "rouge_l", "membership_auc", "membership_calibrated_auc", "membership_tpr_at_1pct",
          "epsilon_activation_per_release", "client_update_auc", "client_seconds_per_round", "mb_per_round",
          "canary_flip_gap", "canary_margin_z",
          "run_seconds", "attack_seconds"]


@dataclass(frozen=True)
class Point:
    name: str
    overrides: dict


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def sweep_points(args: argparse.Namespace) -> list[Point]:
    """The runs of the sweep: the base config, then one knob at a time (duplicates of the base dropped)."""
    base = {"split-layer": args.split_layer}
    points = [Point("base", base)]
    if "act" in args.axes:
        points += [Point(f"act-sigma={s:g}", {**base, "act-clip-norm": args.act_clip_norm, "act-noise-multiplier": s})
                   for s in _floats(args.act_sigmas) if s > 0]
    if "dp" in args.axes:
        points += [Point(f"dp-sigma={s:g}", {**base, "dp-noise-multiplier": s})
                   for s in _floats(args.dp_sigmas) if s > 0]
    if "split" in args.axes:
        points += [Point(f"split={int(k)}", {"split-layer": int(k)}) for k in _floats(args.splits)
                   if int(k) != args.split_layer]
    return points[:1] if args.quick else points


def _last(rounds: list[dict], key: str) -> float | None:
    values = [r.get(key) for r in rounds if r.get(key) is not None]
    return values[-1] if values else None


def run_point(point: Point, args: argparse.Namespace) -> dict:
    """One `flwr run` and the attacks on it; a CSV row."""
    folder = (args.out / point.name).resolve()
    run_dir = folder / "run"
    config = {"num-server-rounds": args.rounds, "local-steps": args.local_steps, "batch-size": args.batch_size,
              "eval-examples": args.eval_examples, "capture-activations": args.capture, "seed": args.seed,
              "output-dir": str(run_dir), "canaries": args.canaries, "canary-repeats": args.canary_repeats,
              **point.overrides}
    if args.model:
        config["model"] = args.model
    started = time.perf_counter()
    result = flwr_run(folder, config, num_supernodes=args.supernodes, timeout=args.timeout)
    (folder / "flwr.log").write_text(result.stdout + result.stderr)
    run_seconds = time.perf_counter() - started
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file() or not json.loads(metrics_path.read_text()).get("rounds"):
        raise RuntimeError(f"{point.name}: the run failed (no rounds in {metrics_path}); see {folder / 'flwr.log'}")
    started = time.perf_counter()
    options = AttackOptions(args.max_examples, args.public_examples, args.seed,
                            InverterSettings(epochs=args.epochs, seed=args.seed))
    report = attack_run(run_dir, "all", options)["attacks"]
    attack_seconds = time.perf_counter() - started
    metrics = json.loads(metrics_path.read_text())
    nn, learned, member = (report[k]["metrics"] for k in ("nn-inversion", "learned-inversion", "membership"))
    update = report.get("client-update-membership", {}).get("metrics", {})
    canary = report.get("label-flip-memorisation", {}).get("metrics")  # with --canaries
    rounds = metrics["rounds"]
    sigma, clip = config.get("act-noise-multiplier", 0.0), config.get("act-clip-norm", 0.0)
    return {
        "point": point.name,
        "split_layer": config["split-layer"],
        "act_clip_norm": config.get("act-clip-norm", 0.0),
        "act_noise_multiplier": config.get("act-noise-multiplier", 0.0),
        "dp_noise_multiplier": config.get("dp-noise-multiplier", 0.0),
        "accuracy": metrics["final_accuracy"],
        "epsilon_model_certified": _last(metrics["rounds"], "epsilon_model_certified"),
        "epsilon_activation": _last(metrics["rounds"], "epsilon_activation"),
        "nn_recovery": nn["content_token_recovery_rate"],
        "learned_recovery": learned["content_token_recovery_rate"],
        "prior_recovery": learned["prior_baseline"]["content_token_recovery_rate"],
        "rouge_l": max(nn["rouge_l_f1"], learned["rouge_l_f1"]),
        "membership_auc": member["loss-threshold"]["auc"],
        "membership_calibrated_auc": member["calibrated"]["auc"],
        "membership_tpr_at_1pct": member["loss-threshold"]["tpr_at_fpr"],
        # One release of one example's hidden states: Gaussian, sensitivity 2C (replace-one), std sigma*C.
        "epsilon_activation_per_release": (gaussian_epsilon(2.0 / sigma, metrics["rounds"][-1]["privacy_delta"])
                                           if sigma > 0 and clip > 0 else None),
        "client_update_auc": update.get("isolated-update-difference", {}).get("auc"),
        "client_seconds_per_round": sum(r["client_seconds"] for r in rounds) / len(rounds),
        "mb_per_round": sum(r["bytes_up"] + r["bytes_down"] for r in rounds) / len(rounds) / 1e6,
        "canary_flip_gap": canary["trained"]["flip_rate_gap"] if canary else None,
        "canary_margin_z": canary["trained"]["margin_z"] if canary else None,
        "run_seconds": round(run_seconds, 1),
        "attack_seconds": round(attack_seconds, 1),
    }


def best_recovery(row: dict) -> float:
    """The better of the two inversions' content-token recovery (0 when neither ran)."""
    return max(row["nn_recovery"] or 0.0, row["learned_recovery"] or 0.0)


def _fmt(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    columns = ["point", "accuracy", "epsilon_model_certified", "epsilon_activation", "nn_recovery",
               "learned_recovery", "prior_recovery", "rouge_l", "membership_auc", "membership_tpr_at_1pct"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    """GuardedTuning-style: per configuration, utility, privacy (certified ε per release / in total and the
    best attack's success) and cost (client compute and bytes per round), side by side."""
    def pct(value: float | None) -> str:
        return "none" if value is None else f"{100 * value:.1f}%"

    header = ("| configuration | accuracy | ε activations, per release (δ = run's dp-delta) | "
              "ε adapter, whole run (certified, δ = run's dp-delta) | "
              "best token recovery (prior) | best membership AUC (released model / client update) | "
              "client s / round | MB / round |")
    lines = [header, "|" + "---|" * 8]
    for row in rows:
        recovery = best_recovery(row)
        update = row.get("client_update_auc")
        lines.append(
            f"| {row['point']} | {pct(row['accuracy'])} | {_fmt(row['epsilon_activation_per_release'])} | "
            f"{_fmt(row['epsilon_model_certified'])} | {pct(recovery)} ({pct(row['prior_recovery'])}) | "
            f"{row['membership_auc']:.3f} / {'n/a' if update is None else f'{update:.3f}'} | "
            f"{row['client_seconds_per_round']:.1f} | {row['mb_per_round']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> list[Path]:
    """The two figures; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def epsilon(row: dict) -> float | None:
        if row["dp_noise_multiplier"]:
            return row["epsilon_model_certified"]
        if row["act_noise_multiplier"]:
            return row["epsilon_activation"]
        return None

    finite = [epsilon(r) for r in rows if epsilon(r) is not None and math.isfinite(epsilon(r))]
    edge = (max(finite) * 10) if finite else 1.0
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, marker, pick in (("DP-SGD (adapter ε)", "o", lambda r: r["dp_noise_multiplier"] > 0),
                                ("activation noise (activation ε)", "s", lambda r: r["act_noise_multiplier"] > 0),
                                ("no noise (no guarantee)", "x", lambda r: not r["dp_noise_multiplier"]
                                 and not r["act_noise_multiplier"])):
        chosen = [r for r in rows if pick(r)]
        if chosen:
            xs = [epsilon(r) if epsilon(r) is not None else edge for r in chosen]
            ax.scatter(xs, [r["accuracy"] for r in chosen], marker=marker, label=label)
            for x, r in zip(xs, chosen):
                ax.annotate(r["point"], (x, r["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"certified ε at the run's δ (\"none\" drawn at {edge:.3g})")
    ax.set_ylabel("final accuracy")
    ax.set_title("Accuracy vs certified ε")
    ax.legend(fontsize=7)
    fig.tight_layout()
    first = out / "accuracy_vs_epsilon.png"
    fig.savefig(first, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    accuracy = [r["accuracy"] for r in rows]
    ax.scatter(accuracy, [best_recovery(r) for r in rows], marker="o",
               label="inversion: best content-token recovery")
    ax.scatter(accuracy, [r["membership_auc"] for r in rows], marker="^", label="membership: loss-attack AUC")
    for r in rows:
        ax.annotate(r["point"], (r["accuracy"], best_recovery(r)), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("final accuracy")
    ax.set_ylabel("attack success")
    ax.set_ylim(0, 1.02)
    ax.set_title("Attack success vs accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    second = out / "attack_vs_accuracy.png"
    fig.savefig(second, dpi=120)
    plt.close(fig)
    return [first, second]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/privacy-sweep"))
    parser.add_argument("--axes", default="act,dp,split", help="comma-separated subset of act,dp,split")
    parser.add_argument("--act-clip-norm", type=float, default=30.0,
                        help="C for the activation points (the MiniLM hidden states of one SST-2 example at "
                             "split 0-4 have L2 norm ~30 (median))")
    parser.add_argument("--act-sigmas", default="0.02,0.05,0.1,0.3")
    parser.add_argument("--dp-sigmas", default="0.6,1.0,2.0")
    parser.add_argument("--splits", default="0,1,4")
    parser.add_argument("--split-layer", type=int, default=2, help="split of the base point and the noise points")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--supernodes", type=int, default=3)
    parser.add_argument("--capture", type=int, default=64, help="capture-activations per client")
    parser.add_argument("--max-examples", type=int, default=512)
    parser.add_argument("--public-examples", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--model", default="", help="run-config model ('' = the packaged MiniLM)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--canaries", type=int, default=0,
                        help="label-flip canaries per run (run-config canaries; 0 = off; >= 7 for a verdict)")
    parser.add_argument("--canary-repeats", type=int, default=1, help="copies of each canary in client 0's shard")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--quick", action="store_true",
                        help="one tiny point (1 round, 2 local steps, 2 clients, small attacks): checks the pipeline")
    args = parser.parse_args(argv)
    args.axes = {a.strip() for a in args.axes.split(",") if a.strip()}
    if args.quick:
        args.rounds, args.local_steps, args.batch_size, args.eval_examples = 1, 2, 8, 32
        args.supernodes, args.capture, args.max_examples, args.public_examples, args.epochs = 2, 8, 32, 64, 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for point in sweep_points(args):
        print(f"== {point.name}: {point.overrides}", flush=True)
        rows.append(run_point(point, args))
        with (args.out / "sweep.csv").open("w", newline="") as handle:  # rewritten after every point
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        last = rows[-1]
        print(f"   accuracy {last['accuracy']:.4f}, inversion "
              f"{best_recovery(last):.3f}, "
              f"membership AUC {last['membership_auc']:.3f}", flush=True)
    figures = plot(rows, args.out)
    print(markdown_table(rows))
    print()
    print(summary_table(rows))
    print(f"\nwrote {args.out / 'sweep.csv'}, {', '.join(str(f) for f in figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
