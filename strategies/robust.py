"""``median`` / ``trimmed-mean``: coordinate-wise robust aggregation of adapter *updates*.

Each client's update Δ_k = client adapter − current global is first clipped to L2 norm
``strategy-max-update-norm`` (over the whole adapter; 0 = no clipping), then the new global is
global + robust_k(Δ_k), per coordinate: the median, or the mean after dropping
⌊strategy-trim-fraction · K⌋ values at each end (K = clients aggregated). Robust aggregates ignore
``num-examples`` (one vote per client). With K = 2 both reduce to the plain mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from strategies.base import AdapterStrategy, ClientUpdate


class _RobustUpdates(AdapterStrategy):
    """Shared clipping; subclasses choose the per-coordinate statistic in :meth:`combine`."""

    def combine(self, stacked: torch.Tensor) -> torch.Tensor:
        """Reduce ``stacked`` [K, ...] (one clipped update per client) over dim 0."""
        raise NotImplementedError

    def aggregate_adapters(self, server_round: int, updates: Sequence[ClientUpdate],
                           current_global: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        bound = self.config.strategy_max_update_norm
        deltas, clipped = [], 0
        for u in updates:
            delta = {name: u.tensors[name].double() - current_global[name].double() for name in current_global}
            norm = math.sqrt(sum(float(d.pow(2).sum()) for d in delta.values()))
            if bound > 0 and norm > bound:
                delta = {name: d * (bound / norm) for name, d in delta.items()}
                clipped += 1
            deltas.append(delta)
        self.report("clients-clipped", clipped)
        return {name: (current_global[name].double()
                       + self.combine(torch.stack([d[name] for d in deltas]))).to(current_global[name].dtype)
                for name in current_global}


class CoordinateMedian(_RobustUpdates):
    """Coordinate-wise median of the clipped updates (mean of the two middle values for even K)."""

    def combine(self, stacked: torch.Tensor) -> torch.Tensor:
        ordered, k = stacked.sort(dim=0).values, stacked.shape[0]
        return (ordered[(k - 1) // 2] + ordered[k // 2]) / 2


class TrimmedMean(_RobustUpdates):
    """Coordinate-wise mean after dropping ⌊trim-fraction · K⌋ values at each end."""

    def combine(self, stacked: torch.Tensor) -> torch.Tensor:
        trim = int(self.config.strategy_trim_fraction * stacked.shape[0])
        ordered = stacked.sort(dim=0).values
        return ordered[trim:stacked.shape[0] - trim].mean(dim=0)
