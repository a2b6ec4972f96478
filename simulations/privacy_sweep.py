"""Privacy sweep: accuracy, certified ε and empirical attack success as the defences are turned up.

Each point is one federated run (`flwr run .` in isolation, via ``fedguard.apps.local_run.flwr_run``, with
``capture-activations`` on) followed by ``fedguard attack all`` on its run directory. The points vary one
knob at a time around a base configuration:

* ``act``: activation noise ``act-noise-multiplier`` σ at a fixed ``act-clip-norm`` C (local Gaussian on the
  hidden states; certified ``epsilon_activation``);
* ``dp``: DP-SGD ``dp-noise-multiplier`` over the whole split model (certified ``epsilon_model_certified``, against third parties);
* ``split``: the split layer (no noise);
* ``bottleneck``: the learned bottleneck at the cut (``bottleneck-dim`` k) with per-sequence clip-and-noise on
  its k dimensions, trained with the noise in the loop (DP-Forward style; certified ``epsilon_activation``);
* ``dchi``: SAP-style d_χ noise on the token embeddings (split 0), each example noised once per run and resent
  (``activation-reuse = run``; certified pure ``epsilon_activation``);
* ``dcor``: the bottleneck point at ``--dcor-sigma`` plus the distance-correlation penalty (no guarantee);
* ``--point NAME:key=value,...`` adds any configuration by hand (repeatable).

``--seeds 1,2,3`` runs every point once per seed; the tables and ``OUT/frontier.csv`` give mean ± std over
seeds. The frontier plot ``OUT/frontier.png`` draws accuracy against the best attack's content-token recovery
(the maximum over every inversion attack the harness runs).

Writes ``OUT/sweep.csv``, ``OUT/accuracy_vs_epsilon.png`` (accuracy against the certified ε of the release
each point protects; points without a guarantee are drawn at the right edge, marked "none"),
``OUT/attack_vs_accuracy.png`` (best inversion content-token recovery and membership AUC against accuracy),
and prints two markdown tables: the sweep, and a GuardedTuning-style summary (utility, privacy as ε per
release and the best attack, cost as client compute and bytes per round, side by side). Usage::

    python simulations/privacy_sweep.py --out runs/privacy-sweep                 # the whole sweep (hours on CPU)
    python simulations/privacy_sweep.py --quick --out /tmp/sweep-check           # one tiny point, to check it runs
    python simulations/privacy_sweep.py --axes dp --canaries 16 --canary-repeats 8  # + label-flip canary memorisation
    python simulations/privacy_sweep.py --axes act --act-sigmas 0,0.05,0.2       # one axis, chosen values
    python simulations/privacy_sweep.py --axes none --seeds 1,2,3 \
        --point "k16-s0.3:bottleneck-dim=16,act-clip-norm=6,act-noise-multiplier=0.3"   # one point, 3 seeds
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
from fedguard.attacks.optimisation import OptimisationSettings
from fedguard.attacks.report import AttackOptions, attack_run
from fedguard.mechanisms.choice import choose_activation_mechanism
from fedguard.privacy.certified import gaussian_epsilon

FIELDS = ["point", "seed", "overrides", "split_layer", "act_clip_norm", "act_noise_multiplier", "dp_noise_multiplier",
          "bottleneck_dim", "dchi_eta", "dcor_weight", "activation_reuse", "accuracy",
          "epsilon_model_certified", "epsilon_activation", "epsilon_server_certified", "nn_recovery",
          "learned_recovery", "best_recovery", "best_attack", "best_recovery_above_prior", "sentiment_recovery",
          "exact_match", "prior_recovery", "rouge_l", "membership_auc", "membership_calibrated_auc",
          "membership_tpr_at_1pct", "epsilon_activation_per_release", "client_update_auc", "client_seconds_per_round",
          "mb_per_round", "canary_flip_gap", "canary_margin_z", "run_seconds", "attack_seconds"]


@dataclass(frozen=True)
class Point:
    name: str
    overrides: dict


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _parse_point(text: str) -> Point:
    """``NAME:key=value,key=value`` (run-config keys; numbers parsed as numbers) -> a :class:`Point`."""
    name, sep, body = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--point {text!r}: expected NAME:key=value,...")
    overrides: dict = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise SystemExit(f"--point {text!r}: {part!r} is not key=value")
        for cast in (int, float):
            try:
                overrides[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            overrides[key.strip()] = value.strip().strip("'\"")
    overrides.setdefault("split-layer", 2)
    return Point(name.strip(), overrides)


def sweep_points(args: argparse.Namespace) -> list[Point]:
    """The runs of the sweep: the base config, then one knob at a time (duplicates of the base dropped)."""
    base = {"split-layer": args.split_layer}
    points = [Point("base", base)] if not args.no_base else []
    k, clip = args.bottleneck_dim, args.bottleneck_clip
    if "bottleneck" in args.axes:
        points += [Point(f"k={k},sigma={s:g}", {**base, "bottleneck-dim": k, "act-clip-norm": clip,
                                                 "act-noise-multiplier": s}) for s in _floats(args.bottleneck_sigmas)]
    if "dcor" in args.axes:
        points += [Point(f"k={k},sigma={args.dcor_sigma:g},dcor={w:g}", {
            **base, "bottleneck-dim": k, "act-clip-norm": clip, "act-noise-multiplier": args.dcor_sigma,
            "dcor-weight": w}) for w in _floats(args.dcor_weights) if w > 0]
    if "dchi" in args.axes:
        points += [Point(f"dchi-eta={e:g}", {"split-layer": 0, "dchi-eta": e, "dchi-token-clip": args.dchi_token_clip,
                                             "activation-reuse": args.dchi_reuse}) for e in _floats(args.dchi_etas)]
    points += [_parse_point(text) for text in args.point]
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


FRONTIER_ZOOM = 0.2  # the frontier plot's right panel: points whose best recovery is at most this


def _clusters(rows: list[dict], gap: float) -> list[list[dict]]:
    """``rows`` (sorted by best recovery) split wherever consecutive recoveries differ by more than ``gap``."""
    groups: list[list[dict]] = []
    for row in rows:
        if groups and row["best_recovery_mean"] - groups[-1][-1]["best_recovery_mean"] <= gap:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def per_release_epsilon(config: dict, delta: float) -> float | None:
    """Certified ε of ONE release of one example's activations (replace-one, same token length), for the mechanism
    the client applies (:func:`fedguard.mechanisms.choice.choose_activation_mechanism`): Gaussian with
    sensitivity 2C and std σC -> ``gaussian_epsilon(2/σ, δ)``; d_χ -> its pure ε (2·η·C·max-length). None
    without noise, and None for d_χ with ``dchi-importance`` (token-dependent noise has no bound; the client
    logs none)."""
    if config.get("dchi-importance", 0.0) > 0:
        return None
    mechanism = choose_activation_mechanism(config.get("act-clip-norm", 0.0), config.get("act-noise-multiplier", 0.0),
                                            config.get("dchi-eta", 0.0), config.get("dchi-token-clip", 1.0),
                                            config.get("max-length", 64))
    event = mechanism.release_event(1, 0) if mechanism is not None else None
    if event is None:
        return None
    return event.epsilon if event.is_pure else gaussian_epsilon(2.0 / event.noise_multiplier, delta)


def _inversion_metrics(report: dict) -> dict:
    """The best of every reconstruction attack the harness ran: the report's ``inversion`` summary entry, whose
    ``best`` block names, per metric, the maximum over the attacks and the attack that reached it."""
    best = report.get("inversion", {}).get("best", {})

    def value(metric: str) -> float | None:
        return best.get(metric, {}).get("value")

    return {"best_recovery": value("content_token_recovery_rate"),
            "best_attack": best.get("content_token_recovery_rate", {}).get("attack"),
            "best_recovery_above_prior": value("content_token_recovery_above_prior"),
            "sentiment_recovery": value("sentiment_token_recovery"), "exact_match": value("exact_match_rate"),
            "rouge_l": value("rouge_l_f1")}


def _last(rounds: list[dict], key: str) -> float | None:
    values = [r.get(key) for r in rounds if r.get(key) is not None]
    return values[-1] if values else None


def run_point(point: Point, args: argparse.Namespace) -> dict:
    """One `flwr run` and the attacks on it; a CSV row."""
    folder = (args.out / f"{point.name}-seed{args.seed}").resolve()
    run_dir = folder / "run"
    config = {"num-server-rounds": args.rounds, "local-steps": args.local_steps, "batch-size": args.batch_size,
              "eval-examples": args.eval_examples, "capture-activations": args.capture, "seed": args.seed,
              "output-dir": str(run_dir), "canaries": args.canaries, "canary-repeats": args.canary_repeats,
              **point.overrides}
    if args.model:
        config["model"] = args.model
    started = time.perf_counter()
    metrics_path = run_dir / "metrics.json"
    finished = metrics_path.is_file() and len(json.loads(metrics_path.read_text()).get("rounds", [])) == args.rounds
    if not (args.resume_points and finished):  # --resume-points: reuse a run that completed every round
        result = flwr_run(folder, config, num_supernodes=args.supernodes, timeout=args.timeout)
        (folder / "flwr.log").write_text(result.stdout + result.stderr)
    run_seconds = time.perf_counter() - started
    if not metrics_path.is_file() or not json.loads(metrics_path.read_text()).get("rounds"):
        raise RuntimeError(f"{point.name}: the run failed (no rounds in {metrics_path}); see {folder / 'flwr.log'}")
    started = time.perf_counter()
    options = AttackOptions(args.max_examples, args.public_examples, args.seed,
                            InverterSettings(epochs=args.epochs, seed=args.seed),
                            optimisation=OptimisationSettings(max_examples=args.optimisation_examples, seed=args.seed))
    report = attack_run(run_dir, args.attacks, options)["attacks"]
    attack_seconds = time.perf_counter() - started
    metrics = json.loads(metrics_path.read_text())
    nn, learned, member = (report.get(k, {}).get("metrics", {}) for k in ("nn-inversion", "learned-inversion",
                                                                          "membership"))
    update = report.get("client-update-membership", {}).get("metrics", {})
    canary = report.get("label-flip-memorisation", {}).get("metrics")  # with --canaries
    rounds = metrics["rounds"]
    best = _inversion_metrics(report)
    return {
        "point": point.name,
        "seed": args.seed,
        "overrides": json.dumps(point.overrides, sort_keys=True),
        "split_layer": config["split-layer"],
        "act_clip_norm": config.get("act-clip-norm", 0.0),
        "act_noise_multiplier": config.get("act-noise-multiplier", 0.0),
        "dp_noise_multiplier": config.get("dp-noise-multiplier", 0.0),
        "bottleneck_dim": config.get("bottleneck-dim", 0),
        "dchi_eta": config.get("dchi-eta", 0.0),
        "dcor_weight": config.get("dcor-weight", 0.0),
        "activation_reuse": config.get("activation-reuse", "none"),
        "accuracy": metrics["final_accuracy"],
        "epsilon_model_certified": _last(metrics["rounds"], "epsilon_model_certified"),
        "epsilon_activation": _last(metrics["rounds"], "epsilon_activation"),
        "epsilon_server_certified": _last(metrics["rounds"], "epsilon_server_certified"),
        "nn_recovery": nn.get("content_token_recovery_rate"),
        "learned_recovery": learned.get("content_token_recovery_rate"),
        **best,
        "prior_recovery": (learned.get("prior_baseline") or {}).get("content_token_recovery_rate"),
        "membership_auc": member.get("loss-threshold", {}).get("auc"),
        "membership_calibrated_auc": member.get("calibrated", {}).get("auc"),
        "membership_tpr_at_1pct": member.get("loss-threshold", {}).get("tpr_at_fpr"),
        "epsilon_activation_per_release": per_release_epsilon(config, metrics["rounds"][-1]["privacy_delta"]),
        "client_update_auc": update.get("isolated-update-difference", {}).get("auc"),
        "client_seconds_per_round": sum(r["client_seconds"] for r in rounds) / len(rounds),
        "mb_per_round": sum(r["bytes_up"] + r["bytes_down"] for r in rounds) / len(rounds) / 1e6,
        "canary_flip_gap": canary["trained"]["flip_rate_gap"] if canary else None,
        "canary_margin_z": canary["trained"]["margin_z"] if canary else None,
        "run_seconds": round(run_seconds, 1),
        "attack_seconds": round(attack_seconds, 1),
    }


def _typed(row: dict) -> dict:
    """A row read back from sweep.csv: numbers as numbers, empty cells as None."""
    out: dict = {}
    for key, value in row.items():
        if value in ("", None):
            out[key] = None
            continue
        try:
            out[key] = int(value) if key in ("seed", "split_layer", "bottleneck_dim") else float(value)
        except ValueError:
            out[key] = value
    return out


def best_recovery(row: dict) -> float:
    """The best inversion attack's content-token recovery (0 when none ran)."""
    return max(row.get("best_recovery") or 0.0, row["nn_recovery"] or 0.0, row["learned_recovery"] or 0.0)


def frontier_rows(rows: list[dict]) -> list[dict]:
    """One row per point: mean and std over its seeds of accuracy and best recovery (std 0 for one seed)."""
    import statistics

    out = []
    for name in dict.fromkeys(r["point"] for r in rows):
        mine = [r for r in rows if r["point"] == name]

        def stats(values: list[float]) -> tuple[float, float]:
            return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

        acc, acc_sd = stats([r["accuracy"] for r in mine])
        rec, rec_sd = stats([best_recovery(r) for r in mine])
        last = mine[-1]
        out.append({"point": name, "seeds": len(mine), "accuracy_mean": acc, "accuracy_std": acc_sd,
                    "best_recovery_mean": rec, "best_recovery_std": rec_sd,
                    "sentiment_recovery": last.get("sentiment_recovery"), "best_attack": last.get("best_attack"),
                    "epsilon_activation_per_release": last["epsilon_activation_per_release"],
                    "epsilon_activation": last["epsilon_activation"],
                    "epsilon_server_certified": last["epsilon_server_certified"],
                    "epsilon_model_certified": last["epsilon_model_certified"],
                    "client_seconds_per_round": stats([r["client_seconds_per_round"] for r in mine])[0],
                    "mb_per_round": stats([r["mb_per_round"] for r in mine])[0], "overrides": last["overrides"]})
    return out


def _fmt(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    columns = ["point", "seed", "accuracy", "epsilon_activation", "epsilon_server_certified", "epsilon_model_certified",
               "best_recovery", "best_attack", "sentiment_recovery", "prior_recovery", "rouge_l", "membership_auc"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    """GuardedTuning-style, one line per point (mean ± std over seeds): utility, privacy (certified ε against the
    server per release and over the run, the best attack's content-token recovery) and cost (client compute
    and bytes per round)."""
    def pct(mean: float | None, std: float = 0.0, seeds: int = 1) -> str:
        if mean is None:
            return "none"
        return f"{100 * mean:.1f}%" + (f" ± {100 * std:.1f}" if seeds > 1 else "")

    header = ("| configuration | seeds | accuracy | ε vs server, one release | ε vs server, activations over the run | "
              "ε vs server, all (labels etc.) | best token recovery (attack) | sentiment-word recovery | "
              "client s / round | MB / round |")
    lines = [header, "|" + "---|" * 10]
    for row in frontier_rows(rows):
        lines.append(
            f"| {row['point']} | {row['seeds']} | {pct(row['accuracy_mean'], row['accuracy_std'], row['seeds'])} | "
            f"{_fmt(row['epsilon_activation_per_release'])} | {_fmt(row['epsilon_activation'])} | "
            f"{_fmt(row['epsilon_server_certified'])} | "
            f"{pct(row['best_recovery_mean'], row['best_recovery_std'], row['seeds'])} ({row['best_attack']}) | "
            f"{pct(row['sentiment_recovery'])} | {row['client_seconds_per_round']:.1f} | {row['mb_per_round']:.1f} |")
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

    # Left: every point; right: the goal's corner (recovery <= ZOOM), where the labels would otherwise overlap.
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(11, 4.2))
    points = frontier_rows(rows)
    base = [r for r in points if r["point"] == "base"]
    near = [r for r in points if r["best_recovery_mean"] <= FRONTIER_ZOOM]
    for panel in (ax, zoom):
        labelled = sorted((r for r in points if (panel is zoom) == (r in near)), key=lambda r: r["best_recovery_mean"])
        for row in points:
            panel.errorbar(row["best_recovery_mean"], row["accuracy_mean"], xerr=row["best_recovery_std"],
                           yerr=row["accuracy_std"], fmt="o", ms=4, capsize=2)
        width = 1.02 if panel is ax else FRONTIER_ZOOM
        for cluster in _clusters(labelled, 0.06 * width):  # close points: labels stacked, the highest point's first
            for i, row in enumerate(sorted(cluster, key=lambda r: -r["accuracy_mean"])):
                panel.annotate(row["point"], (row["best_recovery_mean"], row["accuracy_mean"]), fontsize=7,
                               xytext=(4, 4 - 11 * i), textcoords="offset points")
        panel.axvline(0.10, color="grey", lw=0.5, ls="--")
        if base:  # the goal's utility line: 3 points below the undefended run
            panel.axhline(base[0]["accuracy_mean"] - 0.03, color="grey", lw=0.5, ls="--")
        panel.set_xlabel("best attack: content-token recovery (max over attacks)")
    ax.set_ylabel("final accuracy (mean ± std over seeds)")
    ax.set_xlim(0, 1.02)
    ax.set_title("Privacy-utility frontier (goal: top left of the dashed lines)", fontsize=10)
    zoom.set_xlim(0, FRONTIER_ZOOM)
    if near:
        ys = [r["accuracy_mean"] for r in near] + ([base[0]["accuracy_mean"]] if base else [])
        zoom.set_ylim(min(ys) - 0.02, max(ys) + 0.02)
    zoom.set_title(f"the same, recovery <= {FRONTIER_ZOOM:.0%}", fontsize=10)
    fig.tight_layout()
    third = out / "frontier.png"
    fig.savefig(third, dpi=120)
    plt.close(fig)
    return [first, second, third]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/privacy-sweep"))
    parser.add_argument("--axes", default="bottleneck,dchi,dcor",
                        help="comma-separated subset of act,dp,split,bottleneck,dchi,dcor (or none)")
    parser.add_argument("--act-clip-norm", type=float, default=30.0,
                        help="C for the activation points (the MiniLM hidden states of one SST-2 example at "
                             "split 0-4 have L2 norm ~30 (median))")
    parser.add_argument("--act-sigmas", default="0.02,0.05,0.1,0.3")
    parser.add_argument("--dp-sigmas", default="0.6,1.0,2.0")
    parser.add_argument("--splits", default="0,1,4")
    parser.add_argument("--split-layer", type=int, default=2, help="split of the base point and the noise points")
    parser.add_argument("--bottleneck-dim", type=int, default=16, help="k of the bottleneck points")
    parser.add_argument("--bottleneck-clip", type=float, default=6.0,
                        help="act-clip-norm C of the bottleneck points (per sequence, on the k dims)")
    parser.add_argument("--bottleneck-sigmas", default="0.1,0.3,1.0")
    parser.add_argument("--dcor-weights", default="1.0")
    parser.add_argument("--dcor-sigma", type=float, default=0.3, help="activation noise of the dcor points")
    parser.add_argument("--dchi-etas", default="300,1000")
    parser.add_argument("--dchi-token-clip", type=float, default=1.0)
    parser.add_argument("--dchi-reuse", default="run", help="activation-reuse of the d_chi points")
    parser.add_argument("--point", action="append", default=[], metavar="NAME:key=value,...",
                        help="an extra configuration (run-config overrides; repeatable)")
    parser.add_argument("--no-base", action="store_true", help="do not run the base (no-defence) point")
    parser.add_argument("--attacks", default="all", choices=("all", "inversion"),
                        help="attacks run on each point: all, or only the inversions (the defences at the cut)")
    parser.add_argument("--seeds", default="", help="comma-separated seeds; every point runs once per seed")
    parser.add_argument("--resume-points", action="store_true",
                        help="reuse finished runs found in --out (attacks are run again) and keep the rows of "
                             "--out/sweep.csv this invocation does not rerun (separate invocations add up)")
    parser.add_argument("--rounds", type=int, default=6, help="as the non-private default")
    parser.add_argument("--local-steps", type=int, default=30, help="as the non-private default")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-examples", type=int, default=0, help="0 = the whole dev split")
    parser.add_argument("--supernodes", type=int, default=3)
    parser.add_argument("--capture", type=int, default=64, help="capture-activations per client")
    parser.add_argument("--max-examples", type=int, default=512)
    parser.add_argument("--public-examples", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--optimisation-examples", type=int, default=64,
                        help="examples the optimisation attack reconstructs (0 = all attacked ones; it is the slowest)")
    parser.add_argument("--model", default="", help="run-config model ('' = the packaged MiniLM)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--canaries", type=int, default=0,
                        help="label-flip canaries per run (run-config canaries; 0 = off; >= 7 for a verdict)")
    parser.add_argument("--canary-repeats", type=int, default=1, help="copies of each canary in client 0's shard")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--from-csv", nargs="+", type=Path, default=[], metavar="SWEEP_CSV",
                        help="run nothing: combine the rows of earlier sweeps' sweep.csv files into --out "
                             "(frontier, plots, tables), e.g. points run in separate invocations or machines")
    parser.add_argument("--quick", action="store_true",
                        help="one tiny point (1 round, 2 local steps, 2 clients, small attacks): checks the pipeline")
    args = parser.parse_args(argv)
    args.axes = {a.strip() for a in args.axes.split(",") if a.strip()}
    if args.quick:
        args.rounds, args.local_steps, args.batch_size, args.eval_examples = 1, 2, 8, 32
        args.supernodes, args.capture, args.max_examples, args.public_examples, args.epochs = 2, 8, 32, 64, 2
    args.out.mkdir(parents=True, exist_ok=True)
    earlier = args.out / "sweep.csv"
    sources = args.from_csv or ([earlier] if args.resume_points and earlier.is_file() else [])
    rows = [_typed(row) for path in sources for row in csv.DictReader(path.open())]
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] or [args.seed]
    for point in [] if args.from_csv else sweep_points(args):
        for seed in seeds:
            args.seed = seed
            print(f"== {point.name} (seed {seed}): {point.overrides}", flush=True)
            row = run_point(point, args)
            rows = [r for r in rows if (r["point"], r.get("seed")) != (row["point"], row["seed"])] + [row]
            with (args.out / "sweep.csv").open("w", newline="") as handle:  # rewritten after every run
                writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
            last = rows[-1]
            print(f"   accuracy {last['accuracy']:.4f}, best inversion {best_recovery(last):.3f} "
                  f"({last['best_attack']}), membership AUC {_fmt(last['membership_auc'])}", flush=True)
    frontier = frontier_rows(rows)
    with (args.out / "frontier.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(frontier[0]))
        writer.writeheader()
        writer.writerows(frontier)
    figures = plot(rows, args.out)
    print(markdown_table(rows))
    print()
    print(summary_table(rows))
    print(f"\nwrote {args.out / 'sweep.csv'}, {args.out / 'frontier.csv'}, {', '.join(str(f) for f in figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
