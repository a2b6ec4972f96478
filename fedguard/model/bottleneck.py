"""A learned low-rank bottleneck at the cut (DP-Forward style): the client sends ``k`` numbers per token.

With ``bottleneck-dim = k`` the client half ends in ``cut_down`` (a linear map ``H → k``, no bias) and the
server half starts with ``cut_up`` (``k → H``, with bias). What crosses the split is ``[batch, seq, k]``;
the client's activation mechanism (clip per sequence + Gaussian noise, or d_χ per token) acts on those k
dimensions, so its ε is per sequence as before, but the noise is spread over ``k`` instead of ``H``
coordinates per token. Both maps are trained with the noise in the loop: ``cut_down`` by the client
(through the gradients the server returns; under DP-SGD it is part of the client's clipped group),
``cut_up`` by the server (part of the server half's trainable tensors). Both travel with the adapters.

Initialisation (run-config ``bottleneck-init``):

* ``random`` (same on every process, from the run's ``seed``): ``cut_down`` has orthonormal rows ``Q``
  (``Q Qᵀ = I_k``, no bias) and ``cut_up`` is ``Qᵀ`` with zero bias, so before training the server receives
  the orthogonal projection of the hidden states on a random k-dimensional subspace (about k/H of their
  variance: 4% at k = 16 of MiniLM's 384);
* ``public-pca`` (:func:`fit_principal_subspace`, on the hidden states of public calibration text at the cut,
  computed by the server from the base model): ``Q`` holds the top-k principal directions and the maps are
  affine, ``cut_down(h) = Q (h − μ)`` and ``cut_up(z) = Qᵀ z + μ`` (μ the public mean), so before training the
  server receives the best rank-k approximation ``μ + QᵀQ (h − μ)`` of the hidden states (36% of the variance
  at k = 16 on MiniLM) and what is sent is centred, so no part of the per-sequence clip norm is spent on the
  common offset. The clients receive this ``cut_down`` with the first round's global adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

CUT_MODULES = ("cut_down", "cut_up")  # attribute names on the client / server half (trainable, saved whole)


def add_bottleneck(client: nn.Module, server: nn.Module, hidden_size: int, k: int, seed: int,
                   centred: bool = False) -> None:
    """Give ``client`` a ``cut_down`` (``H → k``) and ``server`` a ``cut_up`` (``k → H``), initialised at
    random as the module docstring says (``centred``: ``cut_down`` gets a bias, zero until
    :func:`fit_principal_subspace` sets it). ``0 < k <= hidden_size``; raises ``ValueError`` otherwise."""
    if not 0 < k <= hidden_size:
        raise ValueError(f"bottleneck-dim={k}: must be in 1..{hidden_size} (the model's hidden size), or 0 (off)")
    down, up = bottleneck_pair(hidden_size, k, seed, centred)
    client.cut_down = down
    server.cut_up = up


def bottleneck_pair(hidden_size: int, k: int, seed: int, centred: bool = False) -> tuple[nn.Linear, nn.Linear]:
    """``(cut_down, cut_up)`` with orthonormal ``cut_down`` rows drawn from ``seed`` and ``cut_up = cut_downᵀ``
    (zero biases; ``cut_down`` has one only when ``centred``)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(hidden_size, k, generator=generator, dtype=torch.float64))
    down = nn.Linear(hidden_size, k, bias=centred)
    up = nn.Linear(k, hidden_size, bias=True)
    with torch.no_grad():
        down.weight.copy_(q.T.float())
        up.weight.copy_(q.float())
        up.bias.zero_()
        if centred:
            down.bias.zero_()
    return down, up


def states_before_cut(client: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int,
                      batch_size: int = 32) -> torch.Tensor:
    """``[N, H]``: the hidden states at the cut, before ``cut_down``, of every real token of ``texts`` (each
    truncated to ``max_length`` tokens), computed by ``client`` (a client half, LoRA-wrapped or not) in eval
    mode without gradients; ``client``'s mode and maps are restored after."""
    half = client.get_base_model() if hasattr(client, "get_base_model") else client
    down, was_training = half.cut_down, client.training
    half.cut_down = None
    client.eval()
    rows = []
    try:
        device = next(client.parameters()).device
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(list(texts[start:start + batch_size]), truncation=True, max_length=max_length,
                                  padding=True, return_tensors="pt")
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                rows.append(client(ids, mask)[mask.bool()].float().cpu())
    finally:
        half.cut_down = down
        client.train(was_training)
    return torch.cat(rows)


def fit_principal_subspace(down: nn.Linear, up: nn.Linear | None, hidden: torch.Tensor) -> float:
    """Set the maps to the top-k principal subspace of ``hidden`` (``[N, H]``: public hidden states at the cut,
    one row per real token): ``down(h) = Q (h − μ)``, ``up(z) = Qᵀ z + μ`` (``up=None``: the client's map
    only). ``down`` must have a bias (see
    :func:`add_bottleneck`'s ``centred``) and ``N >= k``. Returns the fraction of ``hidden``'s variance (about
    its mean) that the k directions keep. Principal directions are signed so that their largest entry is
    positive (the same maps from the same states on any machine, up to rounding)."""
    k, width = down.weight.shape
    if down.bias is None:
        raise ValueError("cut_down has no bias: build the bottleneck with centred=True to fit it")
    if hidden.ndim != 2 or hidden.shape[1] != width or hidden.shape[0] < k:
        raise ValueError(f"need hidden states [N >= {k}, {width}], got {tuple(hidden.shape)}")
    states = hidden.detach().to(torch.float64)
    mean = states.mean(0)
    _, singular, vh = torch.linalg.svd(states - mean, full_matrices=False)
    q = vh[:k]
    q = q * torch.sign(q.gather(1, q.abs().argmax(1, keepdim=True)))
    with torch.no_grad():
        down.weight.copy_(q.to(down.weight.dtype))
        down.bias.copy_((-(q @ mean)).to(down.bias.dtype))
        if up is not None:
            up.weight.copy_(q.T.to(up.weight.dtype))
            up.bias.copy_(mean.to(up.bias.dtype))
    variance = singular.pow(2)
    return float(variance[:k].sum() / variance.sum().clamp_min(1e-30))
