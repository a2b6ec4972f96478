"""``OpacusEdgeworthAccountant``: the Edgeworth accountant behind ``opacus.accountants.IAccountant``.

Usable wherever Opacus accepts an accountant object (e.g. ``PrivacyEngine.accountant``, the
optimizer hook).  ``get_epsilon(delta)`` returns the *certified* PLD bound by default
(``certified=False`` returns the Edgeworth estimate instead); ``get_privacy_estimate(delta)`` returns
both.  Neighbouring relation: example-level add/remove; sigma = noise std / max grad norm;
q = Poisson sample rate.
"""

from __future__ import annotations

from opacus.accountants.accountant import IAccountant

from .accountant import EdgeworthAccountant
from .estimate import PrivacyEstimate

__all__ = ["OpacusEdgeworthAccountant"]


class OpacusEdgeworthAccountant(IAccountant):
    """Opacus accountant interface over :class:`EdgeworthAccountant` (order 1 or 2)."""

    def __init__(self, order: int = 1, certified: bool = True) -> None:
        super().__init__()
        self.order = order
        self.certified = certified
        EdgeworthAccountant(None, order)  # validate order early

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        """Record one optimiser step (history entries merge consecutive identical steps, as in Opacus)."""
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, n = self.history.pop()
            self.history.append((sigma, q, n + 1))
        else:
            self.history.append((noise_multiplier, sample_rate, 1))

    def _accountant(self) -> EdgeworthAccountant:
        acc = EdgeworthAccountant(None, self.order)
        for sigma, q, steps in self.history:
            acc.add(sigma, q, steps)
        return acc

    def get_privacy_estimate(self, delta: float) -> PrivacyEstimate:
        """Estimate and certified bound at ``delta``."""
        return self._accountant().epsilon(delta)

    def get_epsilon(self, delta: float, *args, **kwargs) -> float:  # noqa: D417
        """Certified epsilon at ``delta`` (or the Edgeworth estimate if ``certified=False``)."""
        acc = self._accountant()
        return acc.epsilon_certified(delta) if self.certified else acc.epsilon_estimate(delta)

    def __len__(self) -> int:
        return len(self.history)

    @classmethod
    def mechanism(cls) -> str:
        """Accountant name."""
        return "edgeworth"
