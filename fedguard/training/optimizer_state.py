"""Carry a torch optimiser's state between messages as a flat dict of tensors (a Flower ArrayRecord).

In a deployment every message may start a fresh ClientApp process, so the client's Adam moments live in
the Flower ``Context.state`` between the exchanges of a round, not in memory.
"""

from __future__ import annotations

import torch


def flatten(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """``{"<param index>.<state name>": tensor}`` for every per-parameter state entry."""
    flat: dict[str, torch.Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            flat[f"{index}.{name}"] = tensor.detach().clone()
    return flat


def restore(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    """Load state written by :func:`flatten` into an optimiser over the same parameters."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor.clone()
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
