"""Compare aggregation strategies on the same non-IID SST-2 federation (prints one table; not a test).

Each variant is a real ``flwr run .`` simulation (isolated Flower home and SuperLink, as in the tests) with
identical settings — Dirichlet(alpha) label skew over ``--supernodes`` clients, the same seed, sampling and
local steps — differing only in its run-config overrides (:data:`VARIANTS`). Per variant the table shows the
final and best held-out accuracy, the per-round aggregation time (``aggregation-seconds`` as logged by the
strategy) and the mean round wall time; for ``svd`` also the per-round relative truncation error.

    python simulations/compare_strategies.py                      # fedavg, ffa-lora, svd; ~10 min on 2 cores
    python simulations/compare_strategies.py --variants svd --rounds 5 --set lora-r=4
    python simulations/compare_strategies.py --with-dp            # adds the DP-SGD variants (DP_VARIANTS)

Run it under the shared lock on the 2-core machine: ``flock /tmp/fedguard-heavy.lock python ...``.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from fedguard.apps.local_run import ROOT, flwr_run

# label -> run-config overrides that define the variant (on top of the shared setup).
VARIANTS: dict[str, dict[str, object]] = {
    "fedavg": {"strategy": "fedavg"},
    "ffa-lora": {"strategy": "ffa-lora"},
    "svd": {"strategy": "svd"},
}
# DP-SGD variants (selected with --with-dp): the same strategies with DP-SGD on every client's adapter.
_DP = {"dp-noise-multiplier": 1.0, "dp-max-grad-norm": 1.0}
DP_VARIANTS: dict[str, dict[str, object]] = {
    "fedavg+dp": {"strategy": "fedavg", **_DP},
    "ffa-lora+dp": {"strategy": "ffa-lora", **_DP},
    "svd+dp": {"strategy": "svd", **_DP},
}

_AGGREGATED = re.compile(r"round (\d+): strategy \w+ aggregated \d+ adapter\(s\) in ([0-9.]+)s")
_TRUNCATION = re.compile(r"round (\d+): strategy \w+ aggregated .*svd-truncation-error=([0-9.eE+-]+)")


def shared_setup(args: argparse.Namespace) -> dict[str, object]:
    """Run-config overrides common to every variant."""
    setup: dict[str, object] = {
        "partitioner": "dirichlet", "dirichlet-alpha": args.alpha, "num-server-rounds": args.rounds,
        "fraction-train": args.fraction_train, "local-steps": args.local_steps, "batch-size": args.batch_size,
        "eval-examples": args.eval_examples, "seed": args.seed,
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value")
        setup[key.strip()] = _scalar(value.strip())
    return setup


def _scalar(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def run_variant(label: str, overrides: dict[str, object], setup: dict[str, object], out_root: Path,
                supernodes: int) -> dict[str, object]:
    out = (out_root / label).resolve()
    with tempfile.TemporaryDirectory(prefix="fedguard-compare-") as tmp:
        started = time.perf_counter()
        result = flwr_run(Path(tmp), {**setup, **overrides, "output-dir": str(out)}, num_supernodes=supernodes,
                          timeout=3600)
        wall = time.perf_counter() - started
    (out_root / f"{label}.log").write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    metrics_path = out / "metrics.json"
    if not metrics_path.exists():
        return {"label": label, "error": f"no metrics.json (see {out_root / f'{label}.log'})", "wall": wall}
    metrics = json.loads(metrics_path.read_text())
    aggregation = {int(r): float(s) for r, s in _AGGREGATED.findall(result.stdout)}
    truncation = {int(r): float(e) for r, e in _TRUNCATION.findall(result.stdout)}
    rounds = metrics["rounds"]
    return {
        "label": label, "final": metrics["final_accuracy"], "best": metrics["best_accuracy"],
        "initial": metrics["initial"]["accuracy"],
        "aggregation_ms": [aggregation.get(r["round"], float("nan")) * 1e3 for r in rounds],
        "truncation": [truncation[r["round"]] for r in rounds if r["round"] in truncation],
        "round_s": sum(r["seconds"] for r in rounds) / len(rounds),
        "aggregated": [r["clients_aggregated"] for r in rounds], "wall": wall,
    }


def print_table(rows: list[dict[str, object]], setup: dict[str, object], supernodes: int) -> None:
    print(f"\nnon-IID SST-2: Dirichlet alpha={setup['dirichlet-alpha']} over {supernodes} clients, "
          f"fraction-train={setup['fraction-train']}, {setup['num-server-rounds']} rounds, "
          f"local-steps={setup['local-steps']}, eval-examples={setup['eval-examples']}")
    header = f"{'strategy':<14} {'final acc':>9} {'best acc':>9}  {'aggregation ms per round':<28} " \
             f"{'round s':>8}  {'clients/round':<14} notes"
    print(header)
    print("-" * len(header))
    for row in rows:
        if "error" in row:
            print(f"{row['label']:<14} {'failed':>9}  {row['error']}")
            continue
        per_round = " ".join(f"{ms:.1f}" for ms in row["aggregation_ms"])
        notes = ("svd trunc. err " + " ".join(f"{e:.3f}" for e in row["truncation"])) if row["truncation"] else ""
        clients = " ".join(str(c) for c in row["aggregated"])
        print(f"{row['label']:<14} {row['final']:>9.4f} {row['best']:>9.4f}  {per_round:<28} "
              f"{row['round_s']:>8.1f}  {clients:<14} {notes}")
    if rows and "initial" in rows[0]:
        print(f"(accuracy before training: {rows[0]['initial']:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated labels from {sorted(VARIANTS)}")
    parser.add_argument("--with-dp", action="store_true", help="also run DP_VARIANTS (the DP-SGD hook)")
    parser.add_argument("--supernodes", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration (smaller = more skew)")
    parser.add_argument("--fraction-train", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra run-config override for every variant (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "compare-strategies")
    args = parser.parse_args()

    catalogue = {**VARIANTS, **DP_VARIANTS}
    labels = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.with_dp:
        if not DP_VARIANTS:
            print("--with-dp: no DP_VARIANTS defined yet (DP-SGD run-config keys do not exist); skipping them")
        labels += [label for label in DP_VARIANTS if label not in labels]
    unknown = [label for label in labels if label not in catalogue]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; available: {', '.join(catalogue)}")
    setup = shared_setup(args)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in labels:
        print(f"running {label} ...", flush=True)
        row = run_variant(label, catalogue[label], setup, args.out, args.supernodes)
        print(f"  done in {row['wall']:.0f}s", flush=True)
        rows.append(row)
    print_table(rows, setup, args.supernodes)


if __name__ == "__main__":
    main()
