import pytest

pytest.importorskip("flwr")
from flwr.serverapp import (  # noqa: E402
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyAccountant,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)

from fedguard.privacy import EdgeworthAccountant  # noqa: E402


def _config(method=SamplingMethod.POISSON, max_epsilon=5.0):
    return PrivacyConfig(
        target_delta=1e-5, population_size=1000,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE, sampling_method=method, max_epsilon=max_epsilon,
    )


def test_satisfies_protocol_members():
    acc = EdgeworthAccountant(_config(), order=1)
    for name in [n for n in dir(PrivacyAccountant) if not n.startswith("_")]:
        assert hasattr(acc, name), name
    assert acc.config.population_size == 1000 and acc.num_releases == 0


def test_poisson_matches_rdp_semantics_and_is_tighter():
    event = GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=10, population_size=1000)
    ours, rdp = EdgeworthAccountant(_config()), RdpAccountant(_config())
    ours.compose(event, 100)
    rdp.compose(event, 100)
    assert ours.history == {(1.0, 0.01): 100} and ours.num_releases == rdp.num_releases == 100
    assert 0 < ours.get_epsilon(1e-5) < rdp.get_epsilon(1e-5)
    spent = ours.get_privacy_spent()
    assert spent.epsilon == ours.get_epsilon(1e-5) and spent.delta == 1e-5 and spent.num_releases == 100
    assert spent.accounting_method.startswith("pld-pessimistic")
    assert ours.get_delta(spent.epsilon) <= 1e-5 * 1.001
    assert ours.get_epsilon_estimate(1e-5) > 0


def test_no_amplification_uses_q_one():
    acc = EdgeworthAccountant(_config(SamplingMethod.NO_AMPLIFICATION))
    acc.compose(GaussianPrivacyEvent(noise_multiplier=2.0, sample_size=3, population_size=1000), 2)
    assert acc.history == {(2.0, 1.0): 2}


def test_would_exceed_uses_certified_and_does_not_mutate():
    acc = EdgeworthAccountant(_config(max_epsilon=1.0))
    event = GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=10, population_size=1000)
    assert not acc.would_exceed(event, count=10)
    assert acc.would_exceed(event, count=5000)
    assert acc.num_releases == 0 and acc.history == {}
    assert acc.would_exceed(event, max_epsilon=1e-3)


def test_state_dict_roundtrip_and_mismatch():
    acc = EdgeworthAccountant(_config(), order=2)
    e1 = GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=10, population_size=1000)
    e2 = GaussianPrivacyEvent(noise_multiplier=1.5, sample_size=20, population_size=1000)
    acc.compose(e1, 3)
    acc.compose(e1, 2)
    acc.compose(e2)
    state = acc.state_dict()
    fresh = EdgeworthAccountant(_config(), order=2)
    fresh.load_state_dict(state)
    assert fresh.history == acc.history and fresh.num_releases == 6
    assert fresh.get_epsilon(1e-5) == acc.get_epsilon(1e-5)
    with pytest.raises(ValueError, match="configuration"):
        EdgeworthAccountant(_config(max_epsilon=9.0)).load_state_dict(state)
    with pytest.raises(ValueError, match="backend"):
        fresh.load_state_dict({**state, "backend": "rdp"})


def test_rejects_unsupported_and_mismatched():
    with pytest.raises(ValueError, match="without-replacement"):
        EdgeworthAccountant(PrivacyConfig(1e-5, 100, NeighboringRelation.REPLACE_ONE, SamplingMethod.WITHOUT_REPLACEMENT))
    acc = EdgeworthAccountant(_config())
    with pytest.raises(ValueError, match="population_size"):
        acc.compose(GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=1, population_size=5))
    with pytest.raises(ValueError, match="count"):
        acc.compose(GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=1, population_size=1000), 0)
    with pytest.raises(ValueError, match="PrivacyConfig"):
        EdgeworthAccountant().config
