"""Ray-scheduled FedGuard simulation at scale: 10, 100, 1,000 simulated SuperNodes, 10 sampled per round.

Each size is one ``flwr run .`` in isolation (own Flower home, own local SuperLink ports, own Ray temp
folder), with the number of SuperNodes and the per-client resources given per run::

    --federation-config "num-supernodes=N client-resources-num-cpus=C client-resources-num-gpus=G"

``fraction-train`` is set to ``sample/N`` and ``min-fit-clients`` to ``sample`` so the same number of clients
train in every round whatever N is. While a run goes, the proportional set size (PSS, so shared pages count
once) of every process of that run (local SuperLink, flwr-simulation, Ray head and workers: found by their
``FLWR_HOME``) is summed twice a second; the peak is reported.

Printed per size: seconds per round (mean of the rounds' wall time, from ``metrics.json``), the share of round
time the server spent waiting on the engine (``messaging_seconds / seconds``: neither client nor server
compute nor evaluation), peak memory, messages per second (server->client messages plus their replies:
2 x exchanges x clients per round, divided by the round's wall time) and megabytes on the wire per round
(``bytes_up + bytes_down``: activations, gradients, adapters).

``--wire SETTING ...``: a second table at ``--wire-supernodes`` SuperNodes comparing what travels on the wire
and what it does to accuracy, all runs with the same seed and evaluated on the whole SST-2 dev set
(``--wire-eval-examples``). A setting is ``+``-joined parts: ``float32`` (baseline, listed first),
``float16``/``bfloat16`` (``activation-dtype``), ``int8``, ``topk:F`` (``activation-compression``, F =
``activation-topk``), e.g. ``--wire float32 bfloat16 int8 topk:0.1 topk:0.1+bfloat16``.

``--gpu``: give each ClientApp a fraction of a GPU (``--gpu-fraction``, default 0.25: four clients share a
GPU) and repeat the table on the GPU, then print the per-round speed-up against the CPU rows. Without CUDA
(``torch.cuda.is_available()`` false) the GPU rows are skipped with a message.

Usage (2 CPU cores are enough for 1,000 SuperNodes)::

    flock /tmp/fedguard-heavy.lock python simulations/scale.py                 # 10, 100, 1000
    python simulations/scale.py --sizes 10 100 --rounds 2 --cpus-per-client 2
    python simulations/scale.py --gpu --gpu-fraction 0.25
    python simulations/scale.py --sizes 10 --wire float32 bfloat16 int8 topk:0.1 --wire-rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fedguard.apps.local_run import isolated_env
from fedguard.apps.local_run import toml_value as _toml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _processes_of(home: str) -> list[int]:
    """PIDs whose environment has FLWR_HOME=home (the run's SuperLink, simulation and Ray processes)."""
    needle = f"FLWR_HOME={home}\0".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                if needle in handle.read() + b"\0":
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory(threading.Thread):
    """Samples the summed PSS of a run's processes every ``interval`` seconds; ``peak`` is the maximum."""

    def __init__(self, home: str, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.home, self.interval = home, interval
        self.peak = 0
        self.peak_processes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids = _processes_of(self.home)
            total = sum(_pss_bytes(pid) for pid in pids)
            if total > self.peak:
                self.peak, self.peak_processes = total, len(pids)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Row:
    device: str
    supernodes: int
    sampled: int
    rounds: int
    seconds_per_round: float
    peak_gb: float
    processes: int
    messages_per_second: float
    total_seconds: float
    accuracy: float
    wait_share: float = 0.0
    megabytes_per_round: float = 0.0
    bytes_up_per_round: float = 0.0


def federation_config(supernodes: int, cpus_per_client: int, gpus_per_client: float | None = None) -> str:
    """The ``--federation-config`` value: N simulated SuperNodes, CPUs (and a GPU fraction) per ClientApp.

    Flower 1.41 stores ``client-resources-num-cpus`` as an integer (``num-gpus`` may be fractional)."""
    if int(cpus_per_client) != cpus_per_client or cpus_per_client < 1:
        raise ValueError(f"client-resources-num-cpus={cpus_per_client}: Flower 1.41 takes a whole number >= 1")
    config = f"num-supernodes={supernodes} client-resources-num-cpus={int(cpus_per_client)}"
    if gpus_per_client is not None:
        config += f" client-resources-num-gpus={gpus_per_client:g}"
    return config


def _fraction(text: str) -> bool:
    try:
        return 0.0 < float(text) <= 1.0
    except ValueError:
        return False


def wire_settings(setting: str) -> dict[str, object]:
    """Run-config overrides for one ``--wire`` setting (see the module docstring)."""
    overrides: dict[str, object] = {}
    for part in setting.split("+"):
        name, _, value = part.partition(":")
        if name in ("float32", "float16", "bfloat16") and not value:
            overrides["activation-dtype"] = name
        elif name == "int8" and not value:
            overrides["activation-compression"] = "int8"
        elif name == "topk" and value and _fraction(value):
            overrides.update({"activation-compression": "topk", "activation-topk": float(value)})
        else:
            raise ValueError(f"--wire part {part!r}: allowed float32, float16, bfloat16, int8, topk:F (0 < F <= 1)")
    return overrides


def run_once(size: int, args: argparse.Namespace, gpu: bool, rounds: int | None = None,
             eval_examples: int | None = None, overrides: dict[str, object] | None = None) -> Row:
    work = Path(tempfile.mkdtemp(prefix=f"fg-scale-{size}-"))
    home = work / "flwr-home"
    home.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="fgray", dir="/tmp"))  # short: Ray's socket paths are length-limited
    out = work / "run"
    env = {**isolated_env(home), "RAY_TMPDIR": str(ray_tmp)}
    sample = min(args.sample, size)
    rounds_wanted = args.rounds if rounds is None else rounds
    run_config = {
        "num-server-rounds": rounds_wanted, "local-steps": args.local_steps, "batch-size": args.batch_size,
        "exchange-batches": args.exchange_batches,
        "eval-examples": args.eval_examples if eval_examples is None else eval_examples,
        "fraction-train": sample / size, "min-fit-clients": sample, "round-timeout": 600.0,
        "output-dir": str(out), **(overrides or {}),
    }
    federation = federation_config(size, args.cpus_per_client, args.gpu_fraction if gpu else None)
    command = [str(BIN / "flwr"), "run", str(ROOT), "--stream",
               "--run-config", " ".join(f"{k}={_toml(v)}" for k, v in run_config.items()),
               "--federation-config", federation]
    monitor = PeakMemory(str(home))
    monitor.start()
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    finally:
        total = time.perf_counter() - started
        try:
            monitor.stop()
        finally:
            _stop_run_processes(str(home))
    metrics_path = out / "metrics.json"
    if not metrics_path.exists():
        raise RuntimeError(f"{size} SuperNodes: the run wrote no metrics.json (exit {result.returncode})\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    rounds = json.loads(metrics_path.read_text())["rounds"]
    if len(rounds) != rounds_wanted:
        raise RuntimeError(f"{size} SuperNodes: {len(rounds)} of {rounds_wanted} rounds finished\n{result.stdout[-3000:]}")
    bad = [r for r in rounds if r["clients_sampled"] != sample or r["clients_aggregated"] != sample]
    if bad:
        raise RuntimeError(f"{size} SuperNodes: expected {sample} clients sampled and aggregated per round, got "
                           f"{[(r['clients_sampled'], r['clients_aggregated'], r['clients_dropped']) for r in bad]}")
    seconds = sum(r["seconds"] for r in rounds) / len(rounds)
    messages = sum(2 * r["exchanges"] * r["clients_sampled"] for r in rounds)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    wait = sum(r["messaging_seconds"] for r in rounds) / sum(r["seconds"] for r in rounds)
    wire = sum(r["bytes_up"] + r["bytes_down"] for r in rounds) / len(rounds)
    return Row("gpu" if gpu else "cpu", size, sample, len(rounds), seconds, monitor.peak / 2**30,
               monitor.peak_processes, messages / sum(r["seconds"] for r in rounds), total, rounds[-1]["accuracy"],
               wait, wire / 1e6, sum(r["bytes_up"] for r in rounds) / len(rounds))


def _stop_run_processes(home: str) -> None:
    """Stop this run's detached local SuperLink and anything else still running with its FLWR_HOME."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for p in _processes_of(home) if p != os.getpid()]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
            time.sleep(0.2)
        if not pids:
            return


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def print_table(rows: list[Row]) -> None:
    header = (f"{'device':<6} {'SuperNodes':>10} {'sampled':>7} {'rounds':>6} {'s/round':>8} {'wait':>5} "
              f"{'peak mem':>9} {'procs':>5} {'msg/s':>7} {'MB/round':>8} {'total s':>8} {'acc':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.device:<6} {r.supernodes:>10} {r.sampled:>7} {r.rounds:>6} {r.seconds_per_round:>8.1f} "
              f"{r.wait_share:>5.0%} {r.peak_gb:>7.2f}GB {r.processes:>5} {r.messages_per_second:>7.1f} "
              f"{r.megabytes_per_round:>8.1f} {r.total_seconds:>8.1f} {r.accuracy:>6.3f}")
    cpu = {r.supernodes: r for r in rows if r.device == "cpu"}
    for r in rows:
        if r.device == "gpu" and r.supernodes in cpu:
            print(f"speed-up per round on GPU, {r.supernodes} SuperNodes: "
                  f"{cpu[r.supernodes].seconds_per_round / r.seconds_per_round:.2f}x")


def print_wire_table(settings: list[str], rows: list[Row]) -> None:
    """Bytes up per round and final accuracy per wire setting, as ratios / differences to the first one."""
    base = rows[0]
    header = (f"{'wire setting':<22} {'up MB/round':>11} {'vs ' + settings[0]:>12} {'MB/round':>9} "
              f"{'s/round':>8} {'accuracy':>8} {'Δ points':>8}")
    print(header)
    print("-" * len(header))
    for setting, r in zip(settings, rows):
        print(f"{setting:<22} {r.bytes_up_per_round / 1e6:>11.2f} {r.bytes_up_per_round / base.bytes_up_per_round:>11.2f}x "
              f"{r.megabytes_per_round:>9.2f} {r.seconds_per_round:>8.1f} {r.accuracy:>8.4f} "
              f"{100 * (r.accuracy - base.accuracy):>+8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="numbers of SuperNodes (default 10 100 1000; none when only --wire is given)")
    parser.add_argument("--sample", type=int, default=10, help="clients sampled per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--exchange-batches", type=int, default=1)
    parser.add_argument("--eval-examples", type=int, default=100)
    parser.add_argument("--cpus-per-client", type=int, default=1,
                        help="client-resources-num-cpus (a whole number in Flower 1.41): Ray runs "
                             "CPUs / this ClientApps at once")
    parser.add_argument("--gpu", action="store_true", help="also run with fractional GPUs and report the speed-up")
    parser.add_argument("--gpu-fraction", type=float, default=0.25,
                        help="client-resources-num-gpus per ClientApp (0.25: four share a GPU)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run before giving up")
    parser.add_argument("--wire", nargs="+", default=[], metavar="SETTING",
                        help="compare wire encodings (first = baseline), e.g. float32 bfloat16 int8 topk:0.1")
    parser.add_argument("--wire-supernodes", type=int, default=10, help="SuperNodes for the --wire runs")
    parser.add_argument("--wire-rounds", type=int, default=3, help="rounds for the --wire runs")
    parser.add_argument("--wire-eval-examples", type=int, default=0,
                        help="held-out examples scored in the --wire runs (0 = all 872 of SST-2 dev)")
    args = parser.parse_args(argv)
    try:
        wire = [(setting, wire_settings(setting)) for setting in args.wire]
    except ValueError as err:
        parser.error(str(err))
    if any(s < 1 for s in args.sizes or []) or args.sample < 1:
        parser.error("--sizes and --sample must be positive")
    if args.gpu and not 0 < args.gpu_fraction <= 1:
        parser.error("--gpu-fraction must be in (0, 1]")
    devices = ["cpu"]
    if args.gpu:
        import torch

        if torch.cuda.is_available():
            devices.append("gpu")
        else:
            print("--gpu: CUDA is not available here (torch.cuda.is_available() is False): GPU rows not measured",
                  flush=True)
    rows = []
    sizes = args.sizes if args.sizes is not None else ([] if wire else [10, 100, 1000])
    for device in devices:
        for size in sizes:
            print(f"running {size} SuperNodes on {device} ...", flush=True)
            rows.append(run_once(size, args, gpu=device == "gpu"))
            print(f"  done in {rows[-1].total_seconds:.0f}s", flush=True)
    print()
    print(f"FedGuard split-LoRA simulation, {args.rounds} rounds, {args.sample} sampled per round, "
          f"local-steps {args.local_steps}, batch-size {args.batch_size}, exchange-batches {args.exchange_batches}, "
          f"eval-examples {args.eval_examples}, client-resources-num-cpus {args.cpus_per_client:g}, "
          f"{os.cpu_count()} CPU cores")
    if rows:
        print_table(rows)
    if wire:
        wire_rows = []
        for setting, overrides in wire:
            print(f"running wire setting {setting} ({args.wire_supernodes} SuperNodes) ...", flush=True)
            wire_rows.append(run_once(args.wire_supernodes, args, gpu=False, rounds=args.wire_rounds,
                                      eval_examples=args.wire_eval_examples, overrides=overrides))
        print()
        print(f"Wire encodings: {args.wire_supernodes} SuperNodes, {min(args.sample, args.wire_supernodes)} sampled, "
              f"{args.wire_rounds} rounds, seed 42 for all, accuracy on "
              f"{args.wire_eval_examples or 'all'} held-out examples after the last round")
        print_wire_table(args.wire, wire_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
