"""A secured FedGuard deployment on 127.0.0.1, started with the scripts in ``simulations/deploy/`` (used by the
deployment tests and the deployment benchmarks; needs a source checkout).

One SuperLink with TLS (certificates from ``make-certs.sh``) and SuperNode authentication, SuperNodes with
their own keys, partitions and ledger paths, and ``flwr run . <connection>`` against it. Everything runs with
its own Flower home, free ports and no runtime dependency installation. Every process is started in its own
session and :meth:`LoopbackDeployment.close` kills each of those process groups (SuperNode -> SuperExec ->
flwr-clientapp; SuperLink -> SuperExec -> flwr-serverapp), so nothing outlives a test, even a failed one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fedguard.apps.local_run import free_port
from fedguard.apps.local_run import toml_value as _toml_value

ROOT = Path(__file__).resolve().parents[2]  # the source checkout (its simulations/deploy scripts)
SCRIPTS = ROOT / "simulations" / "deploy"
BIN = Path(sys.executable).parent
CONNECTION = "fedguard-loopback"


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``condition`` until it holds; raise ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (as a crash or power loss would), then reap it."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class LoopbackDeployment:
    """Certificates, a Flower home and the processes of one loopback deployment under ``workdir``."""

    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.certs = self.workdir / "certs"
        self.home = self.workdir / "flwr-home"
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            **self.extra_env,
        }

    # -- setup --------------------------------------------------------------------------------
    def script(self, name: str, *args: object, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(SCRIPTS / name), *map(str, args)], env=self.env, capture_output=True,
                                text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Process:
        log = self.logs / f"{name}.log"
        handle = open(log, "w")  # noqa: SIM115 - closed when the process is reaped at close()
        popen = subprocess.Popen([str(c) for c in command], env={**self.env, **(env or {})}, stdout=handle,
                                 stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir)
        handle.close()
        proc = Process(name, popen, log)
        self.processes.append(proc)
        return proc

    def start_superlink(self, timeout: float = 60) -> Process:
        self.script("make-certs.sh", self.certs, "127.0.0.1")
        link = self._spawn("superlink", [str(SCRIPTS / "start-superlink.sh"), self.certs, self.workdir / "superlink",
                                         "127.0.0.1", self.port])

        def listening() -> bool:
            if not link.alive():
                raise RuntimeError(f"SuperLink exited ({link.popen.returncode}):\n{link.text()[-3000:]}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, timeout, f"the SuperLink to listen on {self.address}")
        self.script("add-connection.sh", CONNECTION, self.address, self.certs / "ca.crt")
        return link

    def new_key(self, name: str, register: bool = True) -> Path:
        key = self.workdir / "keys" / name
        self.script("make-supernode-key.sh", key)
        if register:
            self.script("register-supernode.sh", CONNECTION, f"{key}.pub")
        return key

    def start_supernode(self, name: str, key: Path, node_config: str, env: dict[str, str] | None = None) -> Process:
        """A SuperNode (and the ClientApp processes it starts) with ``env`` added to the deployment's."""
        return self._spawn(name, [str(SCRIPTS / "start-supernode.sh"), self.address, self.certs / "ca.crt", key,
                                  node_config, free_port()], env)

    @staticmethod
    def node_id(node: Process) -> str | None:
        for line in node.text().splitlines():
            if "SuperNode ID:" in line:
                return line.rsplit("SuperNode ID:", 1)[1].strip()
        return None

    def wait_connected(self, node: Process, timeout: float = 60) -> str:
        def connected() -> bool:
            if not node.alive():
                raise RuntimeError(f"{node.name} exited ({node.popen.returncode}):\n{node.text()[-3000:]}")
            return self.node_id(node) is not None

        wait_for(connected, timeout, f"{node.name} to connect")
        return self.node_id(node)  # type: ignore[return-value]

    # -- a run --------------------------------------------------------------------------------
    def flwr_run(self, app_dir: Path, run_config: dict[str, object]) -> Process:
        """Start ``flwr run APP_DIR <connection> --stream`` in the background (see :meth:`wait`)."""
        overrides = " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())
        proc = self._spawn("flwr-run", [str(BIN / "flwr"), "run", str(app_dir), CONNECTION, "--stream",
                                        "--run-config", overrides])
        return proc

    @staticmethod
    def metrics(output_dir: Path) -> dict | None:
        path = output_dir / "metrics.json"
        return json.loads(path.read_text()) if path.exists() else None

    # -- teardown -----------------------------------------------------------------------------
    def close(self) -> None:
        """Kill every process group this deployment started (SuperNodes first, then the SuperLink)."""
        for proc in reversed(self.processes):
            proc.kill()
