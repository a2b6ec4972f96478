"""Checks on client replies before any aggregation, shared by the driver and every FedGuard strategy.

A reply is usable only if it carries an adapter (``"arrays"``) with exactly the current global adapter's
tensor names, shapes and dtypes, all finite, a positive integer ``num-examples`` in ``"metrics"``, and —
when a bound is configured — an update (client adapter minus current global) whose L2 norm is within
``strategy-max-update-norm × strategy-reject-norm-factor``. A reply that fails is excluded from the round
with a reason naming what was wrong; it never raises.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import torch
from flwr.app import Message

from fedguard.config import RunConfig
from fedguard.protocol import messages as proto

log = logging.getLogger("fedguard.strategies")


def rejection_norm(config: RunConfig) -> float | None:
    """The update norm above which a reply is rejected, or ``None`` when no bound is configured."""
    if config.strategy_max_update_norm <= 0:
        return None
    return config.strategy_max_update_norm * config.strategy_reject_norm_factor


def update_norm(tensors: Mapping[str, torch.Tensor], current_global: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of ``tensors - current_global`` over all tensors (names must match)."""
    total = 0.0
    for name, tensor in tensors.items():
        total += float((tensor.double() - current_global[name].double()).pow(2).sum())
    return math.sqrt(total)


def reply_problem(reply: Message, current_global: Mapping[str, torch.Tensor],
                  max_norm: float | None = None) -> str | None:
    """What is wrong with one client reply, or ``None`` if it can be aggregated."""
    if reply.has_error():
        return f"client error: {reply.error.reason}"
    content = reply.content
    if proto.ADAPTER not in content.array_records:
        return f"final reply carries no adapter ({proto.ADAPTER!r})"
    metrics = content.metric_records.get(proto.METRICS)
    examples = None if metrics is None else metrics.get(proto.NUM_EXAMPLES)
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        return f"{proto.NUM_EXAMPLES!r} missing or not a positive integer ({examples!r})"
    try:
        tensors = content.array_records[proto.ADAPTER].to_torch_state_dict()
    except Exception as err:  # noqa: BLE001 - an undecodable array is the client's fault, not the round's
        return f"adapter arrays cannot be decoded as tensors: {err}"
    if set(tensors) != set(current_global):
        missing = sorted(set(current_global) - set(tensors))[:2]
        extra = sorted(set(tensors) - set(current_global))[:2]
        return f"adapter tensor names differ (missing {missing}, unexpected {extra})"
    for name, tensor in tensors.items():
        reference = current_global[name]
        if tuple(tensor.shape) != tuple(reference.shape):
            return f"adapter tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(reference.shape)}"
        if tensor.dtype != reference.dtype:
            return f"adapter tensor {name} has dtype {tensor.dtype}, expected {reference.dtype}"
        if not torch.isfinite(tensor).all():
            return f"adapter tensor {name} contains NaN or Inf"
    if max_norm is not None:
        norm = update_norm(tensors, current_global)
        if norm > max_norm:
            return f"update norm {norm:.4g} exceeds the rejection bound {max_norm:.4g}"
    return None


def split_replies(replies: Iterable[Message], current_global: Mapping[str, torch.Tensor],
                  max_norm: float | None = None, server_round: int | None = None,
                  ) -> tuple[list[Message], dict[str, str]]:
    """``(valid replies, {client id: reason})``; each rejection is logged with its reason."""
    valid: list[Message] = []
    rejected: dict[str, str] = {}
    for reply in replies:
        node = str(reply.metadata.src_node_id)
        reason = reply_problem(reply, current_global, max_norm)
        if reason is None:
            valid.append(reply)
        else:
            rejected[node] = reason
            log.warning("round %s: client %s reply rejected: %s", server_round, node, reason)
    return valid, rejected
