"""A learned low-rank bottleneck at the cut (DP-Forward style): the client sends ``k`` numbers per token.

With ``bottleneck-dim = k`` the client half ends in ``cut_down`` (a linear map ``H → k``, no bias) and the
server half starts with ``cut_up`` (``k → H``, with bias). What crosses the split is ``[batch, seq, k]``;
the client's activation mechanism (clip per sequence + Gaussian noise, or d_χ per token) acts on those k
dimensions, so its ε is per sequence as before, but the noise is spread over ``k`` instead of ``H``
coordinates per token. Both maps are trained with the noise in the loop: ``cut_down`` by the client
(through the gradients the server returns; under DP-SGD it is part of the client's clipped group),
``cut_up`` by the server (part of the server half's trainable tensors). Both travel with the adapters.

Initialisation (same on every process, from the run's ``seed``): ``cut_down`` has orthonormal rows ``Q``
(``Q Qᵀ = I_k``) and ``cut_up`` is ``Qᵀ`` with zero bias, so before training the server receives the
orthogonal projection of the hidden states on a random k-dimensional subspace.
"""

from __future__ import annotations

import torch
from torch import nn

CUT_MODULES = ("cut_down", "cut_up")  # attribute names on the client / server half (trainable, saved whole)


def add_bottleneck(client: nn.Module, server: nn.Module, hidden_size: int, k: int, seed: int) -> None:
    """Give ``client`` a ``cut_down`` (``H → k``) and ``server`` a ``cut_up`` (``k → H``), initialised as the
    module docstring says. ``0 < k <= hidden_size``; raises ``ValueError`` otherwise."""
    if not 0 < k <= hidden_size:
        raise ValueError(f"bottleneck-dim={k}: must be in 1..{hidden_size} (the model's hidden size), or 0 (off)")
    down, up = bottleneck_pair(hidden_size, k, seed)
    client.cut_down = down
    server.cut_up = up


def bottleneck_pair(hidden_size: int, k: int, seed: int) -> tuple[nn.Linear, nn.Linear]:
    """``(cut_down, cut_up)`` with orthonormal ``cut_down`` rows drawn from ``seed`` and ``cut_up = cut_downᵀ``."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(hidden_size, k, generator=generator, dtype=torch.float64))
    down = nn.Linear(hidden_size, k, bias=False)
    up = nn.Linear(k, hidden_size, bias=True)
    with torch.no_grad():
        down.weight.copy_(q.T.float())
        up.weight.copy_(q.float())
        up.bias.zero_()
    return down, up
