"""Per-exchange latency of FedGuard split learning in a loopback deployment (TLS + SuperNode auth).

For each variant a fresh deployment is started with the scripts next to this file (SuperLink, SuperNodes),
one round of FedGuard runs with ``local-steps`` exchanges of one batch each (+1 final exchange), and the
latency per exchange is ``(round seconds - eval seconds) / exchanges`` from ``metrics.json``.

Variants:

- ``defaults``: Flower 1.41 as shipped: SuperExec polls for ClientApp tasks every 1.0 s, ``HttpGrid``
  polls replies every 3 s.
- ``superexec-0.1``: ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.1`` on SuperLink and SuperNodes (what the
  start scripts set).
- ``superexec-0.1+server-poll-0.2``: also the server pulls replies every 0.2 s (``fastpoll_server.py``,
  the change proposed for the round loop).

Also printed: the cold start of one ClientApp process (Python + flwr + torch + transformers + fedguard
imports and loading the model), which every message to a SuperNode pays in Flower 1.41.

Usage: flock /tmp/fedguard-heavy.lock python simulations/deploy/measure_latency.py [--variants ...] [--steps 4]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fedguard.apps.local_deployment import LoopbackDeployment, wait_for  # noqa: E402

VARIANTS = {
    "defaults": ({"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0"}, False),
    "superexec-0.1": ({"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}, False),
    "superexec-0.1+server-poll-0.2": ({"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1", "FASTPOLL_INTERVAL": "0.2"}, True),
}

COLD_START = """
import time; t = time.perf_counter()
import flwr.clientapp, torch, transformers
from fedguard.apps import client_app
from fedguard.runtime import runtime_for
from fedguard.config import RunConfig
t_import = time.perf_counter() - t
runtime_for(RunConfig.from_run_config({}), 2)
print(f"{t_import:.2f} {time.perf_counter() - t:.2f}")
"""


def fastpoll_app(workdir: Path) -> Path:
    """A throw-away app: this repo's pyproject.toml and packages, the ServerApp replaced by fastpoll_server:app."""
    app = workdir / "fastpoll-app"
    app.mkdir()
    text = (ROOT / "pyproject.toml").read_text()
    text, count = re.subn(r'serverapp = "[^"]+"', 'serverapp = "fastpoll_server:app"', text)
    if count != 1:
        raise RuntimeError("pyproject.toml has no single [tool.flwr.app.components] serverapp entry")
    (app / "pyproject.toml").write_text(text)
    shutil.copy(Path(__file__).with_name("fastpoll_server.py"), app / "fastpoll_server.py")
    # Ship the packages in the bundle, as `flwr run .` does for the real app (the ServerApp imports them).
    for package in ("fedguard", "strategies"):
        shutil.copytree(ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__", "*.gz", "test_*"))
    return app


def measure(variant: str, steps: int, nodes: int) -> dict:
    env, fast = VARIANTS[variant]
    work = Path(tempfile.mkdtemp(prefix="fg-latency-"))
    deployment = LoopbackDeployment(work, extra_env=env)
    try:
        deployment.start_superlink()
        started = [deployment.start_supernode(f"sn{i}", deployment.new_key(f"sn{i}"),
                                              f"partition-id={i} num-partitions={nodes}") for i in range(nodes)]
        for node in started:
            deployment.wait_connected(node)
        out = work / "run"
        run = deployment.flwr_run(fastpoll_app(work) if fast else ROOT, {
            "num-server-rounds": 1, "local-steps": steps, "exchange-batches": 1, "batch-size": 8,
            "eval-examples": 50, "min-fit-clients": nodes, "round-timeout": 300.0, "output-dir": str(out)})
        wait_for(lambda: not run.alive(), 900, f"the {variant} run to finish", interval=0.5)
        metrics = deployment.metrics(out)
        if not metrics or not metrics["rounds"]:
            raise RuntimeError(f"{variant}: no finished round\n{run.text()[-3000:]}")
        r = metrics["rounds"][0]
        if r["clients_dropped"]:
            raise RuntimeError(f"{variant}: clients dropped: {r['clients_dropped']}")
        train = r["seconds"] - r["eval_seconds"]
        return {"variant": variant, "exchanges": r["exchanges"], "per_exchange": train / r["exchanges"],
                "client_compute": r["client_seconds"] / r["exchanges"], "round_seconds": r["seconds"]}
    finally:
        deployment.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="per-exchange latency in a loopback deployment")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=4, help="local-steps (one batch per exchange)")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNodes")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant")
    args = parser.parse_args()
    cold = [subprocess.run([sys.executable, "-c", COLD_START], capture_output=True, text=True, check=True,
                           cwd=ROOT).stdout.split() for _ in range(2)]
    print("ClientApp cold start (imports / imports + model load): "
          + ", ".join(f"{a}s / {b}s" for a, b in cold), flush=True)
    rows = []
    for variant in args.variants:
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            rows.append(measure(variant, args.steps, args.nodes))
            print(f"{variant}: {rows[-1]['per_exchange']:.1f} s/exchange ({time.perf_counter() - t0:.0f}s)", flush=True)
    print()
    print(f"{'variant':<32} {'exchanges':>9} {'s/exchange':>10} {'client compute':>14} {'round s':>8}")
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]
        per = statistics.median(r["per_exchange"] for r in mine)
        print(f"{variant:<32} {mine[0]['exchanges']:>9} {per:>10.1f} "
              f"{statistics.median(r['client_compute'] for r in mine):>14.2f} "
              f"{statistics.median(r['round_seconds'] for r in mine):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
