"""``fedguard check``: validate a run's configuration and its hardware request before ``flwr run``.

Flower passes the federation settings (``client-resources-num-gpus`` ...) to Ray, not to the apps, so a GPU
request on a machine without a GPU surfaces only as Flower's "ActorPool is empty" after the run started.
This command reads the same inputs as ``flwr run . --run-config ... --federation-config ...`` and says
what is wrong before anything starts.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: flwr depends on tomli
    import tomli as tomllib

__all__ = ["register", "check_run", "parse_key_values"]

DESCRIPTION = """\
Check, before `flwr run`, that a run can start on this machine: the run config (pyproject.toml's
[tool.flwr.app.config] plus your --run-config overrides) is valid, `device` / `server-device` name
a device this machine has, and a GPU request in --federation-config (client-resources-num-gpus)
can be scheduled. A GPU request without a visible GPU otherwise ends the run later with Flower's
bare "ActorPool is empty" error. Exit status 0 = fine, 2 = a problem (printed)."""

EPILOG = """\
examples:
  fedguard check
  fedguard check --federation-config "client-resources-num-gpus=0.25"
  fedguard check --run-config "device='cuda'" --federation-config "client-resources-num-gpus=1"
  fedguard check --run-config "precision='bf16'\""""


def parse_key_values(text: str) -> dict[str, Any]:
    """``"k=v k2='s'"`` (the syntax of ``flwr run``'s ``--run-config`` / ``--federation-config``) as a dict;
    each value is read as TOML (``0.25``, ``true``, ``'cuda'``), a bare word as a string."""
    values: dict[str, Any] = {}
    for part in shlex.split(text, posix=False):
        key, sep, raw = part.partition("=")
        if not sep or not key:
            raise ValueError(f"{part!r}: expected key=value (pairs separated by spaces, e.g. "
                             "\"client-resources-num-gpus=0.25 num-supernodes=10\")")
        try:
            values[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = raw.strip("'\"")
    return values


def _app_config(project: Path) -> dict[str, Any]:
    pyproject = project / "pyproject.toml"
    if not pyproject.is_file():
        raise FileNotFoundError(f"{pyproject}: no pyproject.toml (give the app folder with --app)")
    with pyproject.open("rb") as handle:
        return dict(tomllib.load(handle).get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def check_run(run_config: Mapping[str, Any], federation: Mapping[str, Any]) -> list[str]:
    """Every reason the run cannot start here (empty when it can): run-config errors, a device this machine
    lacks (``device``, ``server-device``), ``precision``, and the GPU request ``client-resources-num-gpus``."""
    from fedguard.config import ConfigError, RunConfig
    from fedguard.model.device import DeviceError, check_gpu_resources, resolve_device

    problems: list[str] = []
    try:
        config = RunConfig.from_run_config(run_config)
    except ConfigError as err:
        return [str(err)]
    for key, value in (("device", config.device), ("server-device", config.server_device)):
        try:
            resolve_device(value, key)
        except DeviceError as err:
            problems.append(str(err))
    try:
        check_gpu_resources(federation.get("client-resources-num-gpus", 0))
    except DeviceError as err:
        problems.append(str(err))
    return problems


def _cmd_check(args: argparse.Namespace) -> int:
    from fedguard.model.device import resolve_device, visible_gpus

    run_config = {**_app_config(Path(args.app)), **parse_key_values(args.run_config)}
    federation = parse_key_values(args.federation_config)
    problems = check_run(run_config, federation)
    if problems:
        for problem in problems:
            print(f"fedguard check: {problem}")
        return 2
    gpus = federation.get("client-resources-num-gpus", 0)
    print(f"ok: run config valid; clients on {resolve_device(run_config.get('device', 'auto'), 'device')}, "
          f"server on {resolve_device(run_config.get('server-device', 'auto'), 'server-device')}; "
          f"client-resources-num-gpus={gpus:g} with {visible_gpus()} GPU(s) visible")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``check`` subcommand to the ``fedguard`` parser."""
    parser = subparsers.add_parser("check", help="check a run's config and GPU request before `flwr run`",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", default=".", metavar="DIR",
                        help="folder of the Flower app's pyproject.toml (default: .)")
    parser.add_argument("--run-config", default="", metavar="'K=V ...'",
                        help="the overrides you pass to `flwr run . --run-config`")
    parser.add_argument("--federation-config", default="", metavar="'K=V ...'",
                        help="what you pass to `flwr run . --federation-config`")
    parser.set_defaults(func=_cmd_check)
    return parser
