import itertools
import math
import warnings

import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from fedguard.privacy import EdgeworthAccountant, EdgeworthUnderstatementWarning, MechanismEvent, PrivacyEstimate


def _acc(*events, order=1):
    acc = EdgeworthAccountant(None, order)
    for sigma, q, steps in events:
        acc.add(sigma, q, steps)
    return acc


# Reliable regime measured in docs/privacy-accounting.md: sigma in [1, 2], q <= 0.01, >= 1000 steps:
# first-order estimate within [-4 %, +6.5 %] of the pessimistic PLD bound at delta = 1e-5.
@pytest.mark.parametrize("sigma,q,steps", [(1.0, 0.004, 10_000), (1.0, 0.01, 1000), (1.5, 0.004, 1000), (2.0, 0.01, 3000)])
def test_agrees_with_pld_in_reliable_regime(sigma, q, steps):
    res = _acc((sigma, q, steps)).epsilon(1e-5, warn=False)
    assert -0.04 <= res.relative_gap <= 0.065, res


@pytest.mark.parametrize("sigma,q,steps,max_gap", [(0.9, 0.05, 30, -0.20), (0.8, 0.004, 30, -0.40), (0.6, 0.02, 500, -0.05)])
def test_short_runs_understate_and_warn(sigma, q, steps, max_gap):
    acc = _acc((sigma, q, steps))
    with pytest.warns(EdgeworthUnderstatementWarning):
        res = acc.epsilon(1e-5)
    assert res.relative_gap < max_gap  # known under-statement, asserted as such
    assert res.is_estimate_below_certified and res.understates()
    assert res.epsilon == res.epsilon_certified


def test_reference_values():
    res = _acc((1.0, 0.004, 10_000)).epsilon(1e-5, warn=False)
    assert res.epsilon_estimate == pytest.approx(2.246, abs=2e-3)
    assert 2.18 <= res.epsilon_certified <= 2.19
    assert isinstance(res, PrivacyEstimate) and res.delta == 1e-5 and res.num_steps == 10_000


def test_monotonicity_of_estimate():
    base = dict(sigma=1.0, q=0.01, steps=1000, delta=1e-5)

    def eps(**kw):
        p = {**base, **kw}
        return _acc((p["sigma"], p["q"], p["steps"])).epsilon_estimate(p["delta"])

    sig = [eps(sigma=s) for s in (0.8, 1.0, 1.5, 3.0, 10.0)]
    assert all(a > b for a, b in itertools.pairwise(sig))
    dl = [eps(delta=d) for d in (1e-8, 1e-6, 1e-5, 1e-3)]
    assert all(a > b for a, b in itertools.pairwise(dl))
    qs = [eps(q=q) for q in (0.001, 0.005, 0.01, 0.05, 0.2)]
    assert all(a < b for a, b in itertools.pairwise(qs))
    ts = [eps(steps=t) for t in (10, 100, 1000, 10_000, 100_000)]
    assert all(a < b for a, b in itertools.pairwise(ts))


def test_monotonicity_of_certified():
    cert = lambda s, q, t: _acc((s, q, t)).epsilon_certified(1e-5)  # noqa: E731
    assert cert(1.0, 0.01, 100) > cert(1.2, 0.01, 100)
    assert cert(1.0, 0.01, 100) < cert(1.0, 0.02, 100) < cert(1.0, 0.02, 200)


def test_heterogeneous_composition_is_order_independent_and_split_invariant():
    events = [(1.0, 0.01, 300), (2.0, 0.05, 100), (0.9, 0.004, 500)]
    a = _acc(*events)
    b = _acc(*reversed(events))
    c = _acc((1.0, 0.01, 100), (2.0, 0.05, 100), (0.9, 0.004, 250), (1.0, 0.01, 200), (0.9, 0.004, 250))
    ra, rb, rc = (x.epsilon(1e-5, warn=False) for x in (a, b, c))
    assert ra.epsilon_estimate == rb.epsilon_estimate == rc.epsilon_estimate
    assert ra.epsilon_certified == rb.epsilon_certified == rc.epsilon_certified
    assert len(a.history) == 3
    # heterogeneous certified value is bracketed by its parts
    parts = [_acc(e).epsilon_certified(1e-5) for e in events]
    assert max(parts) < ra.epsilon_certified


def test_history_is_compact_and_query_cost_independent_of_steps():
    acc = _acc()
    for _ in range(1000):
        acc.add(1.0, 0.01, 1)
        acc.add(1.3, 0.02, 1)
    assert acc.history == {(1.0, 0.01): 1000, (1.3, 0.02): 1000}
    assert acc.num_steps == 2000


def test_certified_not_below_tight_pld():
    """The certified value is never below an optimistic fine-grid PLD by more than that PLD's own
    discretisation error (steps x vdi in privacy loss, a loose bound on the eps error)."""
    for sigma, q, steps in [(0.9, 0.05, 30), (1.0, 1.0, 5), (2.0, 0.1, 50)]:
        vdi = 5e-5
        optimistic = pld_lib.from_gaussian_mechanism(
            sigma, sampling_prob=q, pessimistic_estimate=False, use_connect_dots=False,
            value_discretization_interval=vdi,
        ).self_compose(steps)
        lower = optimistic.get_epsilon_for_delta(1e-5)
        cert = _acc((sigma, q, steps)).epsilon_certified(1e-5)
        assert cert >= lower - steps * vdi
        assert cert <= lower * 1.01 + steps * vdi  # and it is tight


def test_plain_gaussian_estimate_equals_certified_closely():
    res = _acc((1.5, 1.0, 20)).epsilon(1e-5, warn=False)
    assert res.epsilon_estimate == pytest.approx(res.epsilon_certified, rel=2e-3)
    assert res.epsilon_estimate <= res.epsilon_certified + 1e-9


def test_delta_queries_and_pure_events():
    acc = _acc((1.0, 0.01, 1000))
    eps = acc.epsilon_certified(1e-5)
    assert acc.delta_certified(eps) <= 1e-5 * 1.001
    assert acc.delta_estimate(acc.epsilon_estimate(1e-5)) == pytest.approx(1e-5, rel=1e-6)
    acc.add_event(MechanismEvent("label-rr", epsilon=0.5, steps=2))
    assert acc.epsilon_certified(1e-5) == pytest.approx(eps + 1.0)
    assert acc.pure_epsilon == 1.0 and acc.delta_certified(0.5) == 1.0


def test_empty_accountant():
    res = _acc().epsilon(1e-5)
    assert res.epsilon_estimate == 0.0 == res.epsilon_certified


@pytest.mark.parametrize("bad", [dict(order=3), dict(order=0)])
def test_bad_order(bad):
    with pytest.raises(ValueError, match="order"):
        EdgeworthAccountant(None, **bad)


def test_bad_delta():
    for d in (0, 1, -1, math.nan):
        with pytest.raises(ValueError, match="delta"):
            _acc((1.0, 0.1, 1)).epsilon(d)


def test_no_warning_when_close():
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdgeworthUnderstatementWarning)
        _acc((1.0, 0.004, 10_000)).epsilon(1e-5)
