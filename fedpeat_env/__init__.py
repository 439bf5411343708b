"""Gymnasium environments for adaptive control of federated foundation-model tuning.

``import fedpeat_env`` registers:

| id | fidelity | per step |
|----|----------|----------|
| ``FedPEAT-v1`` | calibrated surrogate (fast, default) | one modelled federated round |
| ``FedPEAT-Engine-v1`` | the federation engine on the embedded GPT-2 | one real federated round |

``FedPEAT-v0`` (one domain, quantity skew, always-available devices) was replaced by v1 (``FedPEATEnv``'s Version
History); Gymnasium answers the old id with a ``DeprecatedEnv`` error naming v1. Its scenario stays selectable:
``gym.make("FedPEAT-v1", partition="dirichlet", availability="always")``.

``gymnasium.make_vec("FedPEAT-v1", num_envs=B, vectorization_mode="vector_entry_point")`` returns the compiled
``fedpeat_env.vector.FedPEATVectorEnv`` (B episodes in one batched step).
"""

from __future__ import annotations

from gymnasium.envs.registration import register

from fedpeat_env.config import EnvConfig, RewardWeights
from fedpeat_env.env import FedPEATEnv

register(id="FedPEAT-v1", entry_point="fedpeat_env.env:FedPEATEnv", kwargs={"fidelity": "surrogate"},
         vector_entry_point="fedpeat_env.vector:FedPEATVectorEnv")
register(id="FedPEAT-Engine-v1", entry_point="fedpeat_env.env:FedPEATEnv", kwargs={"fidelity": "engine", "horizon": 5})

__all__ = ["EnvConfig", "FedPEATEnv", "RewardWeights"]
