"""A third-party strategy, pip-installed with an entry point, runs a real 2-round `flwr run .` simulation."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import pytest

from strategies import available_strategies, build_strategy
from fedguard.config import RunConfig
from tests.apps.flwr_harness import flwr_run

PACKAGE = "fedguard-strategy-probe-plugin"
MODULE = "fedguard_strategy_probe_plugin"
NAME = "probe-mean"


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def installed_plugin(tmp_path):
    """A throw-away plugin package installed into the running venv (offline); uninstalled afterwards."""
    src = tmp_path / "plugin-src"
    (src / MODULE).mkdir(parents=True)
    (src / MODULE / "__init__.py").write_text(textwrap.dedent('''
        """Example-weighted mean that appends "<round> <clients>" to the file named by option `marker`."""
        from strategies import AdapterStrategy, weighted_mean


        class ProbeMean(AdapterStrategy):
            option_names = ("marker",)

            def aggregate_adapters(self, server_round, updates, current_global):
                with open(self.options["marker"], "a") as out:
                    out.write(f"{server_round} {len(updates)}\\n")
                return weighted_mean(updates)
    '''))
    (src / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{PACKAGE}"
        version = "0.0.1"

        [project.entry-points."fedguard.strategies"]
        {NAME} = "{MODULE}:ProbeMean"

        [tool.setuptools]
        packages = ["{MODULE}"]
    '''))
    result = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(src))
    assert result.returncode == 0, result.stdout + result.stderr
    importlib.invalidate_caches()
    try:
        yield
    finally:
        _pip("uninstall", "-y", PACKAGE)
        sys.modules.pop(MODULE, None)
        importlib.invalidate_caches()


@pytest.mark.slow
def test_entry_point_plugin_runs_a_two_round_simulation(installed_plugin, tmp_path):
    assert NAME in available_strategies()
    marker = tmp_path / "aggregations.txt"
    strategy = build_strategy(RunConfig(strategy=NAME, strategy_options=f"marker={marker}"))
    assert type(strategy).__name__ == "ProbeMean"

    out = tmp_path / "run"
    result = flwr_run(tmp_path, {
        "strategy": NAME, "strategy-options": f"marker={marker}",
        "num-server-rounds": 2, "local-steps": 4, "batch-size": 16, "eval-examples": 100,
        "output-dir": str(out),
    }, num_supernodes=2)
    logs = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert (out / "metrics.json").exists(), f"run wrote no metrics.json\n{logs}"
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2], logs
    assert all(r["aggregated"] and r["clients_aggregated"] == 2 for r in rounds), rounds
    # The plugin itself aggregated both rounds, with the options from the run config.
    assert marker.read_text().split("\n")[:2] == ["1 2", "2 2"], logs
    assert json.loads((out / "config.json").read_text())["strategy"] == NAME
