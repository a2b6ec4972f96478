"""Per-step cumulants of the privacy-loss log-likelihood ratio (PLLR).

Mechanism: one step of the Poisson-subsampled Gaussian mechanism with unit L2 sensitivity,
noise standard deviation ``sigma`` (the *noise multiplier*: noise std divided by the L2
sensitivity / clipping norm) and Poisson sampling probability ``q`` in (0, 1] (``q = 1`` is the
plain Gaussian mechanism).  Under example-level add/remove neighbours the dominating pair is

    null  N0 = N(0, sigma^2)                             (output without the example)
    alt   M  = (1 - q) N(0, sigma^2) + q N(1, sigma^2)   (output with the example)

and the PLLR is ``L(x) = log(dM/dN0)(x) = log(1 - q + q exp((2x - 1) / (2 sigma^2)))``, evaluated in
log space.  This module returns the first four cumulants of ``L`` under both hypotheses.  Cumulants
are additive under composition, so a history of events is summarised by the step-weighted sum.

Numerics: composite Gauss-Legendre quadrature on ``[-40 sigma, 1 + 40 sigma]`` with panels no wider
than ``sigma / 2`` and geometrically graded panels around the transition point
``x* = 1/2 + sigma^2 log((1-q)/q)`` (where ``L`` bends with width ~ sigma^2).  Means are integrated
as ``E_N0[log1p(w) - w]`` and ``E_N0[(1+w) log1p(w) - w]`` with ``w = q (e^u - 1)`` (using
``E_N0[w] = 0``), so the integrands have a fixed sign and small-q cancellation is avoided.
Higher cumulants use central moments.  The identity ``E_N0[e^L] = 1`` holds to ~1e-13.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.polynomial.legendre import leggauss

__all__ = ["PllrCumulants", "pllr_cumulants", "pllr_cumulants_replace_one", "expected_exp_loss"]

_NODES, _WEIGHTS = leggauss(24)
_HALF_WIDTH_SIGMAS = 40.0  # N(0,1) mass beyond 40 is ~1e-350: below double precision
_GRADING_RATIO = 1.5


@dataclass(frozen=True)
class PllrCumulants:
    """Cumulants (k1, k2, k3, k4) of the PLLR ``L = log dM/dN0`` under both hypotheses.

    ``null`` holds the cumulants of L when the output is drawn from N0 = N(0, sigma^2);
    ``alt`` when it is drawn from the subsampled mixture M.  Instances add (composition) and
    scale by an integer number of steps.  The 'add' neighbouring direction uses the loss ``-L``,
    whose cumulants are ``(-k1, k2, -k3, k4)``.
    """

    null: tuple[float, float, float, float]
    alt: tuple[float, float, float, float]

    @classmethod
    def zero(cls) -> "PllrCumulants":
        """The cumulants of an empty composition."""
        return cls((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0))

    def __add__(self, other: "PllrCumulants") -> "PllrCumulants":
        return PllrCumulants(
            tuple(a + b for a, b in zip(self.null, other.null)),  # type: ignore[arg-type]
            tuple(a + b for a, b in zip(self.alt, other.alt)),  # type: ignore[arg-type]
        )

    def scaled(self, steps: int) -> "PllrCumulants":
        """Cumulants of ``steps`` independent repetitions of this mechanism."""
        return PllrCumulants(
            tuple(steps * v for v in self.null),  # type: ignore[arg-type]
            tuple(steps * v for v in self.alt),  # type: ignore[arg-type]
        )

    @property
    def is_zero(self) -> bool:
        """True for the empty composition (no privacy loss)."""
        return self.null[1] == 0.0 and self.alt[1] == 0.0


def _check(sigma: float, q: float) -> tuple[float, float]:
    sigma, q = float(sigma), float(q)
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"noise_multiplier must be finite and > 0, got {sigma!r}")
    if not math.isfinite(q) or not 0.0 < q <= 1.0:
        raise ValueError(f"sample_rate must be finite and in (0, 1], got {q!r}")
    return sigma, q


def _nodes(sigma: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes/weights on [-40 sigma, 1 + 40 sigma] (see module docstring)."""
    lo, hi = -_HALF_WIDTH_SIGMAS * sigma, 1.0 + _HALF_WIDTH_SIGMAS * sigma
    breaks = [np.linspace(lo, hi, int(math.ceil((hi - lo) / (0.5 * sigma))) + 1)]
    x_star = 0.5 + sigma * sigma * math.log((1.0 - q) / q)
    if lo < x_star < hi:
        k_max = int(math.ceil(math.log((hi - lo) / sigma**2) / math.log(_GRADING_RATIO))) + 1
        offsets = sigma * sigma * _GRADING_RATIO ** np.arange(k_max)
        breaks += [x_star + offsets, x_star - offsets, np.array([x_star])]
    edges = np.unique(np.clip(np.concatenate(breaks), lo, hi))
    a, b = edges[:-1, None], edges[1:, None]
    x = (0.5 * (a + b) + 0.5 * (b - a) * _NODES).ravel()
    w = (0.5 * (b - a) * _WEIGHTS).ravel()
    return x, w


def _series_log1pmx(w: np.ndarray) -> np.ndarray:
    """log1p(w) - w, accurate for small |w| (series) and moderate |w| (direct)."""
    out = np.log1p(w) - w
    small = np.abs(w) < 1e-2
    ws = w[small]
    acc = np.zeros_like(ws)
    for k in range(12, 1, -1):
        acc = acc * ws + (-1.0) ** (k + 1) / k
    out[small] = acc * ws * ws
    return out


def _series_xlog1p_mx(w: np.ndarray) -> np.ndarray:
    """(1 + w) log1p(w) - w, accurate for small |w|: sum_{k>=2} (-1)^k w^k / (k (k-1))."""
    out = (1.0 + w) * np.log1p(w) - w
    small = np.abs(w) < 1e-2
    ws = w[small]
    acc = np.zeros_like(ws)
    for k in range(12, 1, -1):
        acc = acc * ws + (-1.0) ** k / (k * (k - 1))
    out[small] = acc * ws * ws
    return out


def _grid(sigma: float, q: float):
    x, wq = _nodes(sigma, q)
    s2 = sigma * sigma
    norm = 1.0 / math.sqrt(2.0 * math.pi * s2)
    phi0 = norm * np.exp(-x * x / (2.0 * s2))
    phi1 = norm * np.exp(-(x - 1.0) ** 2 / (2.0 * s2))
    u = (2.0 * x - 1.0) / (2.0 * s2)
    loss = np.logaddexp(math.log1p(-q), math.log(q) + u)
    return x, wq, phi0, phi1, u, loss


def _cumulants(wq: np.ndarray, dens: np.ndarray, loss: np.ndarray,
               mean: float) -> tuple[float, float, float, float]:
    """(k1, k2, k3, k4) of ``loss`` under density ``dens`` on quadrature weights ``wq``, given its mean (each
    caller integrates the mean in the form that is accurate for its mechanism); higher ones via central moments."""
    d = loss - mean
    d2 = d * d
    m2 = float(wq @ (dens * d2))
    m3 = float(wq @ (dens * d2 * d))
    m4 = float(wq @ (dens * d2 * d2))
    return (mean, m2, m3, m4 - 3.0 * m2 * m2)


@lru_cache(maxsize=4096)
def pllr_cumulants(sigma: float, q: float) -> PllrCumulants:
    """Cumulants of one step's PLLR for noise multiplier ``sigma`` (> 0) and sampling rate q in (0, 1].

    Cached per (sigma, q).  For q = 1 the closed form is used: L ~ N(-1/(2 sigma^2), 1/sigma^2)
    under N0 and N(+1/(2 sigma^2), 1/sigma^2) under N(1, sigma^2).
    """
    sigma, q = _check(sigma, q)
    if q == 1.0:
        m, v = 0.5 / sigma**2, 1.0 / sigma**2
        return PllrCumulants((-m, v, 0.0, 0.0), (m, v, 0.0, 0.0))
    x, wq, phi0, phi1, u, loss = _grid(sigma, q)
    # w = q (e^u - 1) <= 1  <=>  u <= log1p(1/q): there the series forms are safe from overflow.
    moderate = u <= math.log1p(1.0 / q)
    w = q * np.expm1(np.where(moderate, u, 0.0))
    dens_alt = (1.0 - q) * phi0 + q * phi1
    g_null = np.where(moderate, phi0 * _series_log1pmx(w), loss * phi0 - q * (phi1 - phi0))
    g_alt = np.where(moderate, phi0 * _series_xlog1p_mx(w), loss * dens_alt - q * (phi1 - phi0))
    return PllrCumulants(_cumulants(wq, phi0, loss, float(wq @ g_null)),
                         _cumulants(wq, dens_alt, loss, float(wq @ g_alt)))


def expected_exp_loss(sigma: float, q: float) -> float:
    """E_{N0}[exp(L)] by the same quadrature (exactly 1 in theory; a numerical self-check)."""
    sigma, q = _check(sigma, q)
    if q == 1.0:
        return 1.0
    x, wq, _, _, _, loss = _grid(sigma, q)
    log_phi0 = -x * x / (2.0 * sigma * sigma) - math.log(math.sqrt(2.0 * math.pi) * sigma)
    return float(wq @ np.exp(loss + log_phi0))


def _replace_nodes(sigma: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes/weights on [-1 - 40 sigma, 1 + 40 sigma], graded around both bends of the
    replace-one PLLR (at +-x*, x* = 1/2 + sigma^2 log((1-q)/q))."""
    lo, hi = -1.0 - _HALF_WIDTH_SIGMAS * sigma, 1.0 + _HALF_WIDTH_SIGMAS * sigma
    breaks = [np.linspace(lo, hi, int(math.ceil((hi - lo) / (0.5 * sigma))) + 1)]
    x_star = 0.5 + sigma * sigma * math.log((1.0 - q) / q)
    k_max = int(math.ceil(math.log((hi - lo) / sigma**2) / math.log(_GRADING_RATIO))) + 1
    offsets = sigma * sigma * _GRADING_RATIO ** np.arange(k_max)
    for centre in (x_star, -x_star):
        if lo < centre < hi:
            breaks += [centre + offsets, centre - offsets, np.array([centre])]
    edges = np.unique(np.clip(np.concatenate(breaks), lo, hi))
    a, b = edges[:-1, None], edges[1:, None]
    x = (0.5 * (a + b) + 0.5 * (b - a) * _NODES).ravel()
    w = (0.5 * (b - a) * _WEIGHTS).ravel()
    return x, w


@lru_cache(maxsize=4096)
def pllr_cumulants_replace_one(sigma: float, q: float) -> PllrCumulants:
    """Cumulants of one step's PLLR under *replace-one* neighbours (one example's clipped contribution
    replaced by any other of norm <= 1; the data set's size is public).

    Dominating pair: ``P = (1-q) N(0, s^2) + q N(+1, s^2)`` vs ``Q = (1-q) N(0, s^2) + q N(-1, s^2)``, PLLR
    ``L = log dP/dQ``. The pair is symmetric (L under P has the law of -L under Q), so both neighbouring
    directions are the same mechanism. Returned as ``PllrCumulants(null=cumulants under Q, alt=cumulants
    under P)``: with that layout the accountant's 'remove' and 'add' directions both evaluate this pair, and
    histories that mix add/remove and replace-one events compose by adding cumulants.
    For q = 1 (no subsampling) L ~ N(+-2/s^2, 4/s^2): the Gaussian mechanism with sensitivity 2.
    """
    sigma, q = _check(sigma, q)
    if q == 1.0:
        m, v = 2.0 / sigma**2, 4.0 / sigma**2
        return PllrCumulants((-m, v, 0.0, 0.0), (m, v, 0.0, 0.0))
    x, wq = _replace_nodes(sigma, q)
    s2 = sigma * sigma
    norm = 1.0 / math.sqrt(2.0 * math.pi * s2)
    phi0 = norm * np.exp(-x * x / (2.0 * s2))
    dens_p = (1.0 - q) * phi0 + q * norm * np.exp(-(x - 1.0) ** 2 / (2.0 * s2))
    dens_q = (1.0 - q) * phi0 + q * norm * np.exp(-(x + 1.0) ** 2 / (2.0 * s2))
    log1mq, logq = math.log1p(-q), math.log(q)
    loss = (np.logaddexp(log1mq, logq + (2.0 * x - 1.0) / (2.0 * s2))
            - np.logaddexp(log1mq, logq + (-2.0 * x - 1.0) / (2.0 * s2)))
    return PllrCumulants(_cumulants(wq, dens_q, loss, float(wq @ (dens_q * loss))),
                         _cumulants(wq, dens_p, loss, float(wq @ (dens_p * loss))))
