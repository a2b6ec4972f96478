import math

import pytest

from fedguard.privacy import InvalidEventError, MechanismEvent


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(noise_multiplier=0.0, sample_rate=0.1), "noise_multiplier"),
        (dict(noise_multiplier=-1.0, sample_rate=0.1), "noise_multiplier"),
        (dict(noise_multiplier=math.nan, sample_rate=0.1), "noise_multiplier"),
        (dict(noise_multiplier=math.inf, sample_rate=0.1), "noise_multiplier"),
        (dict(noise_multiplier="1.0", sample_rate=0.1), "noise_multiplier"),
        (dict(noise_multiplier=1.0, sample_rate=0.0), "sample_rate"),
        (dict(noise_multiplier=1.0, sample_rate=1.5), "sample_rate"),
        (dict(noise_multiplier=1.0, sample_rate=math.nan), "sample_rate"),
        (dict(noise_multiplier=1.0, sample_rate=0.1, steps=0), "steps"),
        (dict(noise_multiplier=1.0, sample_rate=0.1, steps=2.5), "steps"),
        (dict(noise_multiplier=1.0, sample_rate=0.1, steps=True), "steps"),
        (dict(noise_multiplier=1.0, sample_rate=0.1, clip_norm=0.0), "clip_norm"),
        (dict(noise_multiplier=1.0, sample_rate=0.1, round=-1), "round"),
        (dict(epsilon=-0.1), "epsilon"),
        (dict(epsilon=math.inf), "epsilon"),
        (dict(epsilon=1.0, noise_multiplier=1.0), "pure-epsilon"),
        (dict(), "Gaussian event needs"),
    ],
)
def test_malformed_events_are_rejected_naming_the_field(kwargs, field):
    with pytest.raises(InvalidEventError, match=field):
        MechanismEvent("dp-sgd", **kwargs)


@pytest.mark.parametrize("kind", ["", "DP SGD", 3, None])
def test_bad_kind(kind):
    with pytest.raises(InvalidEventError, match="kind"):
        MechanismEvent(kind, noise_multiplier=1.0, sample_rate=0.1)


def test_merge_and_dict_roundtrip():
    a = MechanismEvent("dp-sgd", 1.0, 0.01, steps=10, round=1, clip_norm=1.0)
    b = MechanismEvent("dp-sgd", 1.0, 0.01, steps=5, round=2, clip_norm=1.0)
    m = a.merged_with(b)
    assert m.steps == 15 and m.round == 2 and m.clip_norm == 1.0
    assert MechanismEvent.from_dict(m.to_dict()) == m
    with pytest.raises(ValueError):
        a.merged_with(MechanismEvent("activation", 1.0, 0.01))
    with pytest.raises(InvalidEventError, match="unknown event field"):
        MechanismEvent.from_dict({**a.to_dict(), "sigma": 1.0})
    pure = MechanismEvent("label-rr", epsilon=1.0)
    assert pure.is_pure and pure.merge_key != a.merge_key
