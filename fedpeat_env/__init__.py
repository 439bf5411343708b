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
``fedpeat_env.vector.FedPEATVectorEnv`` (B episodes in one batched step). ``fedpeat_env.parallel_env(**options)`` is
the multi-agent face (a PettingZoo ``ParallelEnv``, one agent per device; ``fedpeat_env.parallel``).

Worker processes: the ids exist in a process once ``fedpeat_env`` is imported there. Processes started with fork
inherit them; the ``forkserver`` (SB3's ``SubprocVecEnv`` default on Linux and macOS) preloads this package, so
``make_vec_env("FedPEAT-v1", vec_env_cls=SubprocVecEnv)`` works from a script, a notebook or a test alike. Processes
started with ``spawn`` import only the main script: name the module in the id there, ``"fedpeat_env:FedPEAT-v1"``
(Gymnasium imports it), unless the main script imports ``fedpeat_env`` itself.
"""

from __future__ import annotations

from gymnasium.envs.registration import register

from fedpeat_env.config import EnvConfig, RewardWeights
from fedpeat_env.env import FedPEATEnv

register(id="FedPEAT-v1", entry_point="fedpeat_env.env:FedPEATEnv", kwargs={"fidelity": "surrogate"},
         vector_entry_point="fedpeat_env.vector:FedPEATVectorEnv")
register(id="FedPEAT-Engine-v1", entry_point="fedpeat_env.env:FedPEATEnv", kwargs={"fidelity": "engine", "horizon": 5})


def _preload_in_forkserver() -> None:
    """Add this package to the modules multiprocessing's forkserver imports when it starts (kept: those already
    listed), so that its worker processes know the ids. No effect on a forkserver already running."""
    import multiprocessing.forkserver as forkserver

    modules = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["__main__"])
    if __name__ not in modules:
        forkserver.set_forkserver_preload([*modules, __name__])


def parallel_env(**options):
    """The multi-agent face: a PettingZoo ``ParallelEnv`` with one agent per device (``fedpeat_env.parallel``);
    ``options`` are the env options of ``gymnasium.make("FedPEAT-v1", ...)``."""
    from fedpeat_env.parallel import FedPEATParallelEnv

    return FedPEATParallelEnv(**options)


_preload_in_forkserver()

__all__ = ["EnvConfig", "FedPEATEnv", "RewardWeights", "parallel_env"]
