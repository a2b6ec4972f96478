"""Memory of a client process: the whole split model (``runtime_for``) against the client half only
(``client_runtime``), each measured in a fresh subprocess.

    python simulations/client_memory.py                       # default model (MiniLM), split-layer 2
    python simulations/client_memory.py --run-config "split-layer=4"

Per variant it prints the process's peak resident memory (VmHWM: includes the transient whole-model load,
which both variants go through), its resident memory once the runtime is built (VmRSS, after a GC: what
the process keeps while it serves clients), the same minus a process that only imported the libraries
("model share"), and the parameters it holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

VARIANTS = {
    "imports only": "none",
    "whole model (runtime_for)": "whole",
    "client half (client_runtime)": "client",
}

_CHILD = r"""
import gc, json, sys
import torch
from fedguard.runtime import client_runtime, runtime_for
from fedguard.check import parse_key_values
from fedguard.config import RunConfig

def status(key):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

kind, overrides = sys.argv[1], sys.argv[2]
config = RunConfig.from_run_config({"device": "cpu", **parse_key_values(overrides)})
params = 0
if kind != "none":
    runtime = (runtime_for if kind == "whole" else client_runtime)(config, 2)
    params = sum(p.numel() for p in runtime.task_model.parameters())
    params += sum(p.numel() for p in runtime.client.parameters() if p.requires_grad)
gc.collect()
print(json.dumps({"peak": status("VmHWM"), "rss": status("VmRSS"), "params": params}))
"""


def measure(kind: str, overrides: str) -> dict[str, int]:
    """Run one variant in a fresh interpreter and return its ``peak``/``rss`` bytes and ``params``."""
    done = subprocess.run([sys.executable, "-c", _CHILD, kind, overrides], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"variant {kind!r} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-config", default="", help="run-config overrides, e.g. \"split-layer=4\"")
    args = parser.parse_args(argv)
    results = {label: measure(kind, args.run_config) for label, kind in VARIANTS.items()}
    base = results["imports only"]["rss"]
    mb = 1024 ** 2
    print(f"client process memory, run config overrides: {args.run_config or '(none: MiniLM, split-layer 2)'}")
    print(f"{'variant':30} {'peak MB':>8} {'RSS MB':>8} {'model share MB':>15} {'params (M)':>11}")
    for label, row in results.items():
        share = (row["rss"] - base) / mb if row["params"] else 0.0
        print(f"{label:30} {row['peak'] / mb:8.0f} {row['rss'] / mb:8.0f} {share:15.0f} {row['params'] / 1e6:11.2f}")
    whole, client = results["whole model (runtime_for)"], results["client half (client_runtime)"]
    print(f"ratio client/whole: peak {client['peak'] / whole['peak']:.2f}, RSS {client['rss'] / whole['rss']:.2f}, "
          f"model share {(client['rss'] - base) / max(1, whole['rss'] - base):.2f}, "
          f"params {client['params'] / whole['params']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
