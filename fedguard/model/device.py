"""Where tensors live and in which precision they are computed: run-config keys ``device``,
``server-device`` and ``precision``, and Flower's GPU reservation ``client-resources-num-gpus``.

Convention for every trainer (:mod:`fedguard.training`, :mod:`fedguard.mechanisms.dp_sgd`): the module
lives on one device; public methods accept tensors on any device (CPU, as decoded from the wire), move them
to the module's device on entry, and return CPU tensors where the result goes to the wire. Tensors leave
the device only at the wire.

Precision: ``fp32`` computes everything in float32. ``bf16`` runs the forward passes under
``torch.autocast(dtype=bfloat16)`` — matrix products in bfloat16 — while parameters (LoRA adapters, heads),
their gradients, the optimiser state, losses and everything privacy-relevant (per-example gradients,
clipping norms, noised sums, activation noise) stay float32. On CPU bf16 autocast is allowed but rarely
faster (it depends on the CPU's bfloat16 support); it is meant for CUDA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn

from fedguard.config import DEVICE_SETTING, PRECISIONS

DEVICE_ALLOWED = "'auto' (CUDA when this process sees a GPU, else CPU), 'cpu', 'cuda' or 'cuda:N'"

Batch = TypeVar("Batch")


class DeviceError(ValueError):
    """A device or GPU setting cannot be honoured on this machine; the message says what to change."""


def resolve_device(setting: str, key: str = "device") -> torch.device:
    """The torch device for run-config value ``setting`` of key ``key`` (``device`` / ``server-device``).

    ``auto`` is ``cuda`` (the current CUDA device) when this process sees a GPU, else ``cpu``. ``cuda`` and
    ``cuda:N`` fail fast with :class:`DeviceError` when no GPU (or no GPU N) is visible, instead of failing
    on the first tensor moved there.
    """
    if not isinstance(setting, str) or not DEVICE_SETTING.match(setting):
        raise DeviceError(f"{key}={setting!r}: allowed {DEVICE_ALLOWED}")
    if setting == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"{key}={setting!r} but torch.cuda.is_available() is False on this machine (CPU-only torch build "
            f"{torch.__version__} or no GPU visible, e.g. CUDA_VISIBLE_DEVICES is empty): use {key}='cpu' or "
            f"'auto', or install a CUDA build of torch"
        )
    device = torch.device(setting)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(
            f"{key}={setting!r} but this process sees {count} GPU(s) (cuda:0..cuda:{count - 1}): use "
            f"{key}='cuda' or 'auto' (under Ray/Flower each client process sees only the GPU it was given, "
            f"as cuda:0)"
        )
    return device


def check_precision(precision: str) -> str:
    """``precision`` if allowed, else :class:`DeviceError` naming the allowed values."""
    if precision not in PRECISIONS:
        raise DeviceError(f"precision={precision!r}: allowed {', '.join(PRECISIONS)} "
                          "(bf16 = bfloat16 autocast for compute; parameters and optimiser state stay fp32)")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """Context for a forward pass: bfloat16 autocast on ``device`` for ``bf16``; nothing for ``fp32``."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def fork_rng(device: torch.device) -> Iterator[None]:
    """``torch.random.fork_rng`` over the CPU generator and, when ``device`` is CUDA, that device's
    generator too, so ``torch.manual_seed`` inside makes dropout on ``device`` reproducible and the
    global RNG state outside is left as it was."""
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); CPU for a module holding neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def secret_generator(device: torch.device) -> torch.Generator:
    """A generator on ``device`` (a generator draws only on its own device) seeded from the OS's CSPRNG,
    never from the run's public seed: for privacy noise."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """``batch`` (a dataclass of tensors, e.g. ``TokenBatch`` or ``ActivationBatch``) with every tensor
    field on ``device``; the same object when they all are already there (so the CPU path copies nothing)."""
    moved = {field.name: value.to(device) for field in dataclasses.fields(batch)  # type: ignore[arg-type]
             if isinstance(value := getattr(batch, field.name), torch.Tensor) and value.device != device}
    return dataclasses.replace(batch, **moved) if moved else batch  # type: ignore[type-var]


def to_wire(tensor: torch.Tensor) -> torch.Tensor:
    """A result that goes to the wire: detached, float32 (autocast may have produced bfloat16), on CPU.
    A float32 CPU tensor is returned as it is."""
    tensor = tensor.detach()
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        tensor = tensor.float()
    return tensor.cpu()


def visible_gpus() -> int:
    """Number of CUDA devices this process sees (0 with a CPU-only torch build)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpu_resources(num_gpus: float, visible: int | None = None) -> None:
    """Fail before Flower does when ``client-resources-num-gpus`` cannot be scheduled here.

    Flower's simulation engine asks Ray for ``num_gpus`` GPUs per ClientApp actor; on a machine with fewer
    GPUs than that (none at all, typically) Ray starts no actor and the run dies much later with Flower's
    bare "ActorPool is empty" error. ``visible``: GPUs visible (default: what torch sees). Raises
    :class:`DeviceError` saying why and what to set instead; returns quietly otherwise (``num_gpus = 0``
    always passes).
    """
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, float)) or not num_gpus >= 0:
        raise DeviceError(f"client-resources-num-gpus={num_gpus!r}: must be a number >= 0 (0 = CPU only; "
                          "0.25 = four clients share one GPU)")
    if num_gpus == 0:
        return
    visible = visible_gpus() if visible is None else visible
    if visible == 0:
        raise DeviceError(
            f"client-resources-num-gpus={num_gpus:g} but no GPU is visible (torch.cuda.is_available() is False: "
            "CPU-only torch build or no GPU): Ray would start no ClientApp actor and Flower would stop with "
            "'ActorPool is empty'. Use client-resources-num-gpus=0 on this machine (and device='cpu' or 'auto')"
        )
    if num_gpus > visible:
        raise DeviceError(
            f"client-resources-num-gpus={num_gpus:g} but this machine has {visible} GPU(s): Ray cannot place "
            f"even one ClientApp and Flower would stop with 'ActorPool is empty'. Use a value <= {visible} "
            "(a fraction such as 0.25 lets four clients share one GPU)"
        )
