import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedguard.cli import main
from fedguard.privacy import MechanismEvent, PrivacyLedger

REPO = Path(__file__).resolve().parents[2]


def test_epsilon_json_done_when(capsys):
    rc = main(["privacy", "epsilon", "--noise-multiplier", "1.0", "--sample-rate", "0.004",
               "--steps", "10000", "--delta", "1e-5", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert {"edgeworth", "certified", "rdp", "delta"} <= set(out)
    assert out["edgeworth"] == pytest.approx(2.246, abs=5e-3)
    assert 2.18 <= out["certified"] <= 2.20
    assert out["rdp"] > out["certified"] and out["delta"] == 1e-5


def test_epsilon_text_warns_for_short_runs(capsys):
    assert main(["privacy", "epsilon", "--noise-multiplier", "0.9", "--sample-rate", "0.05",
                 "--steps", "30", "--delta", "1e-5", "--no-rdp"]) == 0
    out = capsys.readouterr().out
    assert "certified" in out and "WARNING" in out


def test_sigma(capsys):
    assert main(["privacy", "sigma", "--target-epsilon", "2", "--sample-rate", "0.004",
                 "--steps", "10000", "--delta", "1e-5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["edgeworth"] == pytest.approx(2.0, abs=1e-4)


def test_sigma_unreachable_is_an_error(capsys):
    assert main(["privacy", "sigma", "--target-epsilon", "1e-6", "--sample-rate", "1",
                 "--steps", "100000", "--delta", "1e-5"]) == 2
    assert "unreachable" in capsys.readouterr().err


def test_ledger_summary(tmp_path, capsys):
    path = tmp_path / "l.json"
    led = PrivacyLedger(path)
    led.record("alice", MechanismEvent("dp-sgd", 1.0, 0.01, steps=200))
    led.record("bob", MechanismEvent("dp-sgd", 1.2, 0.01, steps=200))
    assert main(["privacy", "ledger", str(path)]) == 0
    out = capsys.readouterr().out
    assert "worst client: alice" in out
    assert main(["privacy", "ledger", str(path), "--json", "--kind", "dp-sgd"]) == 0
    assert json.loads(capsys.readouterr().out)["worst_client"] == "alice"


def test_bad_arguments_exit_nonzero():
    with pytest.raises(SystemExit):
        main(["privacy", "epsilon", "--noise-multiplier", "-1", "--sample-rate", "0.1", "--steps", "1",
              "--delta", "1e-5"])


def test_python_dash_m():
    proc = subprocess.run(
        [sys.executable, "-m", "fedguard", "privacy", "epsilon", "--noise-multiplier", "2", "--sample-rate",
         "0.01", "--steps", "100", "--delta", "1e-5", "--json", "--no-rdp"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["rdp"] is None and out["certified"] > 0
