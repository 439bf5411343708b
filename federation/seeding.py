"""One place that seeds every random number generator of a run."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy's global state and torch; return a fresh ``numpy.random.Generator`` for the run."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))
    return np.random.default_rng(int(seed))


def child_seed(rng: np.random.Generator) -> int:
    """Draw a seed for a sub-component (a client's torch generator, a channel sampler) from the run's rng."""
    return int(rng.integers(0, 2**31 - 1))
