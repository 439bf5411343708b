"""Vectorised surrogate: ``num_envs`` FedPEAT-v0 episodes stepped at once in numpy (gymnasium ``VectorEnv``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from fedpeat_env.config import EnvConfig
from fedpeat_env.dynamics import REWARD_TERMS, Dynamics
from fedpeat_env.surrogate import Calibration


class FedPEATVectorEnv(VectorEnv):
    """B independent FedPEAT-v0 episodes (surrogate fidelity) sharing one batched ``Dynamics``.

    Same observation, action, reward and info keys as ``FedPEATEnv``; info values are arrays of shape (B,).
    ``autoreset_mode`` NEXT_STEP (default): the step after an episode ends resets that sub-env (its action is
    ignored) and returns reward 0. SAME_STEP: a finished sub-env is reset within the step; its last observation is
    in ``info["final_obs"]`` where ``info["_final_obs"]`` is True.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, autoreset_mode: AutoresetMode = AutoresetMode.NEXT_STEP, **kwargs: Any) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if autoreset_mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode must be NEXT_STEP or SAME_STEP, got {autoreset_mode!r}")
        self.metadata = {"autoreset_mode": autoreset_mode}
        self.config = EnvConfig.from_kwargs(**kwargs)
        if self.config.fidelity != "surrogate":
            raise ValueError(f"fidelity must be 'surrogate' for the vector env, got {self.config.fidelity!r}")
        self.num_envs = num_envs
        self.dynamics = Dynamics(self.config, num_envs, Calibration.load(self.config.calibration))
        N, K, R = self.config.num_devices, len(self.config.compression_levels), self.dynamics.R
        self.single_action_space = spaces.MultiDiscrete([K + 1] * N + ([R] * N if self.config.control_rank else []))
        low, high = self.dynamics.observation_bounds()
        self.single_observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._nvec = self.single_action_space.nvec
        self._autoreset = np.zeros(num_envs, dtype=bool)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        scenario_seed, noise_seed = self.np_random.integers(0, 2**62, size=2)
        self.dynamics.reset(np.random.default_rng(scenario_seed), np.random.default_rng(noise_seed))
        self._autoreset[:] = False
        return self.dynamics.observe(), {}

    def action_masks(self) -> np.ndarray:
        """(num_envs, mask length) boolean masks, one row per sub-env (see ``FedPEATEnv.action_masks``)."""
        return self.dynamics.action_masks()

    def validate_actions(self, actions: np.ndarray) -> None:
        if actions.shape != (self.num_envs, len(self._nvec)) or (actions < 0).any() or (actions >= self._nvec).any():
            raise ValueError(f"actions must be integers of shape {(self.num_envs, len(self._nvec))} within {self._nvec}")

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        actions = np.asarray(actions)
        self.validate_actions(actions)
        N = self.config.num_devices
        levels = actions[:, :N].astype(np.int64)
        ranks = actions[:, N:].astype(np.int64) if self.config.control_rank else np.zeros_like(levels)
        d = self.dynamics
        costs = d.transmit(levels, ranks)
        reward, terms, terminated, truncated = d.finish(costs, d.surrogate_perplexity(costs))
        info = {name: terms[name] for name in REWARD_TERMS}
        info |= {"perplexity": d.ppl.copy(), "round_latency_s": costs.latency_s,
                 "exchanges": costs.exchanged.sum(axis=1), "memory_violations": costs.violations.sum(axis=1)}
        if self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP:
            done = terminated | truncated
            if done.any():
                info |= {"final_obs": d.observe(), "_final_obs": done}
                d.reset(d.scenario_rng, d.noise_rng, envs=done)
            return d.observe(), reward, terminated, truncated, info
        if self._autoreset.any():
            d.reset(d.scenario_rng, d.noise_rng, envs=self._autoreset)
            reward = np.where(self._autoreset, 0.0, reward)
            terminated = terminated & ~self._autoreset
            truncated = truncated & ~self._autoreset
        self._autoreset = terminated | truncated
        return d.observe(), reward, terminated, truncated, info
