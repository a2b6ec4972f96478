"""An empirical defence at the cut: penalise the distance correlation between what a client sends and its text.

NoPeek (Vepakomma et al., 2020) adds ``λ · dCor(X, Z)`` to the client's loss, where X is the raw input and Z
what crosses the split. Here, per example i, X_i are its input token embeddings ``[T_i, d]`` (rows of the
model's token-embedding table: what identifies the tokens) and Z_i its sent hidden states ``[T_i, k]``
before the noise; the penalty is the sample distance correlation between the two sets of token rows, so a
low value means the geometry of what is sent says little about which tokens were there. It is a sum over
examples, so per-example gradients (DP-SGD) stay per example. It gives no guarantee: judge it by attacks.

``dcor-weight`` λ: the client's objective per example becomes ℓ_i + λ·dCor(X_i, Z_i).
"""

from __future__ import annotations

import torch


def _centred_distances(x: torch.Tensor) -> torch.Tensor:
    """Double-centred Euclidean distance matrix of the rows of ``x`` ``[n, d]`` (float32)."""
    d = torch.cdist(x.float().unsqueeze(0), x.float().unsqueeze(0)).squeeze(0)
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Sample distance correlation (Székely et al., 2007) of the paired rows of ``x`` ``[n, p]`` and ``y``
    ``[n, q]``: in [0, 1], 0 for n < 2. Differentiable in both."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"distance correlation needs paired rows; got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        return y.sum() * 0.0
    a, b = _centred_distances(x), _centred_distances(y)
    dcov_xy = (a * b).mean().clamp_min(0.0)
    dvar = ((a * a).mean() * (b * b).mean()).clamp_min(eps)
    return (dcov_xy / dvar.sqrt()).clamp_min(eps).sqrt()


def example_decorrelation(tokens: torch.Tensor, sent: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B]``: dCor(X_i, Z_i) per example over its real tokens (``tokens`` ``[B, T, d]`` input embeddings,
    ``sent`` ``[B, T, k]``, ``attention_mask`` ``[B, T]``)."""
    out = []
    for i in range(sent.shape[0]):
        real = attention_mask[i].bool()
        out.append(distance_correlation(tokens[i][real], sent[i][real]))
    return torch.stack(out) if out else sent.sum() * 0.0
