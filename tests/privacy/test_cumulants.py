import math

import numpy as np
import pytest
from scipy import integrate

from fedguard.privacy.cumulants import PllrCumulants, expected_exp_loss, pllr_cumulants

GRID = [(1.0, 0.004), (0.9, 0.05), (0.6, 0.02), (0.3, 0.5), (2.5, 0.001), (5.0, 0.3), (0.1, 0.01), (50.0, 1e-4)]


@pytest.mark.parametrize("sigma,q", GRID)
def test_exp_loss_integrates_to_one(sigma, q):
    assert abs(expected_exp_loss(sigma, q) - 1.0) < 1e-12


@pytest.mark.parametrize("sigma", [0.3, 1.0, 4.0])
def test_plain_gaussian_closed_form(sigma):
    c = pllr_cumulants(sigma, 1.0)
    mu = 1.0 / (2 * sigma**2)
    assert c.null == pytest.approx((-mu, 1 / sigma**2, 0, 0))
    assert c.alt == pytest.approx((mu, 1 / sigma**2, 0, 0))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_generic_quadrature_tends_to_gaussian_closed_form_as_q_to_one(sigma):
    c = pllr_cumulants(sigma, 1 - 1e-9)
    mu = 1.0 / (2 * sigma**2)
    assert c.alt[0] == pytest.approx(mu, rel=1e-6)
    assert c.null[0] == pytest.approx(-mu, rel=1e-6)
    assert c.alt[1] == pytest.approx(1 / sigma**2, rel=1e-6)


def _quad_cumulants(sigma, q):
    """Independent reference with scipy.integrate.quad on the log-space PLLR."""

    def loss(x):
        return np.logaddexp(math.log1p(-q), math.log(q) + (2 * x - 1) / (2 * sigma**2))

    def pdf(x, m):
        return math.exp(-((x - m) ** 2) / (2 * sigma**2)) / math.sqrt(2 * math.pi * sigma**2)

    out = []
    pts = [0.0, 1.0, 0.5 + sigma**2 * math.log((1 - q) / q)]
    for dens in (lambda x: pdf(x, 0), lambda x: (1 - q) * pdf(x, 0) + q * pdf(x, 1)):
        kw = dict(points=pts, limit=500, epsabs=0, epsrel=1e-12)
        lo, hi = -40 * sigma, 1 + 40 * sigma
        m = integrate.quad(lambda x: loss(x) * dens(x), lo, hi, **kw)[0]
        mom = [integrate.quad(lambda x, k=k: (loss(x) - m) ** k * dens(x), lo, hi, **kw)[0] for k in (2, 3, 4)]
        out.append((m, mom[0], mom[1], mom[2] - 3 * mom[0] ** 2))
    return out


@pytest.mark.parametrize("sigma,q", [(0.9, 0.05), (0.6, 0.02), (2.0, 0.1)])
def test_matches_independent_quad(sigma, q):
    c = pllr_cumulants(sigma, q)
    ref_null, ref_alt = _quad_cumulants(sigma, q)
    for got, ref in ((c.null, ref_null), (c.alt, ref_alt)):
        for g, r in zip(got, ref):
            assert g == pytest.approx(r, rel=1e-7)


@pytest.mark.parametrize("sigma,q", GRID)
def test_basic_cumulant_identities(sigma, q):
    c = pllr_cumulants(sigma, q)
    # KL divergences are non-negative: E_alt[L] >= 0 >= E_null[L]; variances positive.
    assert c.alt[0] > 0 > c.null[0]
    assert c.null[1] > 0 and c.alt[1] > 0
    # Small-q expansion of the mean under N0: -q^2 (e^{1/sigma^2} - 1) / 2.
    if q <= 0.004 and sigma >= 1:
        assert c.null[0] == pytest.approx(-(q**2) * math.expm1(1 / sigma**2) / 2, rel=5 * q * math.exp(1 / sigma**2))


def test_addition_and_scaling():
    a, b = pllr_cumulants(1.0, 0.01), pllr_cumulants(2.0, 0.1)
    s = a.scaled(3) + b
    assert s.null[1] == pytest.approx(3 * a.null[1] + b.null[1])
    assert PllrCumulants.zero().is_zero and not s.is_zero


@pytest.mark.parametrize("sigma,q", [(0, 0.1), (-1, 0.1), (1, 0), (1, 1.5), (float("nan"), 0.1), (1, float("inf"))])
def test_rejects_bad_parameters(sigma, q):
    with pytest.raises(ValueError):
        pllr_cumulants(sigma, q)


def test_replace_one_pair_is_symmetric_and_tends_to_its_gaussian_closed_form():
    from fedguard.privacy.cumulants import pllr_cumulants_replace_one

    c = pllr_cumulants_replace_one(1.0, 0.05)
    # L under P has the law of -L under Q: odd cumulants flip sign, even ones agree.
    assert c.alt[0] == pytest.approx(-c.null[0], rel=1e-6) and c.alt[1] == pytest.approx(c.null[1], rel=1e-6)
    near = pllr_cumulants_replace_one(1.0, 1 - 1e-9)
    exact = pllr_cumulants_replace_one(1.0, 1.0)  # sensitivity 2: L ~ N(+-2, 4)
    assert exact.alt[:2] == (2.0, 4.0)
    assert near.alt[0] == pytest.approx(exact.alt[0], rel=1e-4) and near.alt[1] == pytest.approx(exact.alt[1], rel=1e-4)


def test_replace_one_edgeworth_estimate_tracks_the_certified_bound():
    from fedguard.privacy import EdgeworthAccountant, MechanismEvent

    acc = EdgeworthAccountant.from_events([MechanismEvent("dp-sgd", noise_multiplier=1.0, sample_rate=0.01,
                                                          steps=1000, relation="replace-one")])
    result = acc.epsilon(1e-5, warn=False)
    assert abs(result.epsilon_estimate - result.epsilon_certified) < 0.1 * result.epsilon_certified
