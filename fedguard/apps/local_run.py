"""Run the FedGuard app with `flwr run .` in isolation: its own Flower home, its own SuperLink ports, offline.

Used by the tests and by the experiment scripts in ``simulations/`` (which need a source checkout).

`flwr run .` starts a detached local SuperLink that later runs would reuse with its old environment, so each
call here gets a fresh Flower home and free ports and stops that SuperLink afterwards. `flwr run --stream`
can exit 0 on a failed run: callers must check the files the run wrote, not the exit code.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the source checkout (pyproject.toml with the Flower app)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toml_value(value: object) -> str:
    """``value`` written as a TOML scalar (for --run-config overrides)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


def isolated_env(home: Path) -> dict[str, str]:
    """The environment for an isolated, offline `flwr run`: Flower home ``home``, free SuperLink ports, no
    runtime dependency installation, telemetry or update checks, Hugging Face offline, this interpreter's
    ``bin`` first on ``PATH``."""
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def flwr_run(tmp_path: Path, run_config: dict[str, object], num_supernodes: int = 3,
             timeout: float = 900) -> subprocess.CompletedProcess:
    """``flwr run . --stream`` with ``run_config`` overrides and ``num_supernodes`` simulated clients."""
    home = tmp_path / "flwr-home"
    home.mkdir(parents=True)
    env = isolated_env(home)
    overrides = " ".join(f"{key}={toml_value(value)}" for key, value in run_config.items())
    command = [shutil.which("flwr", path=env["PATH"]) or "flwr", "run", ".", "--stream",
               "--run-config", overrides,
               "--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus=1"]
    try:
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        _stop_superlink(home)


def _stop_superlink(home: Path) -> None:
    """Stop the SuperLink (and its children) that this run's `flwr run` started for ``home``."""
    found = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.split()
    for pid in found:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
