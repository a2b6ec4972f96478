import json
import os

import pytest

from fedguard.privacy import InvalidEventError, LedgerFormatError, MechanismEvent, PrivacyLedger


def _ev(kind="dp-sgd", sigma=1.0, q=0.01, steps=100, **kw):
    return MechanismEvent(kind, noise_multiplier=sigma, sample_rate=q, steps=steps, **kw)


def test_merge_query_and_kinds(tmp_path):
    led = PrivacyLedger(tmp_path / "ledger.json")
    led.record("a", _ev(steps=100, round=1))
    led.record("a", _ev(steps=50, round=2))
    led.record("a", _ev("activation", sigma=2.0, q=1.0, steps=3))
    led.record("b", _ev(steps=10))
    led.record("c", _ev(sigma=0.8, steps=300))
    assert [e.steps for e in led.events("a", "dp-sgd")] == [150]
    assert len(led.events("a")) == 2
    only_sgd = led.epsilon("a", 1e-5, "dp-sgd", warn=False)
    both = led.epsilon("a", 1e-5, warn=False)
    assert both.epsilon_certified > only_sgd.epsilon_certified
    s = led.summary(1e-5, "dp-sgd", warn=False)
    assert s.worst_client == "c"
    eps = sorted(e.epsilon_certified for e in s.per_client.values())
    assert s.median_epsilon_certified == eps[1]
    assert led.worst_client(1e-5, warn=False)[0] == "a"  # its un-amplified activation releases dominate


def test_persistence_roundtrip(tmp_path):
    path = tmp_path / "ledger.json"
    led = PrivacyLedger(path)
    led.record("client-1", _ev(round=3, clip_norm=1.0))
    led.record("client-1", MechanismEvent("label-rr", epsilon=0.25, steps=4))
    back = PrivacyLedger.load(path)
    assert back.to_dict() == led.to_dict()
    assert back.epsilon("client-1", 1e-5, warn=False) == led.epsilon("client-1", 1e-5, warn=False)
    assert back.epsilon("client-1", 1e-5, "label-rr").epsilon_certified == pytest.approx(1.0)


def test_crash_between_writes_loses_nothing(tmp_path, monkeypatch):
    path = tmp_path / "ledger.json"
    led = PrivacyLedger(path)
    led.record("a", _ev(steps=100))
    led.record("b", _ev(steps=7))
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        led.record("a", _ev(steps=1))
    monkeypatch.undo()
    assert path.read_bytes() == before  # old file intact and valid
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]  # temp file cleaned up
    back = PrivacyLedger.load(path)
    assert back.events("a")[0].steps == 100 and back.events("b")[0].steps == 7


def test_truncated_temp_write_does_not_touch_ledger(tmp_path, monkeypatch):
    path = tmp_path / "ledger.json"
    led = PrivacyLedger(path)
    led.record("a", _ev())
    before = path.read_bytes()
    real_fsync = os.fsync

    def crash_fsync(fd):
        raise OSError("disk died mid-write")

    monkeypatch.setattr(os, "fsync", crash_fsync)
    with pytest.raises(OSError):
        led.record("a", _ev(steps=5))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == before
    json.loads(path.read_text())


def test_refuses_malformed_events_and_kinds(tmp_path):
    led = PrivacyLedger(tmp_path / "l.json")
    with pytest.raises(InvalidEventError, match="kind 'telemetry' is not allowed"):
        led.record("a", _ev("telemetry"))
    with pytest.raises(InvalidEventError, match="client_id"):
        led.record("", _ev())
    with pytest.raises(InvalidEventError, match="MechanismEvent"):
        led.record("a", {"kind": "dp-sgd"})
    custom = PrivacyLedger(allowed_kinds={"telemetry"})
    custom.record("a", _ev("telemetry"))


@pytest.mark.parametrize(
    "patch,match",
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"sample_rate": 2.0}, "sample_rate"),
        ({"steps": 0}, "steps"),
        ({"bogus": 1}, "unknown event field"),
    ],
)
def test_load_rejects_malformed_files(tmp_path, patch, match):
    path = tmp_path / "l.json"
    led = PrivacyLedger(path)
    led.record("a", _ev())
    data = json.loads(path.read_text())
    data["clients"]["a"][0].update(patch)
    path.write_text(json.dumps(data))
    with pytest.raises(LedgerFormatError, match=match):
        PrivacyLedger.load(path)


def test_load_rejects_non_ledger(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(LedgerFormatError, match="JSON"):
        PrivacyLedger.load(p)
    p.write_text("{}")
    with pytest.raises(LedgerFormatError, match="not a"):
        PrivacyLedger.load(p)
