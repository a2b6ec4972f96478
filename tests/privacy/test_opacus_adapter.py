import pytest

pytest.importorskip("opacus")
from opacus.accountants import IAccountant, RDPAccountant  # noqa: E402

from fedguard.privacy import EdgeworthAccountant, OpacusEdgeworthAccountant  # noqa: E402


def test_opacus_interface():
    acc = OpacusEdgeworthAccountant()
    assert isinstance(acc, IAccountant) and acc.mechanism() == "edgeworth"
    rdp = RDPAccountant()
    for _ in range(200):
        acc.step(noise_multiplier=1.0, sample_rate=0.01)
        rdp.step(noise_multiplier=1.0, sample_rate=0.01)
    acc.step(noise_multiplier=1.5, sample_rate=0.01)
    rdp.step(noise_multiplier=1.5, sample_rate=0.01)
    assert len(acc) == 2 and acc.history == [(1.0, 0.01, 200), (1.5, 0.01, 1)]
    ref = EdgeworthAccountant()
    ref.add(1.0, 0.01, 200)
    ref.add(1.5, 0.01, 1)
    assert acc.get_epsilon(1e-5) == ref.epsilon_certified(1e-5) < rdp.get_epsilon(1e-5)
    est = OpacusEdgeworthAccountant(certified=False)
    est.history = list(acc.history)
    assert est.get_epsilon(1e-5) == ref.epsilon_estimate(1e-5)
    assert acc.get_privacy_estimate(1e-5).epsilon_certified == acc.get_epsilon(1e-5)
