"""Memory of a client process: the whole split model (``runtime_for``) against the client half only
(``client_runtime``), loaded as now (only the client's blocks are read from the checkpoint) and as before
(the whole model loaded, then the server's part dropped: what a GGUF checkpoint still gets), each measured in
a fresh subprocess.

    python simulations/client_memory.py                       # default model (MiniLM), split-layer 2
    python simulations/client_memory.py --run-config "split-layer=4"
    python simulations/client_memory.py --random-llama        # a random SmolLM2-135M-shaped Llama, split 2

Per variant it prints the process's peak resident memory (VmHWM), its resident memory once the runtime is
built (VmRSS after a GC: what the process keeps while it serves clients; split into anonymous memory and
file-backed pages, e.g. a memory-mapped checkpoint, which the kernel can reclaim and processes share), the
RSS minus that of a process that only imported the libraries ("model share"), and the parameters it holds;
then the ratios of the client-only load to the whole model and to the whole-load-then-drop client.

``--random-llama`` writes (to a temporary folder) a randomly initialised Llama with SmolLM2-135M's shape (30
blocks of width 576, tied embeddings, the packaged MiniLM tokenizer's 30.5k-token vocabulary: 124M
parameters, 0.5 GB in fp32) and measures it as a causal LM (U-shaped split): a model whose blocks dominate,
unlike MiniLM, whose token-embedding table is half of it. The real SmolLM2 ships as a GGUF file, which is
loaded whole (see :func:`fedguard.runtime.client_split_runtime`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "imports only": "none",
    "whole model (runtime_for)": "whole",
    "client half, whole load + drop": "client-drop",
    "client half, own blocks only": "client",
}

_CHILD = r"""
import gc, json, sys
import torch
import fedguard.runtime as runtime
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
if kind == "client-drop":  # as before: load the whole model, split it, drop the server's part
    runtime.can_load_first_blocks = lambda spec: False
if kind != "none":
    built = (runtime_for if kind == "whole" else client_runtime)(config, 2)
    params = sum(p.numel() for p in built.task_model.parameters())
    params += sum(p.numel() for p in built.client.parameters() if p.requires_grad)
gc.collect()
print(json.dumps({"peak": status("VmHWM"), "rss": status("VmRSS"), "anon": status("RssAnon"),
                  "file": status("RssFile"), "params": params}))
"""

_LLAMA = r"""
import sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from fedguard.model.loading import ModelSpec, load_tokenizer

folder = sys.argv[1]
tokenizer = load_tokenizer(ModelSpec("", "classification"))
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(  # SmolLM2-135M's shape, with the MiniLM tokenizer's vocabulary
    vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True,
    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
))
model.save_pretrained(folder)
tokenizer.save_pretrained(folder)
"""


def measure(kind: str, overrides: str) -> dict[str, int]:
    """Run one variant in a fresh interpreter and return its ``peak``/``rss``/``anon``/``file`` bytes and
    ``params``."""
    done = subprocess.run([sys.executable, "-c", _CHILD, kind, overrides], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"variant {kind!r} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(overrides: str, label: str) -> None:
    results = {name: measure(kind, overrides) for name, kind in VARIANTS.items()}
    base = results["imports only"]["rss"]
    mb = 1024 ** 2
    print(f"client process memory, {label}")
    print(f"{'variant':32} {'peak MB':>8} {'RSS MB':>8} {'anon MB':>8} {'file MB':>8} {'model share MB':>15} "
          f"{'params (M)':>11}")
    for name, row in results.items():
        share = (row["rss"] - base) / mb if row["params"] else 0.0
        print(f"{name:32} {row['peak'] / mb:8.0f} {row['rss'] / mb:8.0f} {row['anon'] / mb:8.0f} "
              f"{row['file'] / mb:8.0f} {share:15.0f} {row['params'] / 1e6:11.2f}")
    client = results["client half, own blocks only"]
    for name in ("whole model (runtime_for)", "client half, whole load + drop"):
        other = results[name]
        print(f"ratio client-only load / {name}: peak {client['peak'] / other['peak']:.2f}, "
              f"RSS {client['rss'] / other['rss']:.2f}, "
              f"model share {(client['rss'] - base) / max(1, other['rss'] - base):.2f}, "
              f"params {client['params'] / other['params']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-config", default="",
                        help="run-config overrides, space-separated, e.g. \"split-layer=4 seed=1\"")
    parser.add_argument("--random-llama", action="store_true",
                        help="measure a random SmolLM2-135M-shaped Llama (written to a temporary folder)")
    args = parser.parse_args(argv)
    if not args.random_llama:
        report(args.run_config, f"run config overrides: {args.run_config or '(none: MiniLM, split-layer 2)'}")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "llama-135m-shape"
        subprocess.run([sys.executable, "-c", _LLAMA, str(model)], check=True, capture_output=True)
        overrides = " ".join(part for part in (f'model="{model}" task="causal-lm"', args.run_config) if part)
        report(overrides, f"random SmolLM2-135M-shaped Llama (30 blocks), causal LM, U shape; run config "
                          f"overrides: {args.run_config or '(none: split-layer 2)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
