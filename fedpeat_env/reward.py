"""The FedPEAT reward: named terms, their weights, and the compiled formula of each.

The terms are the fields of ``RewardWeights``; everything else follows from them: ``REWARD_TERMS`` (the names),
``TERMS_DTYPE`` (the record a round's terms are written into, one float per term), the ``info`` keys
``REWARD_INFO_KEYS`` (``info["reward_<term>"]``, flat as Gymnasium's MuJoCo envs report ``reward_ctrl``, so that vector
envs and clients that batch infos read them as arrays; ``reward_terms(info)`` gives them back as a dict), the
benchmark's columns. A term's formula is one line of ``settle_terms``. Adding a term = a weight field here and its
line in ``settle_terms`` (and the row of the env docstring's reward table, which a test checks against the terms).
The round quantities the formulas read (``round_`` record fields, see ``fedpeat_env.dynamics.ROUND_DTYPE``) are
priced in ``fedpeat_env.dynamics``.

Scale in N: the *cost* terms (latency with "sum", exchanges, memory with "sum") are divided by the episode's number of
devices, so their weights keep their scale for any N. The *penalties* (``memory_penalty``, ``exchange_penalty``,
``availability_penalty``) are not: each is charged per violating device or exchange, so that a violation costs the
same at any N (divided by N, violations would become free as N grows).
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, fields
from typing import Any, NamedTuple

import numba
import numpy as np

LATENCY_CAP = 10.0
"""A device's latency counts at most 10 reference latencies: a round that slow has failed anyway, and without a cap a
deep Rayleigh fade during an emulator download cost single episodes −10,000 and swamped reward normalisation."""


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the normalised reward terms (FedPEAT: perplexity gap, latency Q, exchanges, memory; penalties)."""

    perplexity: float = 1.0
    """−w_p · max(ppl − target, 0) / (ppl_0 − target)."""
    latency: float = 0.5
    """−w_q · latency cost: Σ_i min(Q_i / Q_ref, 10) / N ("sum") or min(max_i Q_i / Q_ref, 10) ("max")."""
    exchanges: float = 0.3
    """−w_x · emulator exchanges this round / N."""
    memory: float = 0.2
    """−w_m · memory use: Σ_i m_i / (η M_i) / N ("sum") or its mean over the active devices ("mean")."""
    memory_penalty: float = 1.0
    """−P_m per selected device whose footprint exceeds η·capacity (that device is dropped from the round); per
    device, not divided by N."""
    exchange_penalty: float = 0.5
    """−P_x per exchange beyond κ·T on a device; per exchange, not divided by N."""
    availability_penalty: float = 1.0
    """−P_a per selected device that is unavailable this round (that device is dropped, as a memory overflow is); per
    device, not divided by N."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"reward weight {f.name} must be a finite number >= 0, got {value!r}")

    def record(self) -> np.void:
        """The weights as a ``TERMS_DTYPE`` record (what the compiled reward reads by name)."""
        return np.array([astuple(self)], dtype=TERMS_DTYPE)[0]


REWARD_TERMS: tuple[str, ...] = tuple(f.name for f in fields(RewardWeights))
"""Names of the reward terms, in ``REWARD_INFO_KEYS`` order."""
REWARD_INFO_KEYS: tuple[str, ...] = tuple(f"reward_{name}" for name in REWARD_TERMS)
"""The ``info`` keys of the terms (``info["reward_latency"]``, …): a float per step (arrays of the sub-envs in a vector
env); the reward is their sum."""


def reward_terms(info: dict) -> dict:
    """{term: value} of a step's ``info`` (its ``REWARD_INFO_KEYS``)."""
    return {name: info[key] for name, key in zip(REWARD_TERMS, REWARD_INFO_KEYS)}

TERMS_DTYPE = np.dtype([(name, np.float64) for name in REWARD_TERMS])
"""One round's reward terms of one episode (also the layout of the weights record)."""


class RewardParams(NamedTuple):
    """What the reward needs besides the round: the weights record and the normalisers."""

    weights: np.void
    """``RewardWeights.record()``."""
    target: float
    """Perplexity at which the episode terminates."""
    initial_ppl: float
    """Perplexity at the start of an episode."""
    horizon: int
    """Rounds T per episode."""


@numba.njit(cache=True, error_model="numpy")
def settle_terms(next_ppl: float, round_, terms, params: RewardParams, num_devices: int) -> None:
    """The reward terms of a round into the record ``terms`` (``TERMS_DTYPE``), from the next perplexity and the round's
    priced quantities ``round_`` (``fedpeat_env.dynamics.ROUND_DTYPE``), for an episode of ``num_devices`` devices.
    One line per term."""
    w: Any = params.weights  # a record: compiled code reads its fields as attributes
    terms.perplexity = -w.perplexity * max(next_ppl - params.target, 0.0) / (params.initial_ppl - params.target)
    terms.latency = -w.latency * round_.latency_cost
    terms.exchanges = -w.exchanges * round_.exchanges / num_devices
    terms.memory = -w.memory * round_.memory_use
    terms.memory_penalty = -w.memory_penalty * round_.memory_violations
    terms.exchange_penalty = -w.exchange_penalty * round_.excess_exchanges
    terms.availability_penalty = -w.availability_penalty * round_.unavailable
