"""Privacy events travel with every reply; missing or malformed ones are refused, never read as zero."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, RecordDict

from fedguard.privacy import MechanismEvent
from fedguard.protocol import messages as proto


def test_events_round_trip():
    events = [MechanismEvent("dp-sgd", noise_multiplier=1.1, sample_rate=0.01, steps=30, round=2, clip_norm=1.0),
              MechanismEvent("label-rr", epsilon=2.0, round=0),
              MechanismEvent("activation", noise_multiplier=0.5, sample_rate=1.0, steps=2, round=2, clip_norm=30.0)]
    client, decoded = proto.decode_privacy(RecordDict({proto.PRIVACY: proto.encode_privacy("alice", events)}))
    assert client == "alice" and decoded == events


def test_a_reply_without_privacy_record_is_unknown_spending():
    with pytest.raises(proto.ProtocolError, match="spending is unknown"):
        proto.decode_privacy(RecordDict({}))


@pytest.mark.parametrize("field,value,message", [
    ("noise-multiplier", [-1.0], "malformed"),
    ("sample-rate", [1.5], "malformed"),
    ("steps", [0], "malformed"),
    ("kind", ["DP SGD"], "malformed"),
    ("steps", [1, 2], "different lengths"),
])
def test_malformed_events_are_refused(field, value, message):
    record = proto.encode_privacy("bob", [MechanismEvent("dp-sgd", noise_multiplier=1.0, sample_rate=0.1, steps=3)])
    record[field] = value
    with pytest.raises(proto.ProtocolError, match=message):
        proto.decode_privacy(RecordDict({proto.PRIVACY: record}))


def test_refusal_carries_reason_and_no_spending():
    content = proto.encode_refusal("carol", "budget")
    assert content.config_records[proto.REFUSAL]["reason"] == "budget"
    assert proto.decode_privacy(content) == ("carol", [])
    assert isinstance(content.config_records[proto.PRIVACY], ConfigRecord)
