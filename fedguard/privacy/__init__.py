"""Privacy accounting for FedGuard.

Public API (sigma = noise std / L2 sensitivity; q = Poisson sampling probability in (0, 1];
neighbours = example-level add/remove; delta as passed to each query):

* :class:`EdgeworthAccountant` - Edgeworth *estimate* + certified PLD *upper bound*; drop-in for
  ``flwr.serverapp.PrivacyAccountant`` when given a ``PrivacyConfig``.
* :class:`PrivacyEstimate` - result type (``epsilon_estimate``, ``epsilon_certified``, ``delta``...).
* :func:`noise_multiplier_for` - sigma for a target epsilon.
* :class:`PrivacyLedger`, :class:`MechanismEvent` - per-client persisted event ledger.
* :class:`OpacusEdgeworthAccountant` - ``opacus.accountants.IAccountant`` adapter (imported lazily:
  importing it imports torch/opacus).
"""

from .accountant import EdgeworthAccountant
from .calibration import noise_multiplier_for
from .certified import PldCertifier
from .cumulants import PllrCumulants, pllr_cumulants
from .estimate import EdgeworthUnderstatementWarning, PrivacyEstimate
from .events import KNOWN_KINDS, InvalidEventError, MechanismEvent
from .ledger import LedgerFormatError, LedgerSummary, PrivacyLedger

__all__ = [
    "EdgeworthAccountant",
    "EdgeworthUnderstatementWarning",
    "InvalidEventError",
    "KNOWN_KINDS",
    "LedgerFormatError",
    "LedgerSummary",
    "MechanismEvent",
    "OpacusEdgeworthAccountant",
    "PldCertifier",
    "PllrCumulants",
    "PrivacyEstimate",
    "PrivacyLedger",
    "noise_multiplier_for",
    "pllr_cumulants",
]


def __getattr__(name: str):
    if name == "OpacusEdgeworthAccountant":
        from .opacus_adapter import OpacusEdgeworthAccountant

        return OpacusEdgeworthAccountant
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
