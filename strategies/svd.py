"""``svd``: average the clients' LoRA products B·A, then re-factorise the mean to rank ``strategy-svd-rank``.

For every LoRA module, M = Σ_k w_k B_k A_k (w_k ∝ num-examples; the scaling alpha/r is the same on every
client, so averaging B·A averages the updates) and, with M = U S Vᵀ, the new factors are

    A' = c · Vᵀ[:r]            (rows k..r-1 too: fresh directions B can grow along)
    B' = U[:, :k] S[:k] / c     (columns k..r-1 zero)

so B'A' is exactly the rank-k truncation of M (k = strategy-svd-rank, 0 = lora-r) and (B', A') keep the
adapter's shapes. c is the RMS row norm of the current global A, so A keeps its usual scale. The relative
truncation error ‖M − M_k‖_F / ‖M‖_F (over all modules) is logged and returned as ``svd-truncation-error``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from strategies.base import AdapterStrategy, ClientUpdate, weighted_mean
from strategies.lora_pairs import lora_pairs, other_names


class SvdLora(AdapterStrategy):
    """Exact average of B·A, truncated to rank ``strategy-svd-rank`` and split back into (B', A')."""

    def aggregate_adapters(self, server_round: int, updates: Sequence[ClientUpdate],
                           current_global: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        total = float(sum(u.num_examples for u in updates))
        new = weighted_mean(updates, other_names(current_global))
        residual_sq = mean_sq = 0.0
        worst = 0.0
        for pair in lora_pairs(current_global):
            a0 = current_global[pair.a]
            r = a0.shape[0]
            k = self.config.strategy_svd_rank or r
            product = sum((u.num_examples / total) * (u.tensors[pair.b].double() @ u.tensors[pair.a].double())
                          for u in updates)
            u_, s, vh = torch.linalg.svd(product, full_matrices=False)
            k = min(k, s.numel())
            scale = float(a0.double().pow(2).sum(dim=1).mean().sqrt()) or 1.0
            a_new = torch.zeros(r, a0.shape[1], dtype=torch.float64)
            rows = min(r, vh.shape[0])
            a_new[:rows] = scale * vh[:rows]
            b_new = torch.zeros(product.shape[0], r, dtype=torch.float64)
            b_new[:, :k] = u_[:, :k] * (s[:k] / scale)
            new[pair.a] = a_new.to(a0.dtype)
            new[pair.b] = b_new.to(current_global[pair.b].dtype)
            tail, whole = float(s[k:].pow(2).sum()), float(s.pow(2).sum())
            residual_sq += tail
            mean_sq += whole
            worst = max(worst, math.sqrt(tail / whole) if whole > 0 else 0.0)
        self.report("svd-truncation-error", math.sqrt(residual_sq / mean_sq) if mean_sq > 0 else 0.0)
        self.report("svd-truncation-error-max", worst)
        return new
