"""The policy interface shared by baselines and trained agents, and the SB3 adapter.

A policy sees the observation and the *unwrapped* env (so searches can deep-copy it and masks can be read):

    obs, _ = env.reset(seed=s); policy.reset(env.unwrapped)
    action = policy.act(obs, env.unwrapped)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

if TYPE_CHECKING:
    from fedpeat_env.env import FedPEATEnv

CLAIRVOYANT = ("greedy", "oracle")
"""Baselines whose simulations read the realised future (deep copies of the env draw its coming fading, noise and
availability): upper bounds, not controllers; tables label them so (``agents.stats.benchmark_table``)."""


@runtime_checkable
class Policy(Protocol):
    """Chooses one action per round."""

    def reset(self, env: gym.Env) -> None:
        """Called after ``env.reset``; ``env`` is the unwrapped env."""

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        """The action (integer array in ``env.action_space``) for observation ``obs``."""


def as_fedpeat(env: gym.Env) -> FedPEATEnv:
    """``env`` typed as the FedPEAT env a policy is given unwrapped (its ``dynamics``, ``config``, ``action_masks``);
    typing only, no check."""
    return cast("FedPEATEnv", env)


def action_choices(env: gym.Env) -> list[np.ndarray]:
    """Allowed values of each entry of a MultiDiscrete action, from ``env.action_masks()`` when the env has it."""
    nvec = np.asarray(cast(spaces.MultiDiscrete, env.action_space).nvec)
    mask = env.action_masks() if hasattr(env, "action_masks") else np.ones(int(nvec.sum()), dtype=bool)
    parts = np.split(np.asarray(mask, dtype=bool), np.cumsum(nvec)[:-1])
    return [np.flatnonzero(part) for part in parts]


def level_entries(env: gym.Env) -> int:
    """Number of leading action entries that are per-device levels (the rest, if any, are LoRA-rank entries)."""
    nvec = cast(spaces.MultiDiscrete, env.action_space).nvec
    return int(getattr(getattr(env, "config", None), "num_devices", len(nvec)))


class SB3Policy:
    """Wraps a trained stable-baselines3 / sb3-contrib model; MaskablePPO gets ``action_masks=env.action_masks()``.

    :param model: a trained SB3 model (PPO, A2C, MaskablePPO, ...).
    :param vecnormalize: the ``VecNormalize`` whose observation statistics the model was trained with (or None).
    :param deterministic: take the mode of the action distribution instead of sampling.
    """

    def __init__(self, model: Any, vecnormalize: Any = None, deterministic: bool = True) -> None:
        self.model, self.vecnormalize, self.deterministic = model, vecnormalize, deterministic
        self.masked = type(model).__name__.startswith("Maskable")

    def reset(self, env: gym.Env) -> None:
        pass

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        device_actions = getattr(self.model.policy, "device_actions", None)
        trained = self.model.observation_space.shape
        if np.shape(obs) != trained and device_actions is None:
            raise ValueError(f"this policy was trained on observations of shape {trained}, the env gives {np.shape(obs)}: "
                             "only a device-set policy (fedpeat train --policy device-set) runs at another num_devices")
        if self.vecnormalize is not None:
            obs = self.vecnormalize.normalize_obs(obs)  # a no-op on observations for the device-set policy
        if device_actions is not None and self.deterministic:  # the device-set policy: any number of devices
            return device_actions(obs, as_fedpeat(env).action_masks() if self.masked else None)[0]
        kwargs = {"action_masks": as_fedpeat(env).action_masks()} if self.masked else {}
        action, _ = self.model.predict(obs, deterministic=self.deterministic, **kwargs)
        return np.asarray(action, dtype=np.int64)
