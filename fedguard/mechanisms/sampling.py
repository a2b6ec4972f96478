"""Client-secret randomness: Poisson-sampled batches and seeds the server cannot reproduce.

Amplification by subsampling only holds against an adversary who does not know which examples were
sampled, so a client's batches (and its dropout seeds) are drawn from a secret that never leaves it,
not from the run's public ``seed``. The secret is kept in the client's state so that a batch can be
recomputed when the server's gradients arrive.
"""

from __future__ import annotations

import secrets

import numpy as np


def new_secret() -> int:
    """A fresh 63-bit client secret (from the OS's CSPRNG)."""
    return secrets.randbits(63)


def secret_rng(secret: int, *tags: int) -> np.random.Generator:
    """A generator determined by the client's secret and ``tags`` (e.g. round, step)."""
    return np.random.default_rng([secret, *tags])


def poisson_batch(shard_size: int, sample_rate: float, secret: int, server_round: int, step: int) -> list[int]:
    """Indices of one Poisson-sampled batch: each example is in it independently with ``sample_rate``.

    The batch size is random (mean ``sample_rate * shard_size``) and may be 0; DP-SGD then takes a
    noise-only step. This is the sampling the accountant's ``q`` assumes.
    """
    rng = secret_rng(secret, server_round, step, 0x5A)
    return np.flatnonzero(rng.random(shard_size) < sample_rate).tolist()
