"""The split data plane in a real deployment against the same round in simulation, and the Flower fallback.

Runs, one after the other on this machine (so the numbers share its noise), with ``local-steps`` one-batch
exchanges per client and 3 clients:

* ``sim-flower``: simulation (``flwr run``), ``split-transport = "flower"`` — the round loop before the data plane;
* ``sim-stream``: simulation, ``split-transport = "stream"`` (the default);
* ``deploy-stream``: a loopback deployment (SuperLink with TLS + SuperNode authentication, 3 SuperNodes started
  with the scripts in this folder), ``split-transport = "stream"``;
* with ``--chunked``: ``sim-flower-chunked``: simulation, Flower fallback with ``exchange-batches =
  local-steps`` (the fallback's deployment setting: delayed gradients), for its accuracy cost.

and prints per variant: round seconds, training seconds (round minus evaluation), the waiting share
(``messaging_seconds`` / training seconds), the ratio of each round to ``sim-stream`` and the accuracy.

Usage: python simulations/deploy/stream_vs_simulation.py [--rounds 1] [--steps 30] [--chunked]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fedguard.apps.local_run import flwr_run  # noqa: E402
from fedguard.apps.local_deployment import LoopbackDeployment, wait_for  # noqa: E402

NODES = 3


def _summary(name: str, metrics: dict) -> dict:
    rounds = metrics["rounds"]
    if not rounds or any(r["clients_dropped"] for r in rounds):
        raise RuntimeError(f"{name}: {rounds[-1]['clients_dropped'] if rounds else 'no round finished'}")
    train = sum(r["seconds"] - r["eval_seconds"] for r in rounds)
    return {"variant": name, "round_seconds": sum(r["seconds"] for r in rounds) / len(rounds),
            "train_seconds": train / len(rounds), "waiting": sum(r["messaging_seconds"] for r in rounds) / train,
            "accuracy": rounds[-1]["accuracy"], "exchanges": rounds[-1]["exchanges"]}


def simulate(name: str, config: dict, work: Path) -> dict:
    out = work / name
    result = flwr_run(work / f"{name}-home", {**config, "output-dir": str(out)}, num_supernodes=NODES, timeout=3600)
    path = out / "metrics.json"
    if not path.exists():
        raise RuntimeError(f"{name}: no metrics.json\n{result.stdout[-3000:]}")
    return _summary(name, json.loads(path.read_text()))


def deploy(name: str, config: dict, work: Path) -> dict:
    deployment = LoopbackDeployment(work / name)
    try:
        deployment.start_superlink()
        # One machine stands in for NODES + 1: give each SuperNode's ClientApp one compute thread, as the
        # simulation gives each client one CPU (client-resources-num-cpus=1; Ray sets OMP_NUM_THREADS=1).
        nodes = [deployment.start_supernode(f"sn{i}", deployment.new_key(f"sn{i}"),
                                            f"partition-id={i} num-partitions={NODES}",
                                            env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
                 for i in range(NODES)]
        for node in nodes:
            deployment.wait_connected(node)
        out = deployment.workdir / "run"
        run = deployment.flwr_run(ROOT, {**config, "output-dir": str(out)})
        wait_for(lambda: not run.alive(), 3600, f"the {name} run", interval=0.5)
        metrics = deployment.metrics(out)
        if not metrics:
            raise RuntimeError(f"{name}: no metrics.json\n{run.text()[-3000:]}")
        return _summary(name, metrics)
    finally:
        deployment.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="local-steps (one batch per exchange)")
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--chunked", action="store_true", help="also the fallback with exchange-batches=local-steps")
    parser.add_argument("--only", nargs="+", default=None, help="run only these variants (sim-stream is always run)")
    args = parser.parse_args()
    base = {"num-server-rounds": args.rounds, "local-steps": args.steps, "exchange-batches": 1,
            "eval-examples": args.eval_examples, "min-fit-clients": NODES, "round-timeout": 300.0}
    work = Path(tempfile.mkdtemp(prefix="fg-stream-"))
    rows = []
    try:
        plan = [("sim-flower", simulate, {"split-transport": "flower"}),
                ("sim-stream", simulate, {"split-transport": "stream"}),
                ("deploy-stream", deploy, {"split-transport": "stream"})]
        if args.chunked:
            plan.append(("sim-flower-chunked", simulate, {"split-transport": "flower", "exchange-batches": args.steps}))
        if args.only:
            plan = [p for p in plan if p[0] in args.only or p[0] == "sim-stream"]
        for name, runner, extra in plan:
            started = time.perf_counter()
            rows.append(runner(name, {**base, **extra}, work))
            print(f"{name}: {rows[-1]['round_seconds']:.1f} s/round ({time.perf_counter() - started:.0f} s wall)",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    reference = next(r for r in rows if r["variant"] == "sim-stream")["round_seconds"]
    print(f"\n{NODES} clients, local-steps {args.steps}, exchange-batches 1 unless noted, {args.rounds} round(s) each")
    print(f"{'variant':<20} {'exchanges':>9} {'round s':>8} {'train s':>8} {'waiting':>8} {'vs sim-stream':>13} "
          f"{'accuracy':>8}")
    for r in rows:
        print(f"{r['variant']:<20} {r['exchanges']:>9} {r['round_seconds']:>8.1f} {r['train_seconds']:>8.1f} "
              f"{100 * r['waiting']:>7.0f}% {r['round_seconds'] / reference:>12.2f}x {100 * r['accuracy']:>7.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
