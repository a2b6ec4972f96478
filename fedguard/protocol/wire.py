"""How float tensors travel: the wire dtype of hidden states and gradients, and optional compression of the
hidden states a client sends.

Flower arrays are numpy, so every encoding here is a set of plain numpy-compatible tensors plus a few
entries in the chunk's config record (``dtype``, ``compression``, ``topk-k``). Receivers compute in float32
whatever arrives.

Compression is applied by the client *after* its clipping and noise, so it is post-processing: it never
weakens a differential-privacy guarantee, and it needs no accounting. The client back-propagates the
server's gradient (taken at the decompressed hidden states) into its own uncompressed ones, a
straight-through estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

WIRE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""``activation-dtype``: the float type of hidden states and their gradients on the wire (not of adapters).
float16/bfloat16 halve the bytes. bfloat16 travels as the int16 bit pattern (numpy has no bfloat16),
flagged in the chunk's ``dtype``."""

COMPRESSIONS = ("none", "int8", "topk")
"""``activation-compression`` of the hidden states a client sends (gradients are never compressed):

* ``none``: ``[B, T, H]`` in the wire dtype;
* ``int8``: per-token absmax quantisation: ``q = round(127 h / s)`` as int8 ``[B, T, H]`` plus the float32
  scale ``s = max |h|`` per token ``[B, T]``: about 1/4 of float32 (max error ``s / 254`` per feature);
* ``topk``: per token the ``k = ceil(activation-topk x H)`` features of largest magnitude, as values
  ``[B, T, k]`` in the wire dtype and int16 feature indices ``[B, T, k]``; the rest arrive as 0.
"""


class WireFormatError(ValueError):
    """A received tensor does not match the encoding its chunk declares; the text says what was wrong."""


def pack(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in wire dtype ``dtype`` (bfloat16 as its int16 bit pattern)."""
    out = tensor.detach().to(dtype).contiguous()
    return out.view(torch.int16) if dtype == torch.bfloat16 else out


def unpack(tensor: torch.Tensor, dtype_name: str | None) -> torch.Tensor:
    """Undo :func:`pack` for a chunk whose config says ``dtype = dtype_name``."""
    if dtype_name == "bfloat16":
        if tensor.dtype != torch.int16:
            raise WireFormatError(f"bfloat16 chunk carries {tensor.dtype} data")
        return tensor.view(torch.bfloat16)
    return tensor


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in WIRE_DTYPES.items() if value == dtype)


@dataclass(frozen=True)
class ActivationCodec:
    """Encodes hidden states ``[B, T, H]`` for the wire and decodes them back to float32 ``[B, T, H]``.

    ``compression`` is one of :data:`COMPRESSIONS`; ``topk`` is the fraction of the H features kept per
    token (0 < topk <= 1; used by ``topk`` only); ``dtype`` the wire float type of uncompressed or top-k values.
    """

    compression: str = "none"
    topk: float = 0.1
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"activation compression {self.compression!r}: allowed {', '.join(COMPRESSIONS)}")
        if not 0.0 < self.topk <= 1.0:
            raise ValueError(f"activation-topk={self.topk}: must be in (0, 1]")

    def kept(self, hidden_size: int) -> int:
        """Features kept per token by ``topk``: ``ceil(topk x H)``, at least 1."""
        return max(1, min(hidden_size, math.ceil(self.topk * hidden_size - 1e-9)))

    def config(self, hidden_size: int) -> dict[str, str | int]:
        """The chunk config entries that tell the receiver how to decode."""
        out: dict[str, str | int] = {"dtype": dtype_name(self.dtype), "compression": self.compression}
        if self.compression == "topk":
            out["topk-k"] = self.kept(hidden_size)
        return out

    def encode(self, hidden: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
        """The tensors for one batch's hidden states, keyed ``<name>`` (+ ``<name>.scale`` / ``<name>.index``)."""
        hidden = hidden.detach().float()
        if self.compression == "int8":
            scale = hidden.abs().amax(dim=-1)
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            quantised = torch.round(hidden * (127.0 / safe.unsqueeze(-1))).clamp(-127, 127).to(torch.int8)
            return {name: quantised.contiguous(), f"{name}.scale": scale.contiguous()}
        if self.compression == "topk":
            if hidden.shape[-1] > torch.iinfo(torch.int16).max:
                raise ValueError(f"topk compression indexes features with int16; hidden size {hidden.shape[-1]}")
            _, index = hidden.abs().topk(self.kept(hidden.shape[-1]), dim=-1, sorted=False)
            values = hidden.gather(-1, index)
            return {name: pack(values, self.dtype), f"{name}.index": index.to(torch.int16).contiguous()}
        return {name: pack(hidden, self.dtype)}

    def roundtrip(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the receiver will decode from ``hidden``: the tensor the server actually sees (float32)."""
        config = self.config(hidden.shape[-1])
        return decode_hidden(self.encode(hidden, "h"), "h", config, hidden.shape[-1])


def decode_hidden(tensors: Mapping[str, torch.Tensor], name: str, config: Mapping, hidden_size: int) -> torch.Tensor:
    """Decode one batch's hidden states encoded by :meth:`ActivationCodec.encode` under chunk ``config``.

    Returns float32 ``[B, T, hidden_size]``; raises :class:`WireFormatError` when a tensor is missing, has the
    wrong dtype or shape, or an index is out of range. Finiteness is checked by the caller.
    """
    compression = config.get("compression", "none")
    data = tensors.get(name)
    if data is None:
        raise WireFormatError(f"{name}: missing")
    if compression == "none":
        values = unpack(data, config.get("dtype"))
        if not values.is_floating_point():
            raise WireFormatError(f"{name}: uncompressed hidden states must be floats, got {values.dtype}")
        return values.float()
    if compression == "int8":
        scale = tensors.get(f"{name}.scale")
        if data.dtype != torch.int8 or data.dim() != 3 or data.shape[-1] != hidden_size:
            raise WireFormatError(f"{name}: int8 compression needs int8 [batch, seq, {hidden_size}], got "
                                  f"{data.dtype} {tuple(data.shape)}")
        if scale is None or not scale.is_floating_point() or tuple(scale.shape) != tuple(data.shape[:2]):
            raise WireFormatError(f"{name}.scale: needs float [batch, seq] = {list(data.shape[:2])}, got "
                                  f"{None if scale is None else (scale.dtype, tuple(scale.shape))}")
        return data.float() * (scale.float() / 127.0).unsqueeze(-1)
    if compression == "topk":
        index = tensors.get(f"{name}.index")
        k = config.get("topk-k")
        values = unpack(data, config.get("dtype"))
        if not isinstance(k, int) or not 1 <= k <= hidden_size:
            raise WireFormatError(f"topk-k={k!r}: must be an integer in [1, {hidden_size}]")
        if values.dim() != 3 or values.shape[-1] != k or not values.is_floating_point():
            raise WireFormatError(f"{name}: topk values need float [batch, seq, {k}], got "
                                  f"{values.dtype} {tuple(values.shape)}")
        if index is None or index.dtype != torch.int16 or tuple(index.shape) != tuple(values.shape):
            raise WireFormatError(f"{name}.index: needs int16 {list(values.shape)}, got "
                                  f"{None if index is None else (index.dtype, tuple(index.shape))}")
        index = index.long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= hidden_size):
            raise WireFormatError(f"{name}.index: feature index outside [0, {hidden_size})")
        out = torch.zeros(*values.shape[:2], hidden_size)
        return out.scatter_(-1, index, values.float())
    raise WireFormatError(f"compression {compression!r}: allowed {', '.join(COMPRESSIONS)}")
