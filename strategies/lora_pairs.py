"""Which adapter tensors form LoRA (A, B) pairs, by peft's parameter names.

peft names a LoRA factor ``<module>.lora_A.<adapter>.weight`` ([r, in]) and ``<module>.lora_B.<adapter>.weight``
([out, r]); the module's update is ``(alpha / r) · B @ A``. Tensors that are not LoRA factors (e.g. a
trainable head) are "other" tensors and are averaged as they are by every built-in strategy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_A, _B = ".lora_A.", ".lora_B."


@dataclass(frozen=True)
class LoraPair:
    """The names of one module's A ([r, in]) and B ([out, r]) factors."""

    a: str
    b: str


def is_lora_a(name: str) -> bool:
    return _A in name


def is_lora_b(name: str) -> bool:
    return _B in name


def lora_pairs(names: Iterable[str]) -> list[LoraPair]:
    """Every (A, B) pair among ``names``; raises ``ValueError`` if an A has no B or a B has no A."""
    names = set(names)
    pairs = []
    for a in sorted(n for n in names if is_lora_a(n)):
        b = a.replace(_A, _B, 1)
        if b not in names:
            raise ValueError(f"LoRA factor {a} has no matching {b}")
        pairs.append(LoraPair(a, b))
    orphans = {n for n in names if is_lora_b(n)} - {p.b for p in pairs}
    if orphans:
        raise ValueError(f"LoRA factor(s) {sorted(orphans)[:2]} have no matching lora_A")
    return pairs


def other_names(names: Iterable[str]) -> list[str]:
    """Names that are neither a LoRA A nor a LoRA B factor."""
    return sorted(n for n in names if not is_lora_a(n) and not is_lora_b(n))
