"""Tiny split models with LoRA on both halves and non-zero adapters, for the training specifications."""

from __future__ import annotations

import torch

from fedguard.model.lora import LoraSettings, attach_lora
from fedguard.model.split import family_of, split_model
from tests.conftest import make_tiny


def lora_halves(name: str = "bert-cls", split: int = 2, dropout: float = 0.0, u_shape: bool = False,
                bottleneck_dim: int = 0):
    """``(client, server)`` of tiny model ``name`` split at ``split`` with LoRA r=4 on each half; the LoRA B
    matrices are perturbed so that gradients reach A as well. ``dropout`` sets every Dropout's p;
    ``bottleneck_dim`` adds a learned bottleneck at the cut."""
    model = make_tiny(name)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
    family = family_of(model)
    client, server = split_model(model, split, u_shape=u_shape, bottleneck_dim=bottleneck_dim, seed=7)
    torch.manual_seed(3)
    settings = LoraSettings(r=4, alpha=8)
    client, server = attach_lora(client, settings, family), attach_lora(server, settings, family)
    with torch.no_grad():  # non-zero B so that gradients reach A as well
        for p in list(client.parameters()) + list(server.parameters()):
            if p.requires_grad and p.dim() == 2:
                p.add_(0.05 * torch.randn_like(p))
    return client, server
