"""The result type of a privacy query: an Edgeworth estimate next to a certified upper bound."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

__all__ = ["PrivacyEstimate", "EdgeworthUnderstatementWarning", "UNDERSTATEMENT_TOLERANCE", "warn_if_understated"]

logger = logging.getLogger("fedguard.privacy")

UNDERSTATEMENT_TOLERANCE = 0.02
"""Relative shortfall of the estimate below the certified bound above which a warning is issued."""


class EdgeworthUnderstatementWarning(UserWarning):
    """The Edgeworth estimate is well below the certified bound (typical of short runs)."""


@dataclass(frozen=True)
class PrivacyEstimate:
    """Cumulative (epsilon, delta) of a composition, as estimate and as certified bound.

    Neighbouring relation: example-level add/remove (Poisson-subsampled Gaussian); the worse of
    the add and remove directions is reported.  ``delta`` is the delta at which both epsilons are
    evaluated.  ``epsilon_estimate`` is the Edgeworth approximation (``method``) - *not* a
    guarantee; it can be above or below the truth.  ``epsilon_certified`` is an upper bound from
    ``certified_method`` (pessimistic PLD) and is what budget decisions should use
    (:attr:`epsilon`).
    """

    epsilon_estimate: float
    epsilon_certified: float
    delta: float
    method: str
    certified_method: str
    num_steps: int = 0

    @property
    def epsilon(self) -> float:
        """The value to base decisions on: the certified upper bound."""
        return self.epsilon_certified

    @property
    def relative_gap(self) -> float:
        """(estimate - certified) / certified; negative when the estimate under-states."""
        if self.epsilon_certified == 0.0:
            return 0.0
        return (self.epsilon_estimate - self.epsilon_certified) / self.epsilon_certified

    @property
    def is_estimate_below_certified(self) -> bool:
        """True when the estimate is strictly below the certified bound."""
        return self.epsilon_estimate < self.epsilon_certified

    def understates(self, tolerance: float = UNDERSTATEMENT_TOLERANCE) -> bool:
        """True when the estimate is more than ``tolerance`` (relative) below the certified bound."""
        return self.relative_gap < -tolerance

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable summary."""
        return {
            "epsilon_estimate": self.epsilon_estimate,
            "epsilon_certified": self.epsilon_certified,
            "delta": self.delta,
            "method": self.method,
            "certified_method": self.certified_method,
            "num_steps": self.num_steps,
            "relative_gap": self.relative_gap,
        }


def warn_if_understated(result: PrivacyEstimate, tolerance: float = UNDERSTATEMENT_TOLERANCE) -> None:
    """Emit a warning (``warnings`` and ``logging``) when the estimate under-states by > tolerance."""
    if result.understates(tolerance):
        msg = (
            f"Edgeworth estimate epsilon={result.epsilon_estimate:.4g} is {-100 * result.relative_gap:.1f}% "
            f"below the certified bound {result.epsilon_certified:.4g} at delta={result.delta:g} "
            f"({result.num_steps} steps); use the certified value for budget decisions."
        )
        logger.warning(msg)
        warnings.warn(msg, EdgeworthUnderstatementWarning, stacklevel=3)
