"""Public calibration text: what the server fits data-dependent initialisations on (the bottleneck's
``public-pca`` start, :mod:`fedguard.model.bottleneck`).

It is generic English that ships with FedGuard and is no client's data: the responses of a fixed, seeded
sample of the packaged alpaca-libre instructions (see its provenance in ``fedguard/data/alpaca_libre``).
Every process that asks gets the same texts.
"""

from __future__ import annotations

import functools

import numpy as np

from fedguard.data.instructions import ALPACA_LIBRE, load_instruction_splits

CALIBRATION_TEXTS = 512  # sentences; ~60k MiniLM tokens at max-length 128, about 2 s for 2 blocks on a CPU core
CALIBRATION_SEED = 20241129


@functools.lru_cache(maxsize=4)
def calibration_texts(count: int = CALIBRATION_TEXTS) -> tuple[str, ...]:
    """``count`` public texts (``1 <= count``; at most the corpus's size), the same in every process."""
    if count < 1:
        raise ValueError(f"calibration text count {count}: must be >= 1")
    responses = load_instruction_splits(ALPACA_LIBRE).train.response
    order = np.random.default_rng(CALIBRATION_SEED).permutation(len(responses))[:count]
    return tuple(responses[int(i)] for i in order)
