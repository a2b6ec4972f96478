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


def test_sigma_calibrates_on_the_certified_bound_by_default(capsys):
    # The privacy-pitfalls case: the Edgeworth root would be sigma 0.282, whose certified epsilon is 16.5.
    assert main(["privacy", "sigma", "--target-epsilon", "8", "--sample-rate", "0.00143",
                 "--steps", "180", "--delta", "1e-5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "certified" and out["relation"] == "add-remove"
    assert out["noise_multiplier"] == pytest.approx(0.363, abs=0.002)
    assert 7.99 <= out["certified"] <= 8.0


def test_sigma_edgeworth_on_request(capsys):
    assert main(["privacy", "sigma", "--target-epsilon", "2", "--sample-rate", "0.004",
                 "--steps", "10000", "--delta", "1e-5", "--json", "--method", "edgeworth"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "edgeworth" and out["edgeworth"] == pytest.approx(2.0, abs=1e-4)


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
