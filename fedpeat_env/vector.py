"""Vectorised surrogate: ``num_envs`` FedPEAT-v1 episodes stepped at once in compiled code (gymnasium ``VectorEnv``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from fedpeat_env.config import EnvConfig
from fedpeat_env.dynamics import INFO_KEYS, Dynamics, Output
from fedpeat_env.reward import REWARD_INFO_KEYS, REWARD_TERMS
from fedpeat_env.surrogate import Calibration


class FedPEATVectorEnv(VectorEnv):
    """B independent FedPEAT-v1 episodes (surrogate fidelity) sharing one batched ``Dynamics``.

    Same observation, action and reward as ``FedPEATEnv``; info holds its keys (``reward_<term>`` and the round's
    numbers) with arrays of shape (B,); a reset's info has the same keys (the terms 0, the starting perplexity,
    round 0).
    ``autoreset_mode`` NEXT_STEP (default): the step after an episode ends resets that sub-env (its action is
    ignored) and returns reward 0. SAME_STEP (the mode torchrl's ``GymWrapper`` and skrl take): a finished sub-env is
    reset within the step and, as in gymnasium's own vector envs, the step returns its reward but the observation
    and info of its reset; its last observation and info are in ``info["final_obs"]`` and ``info["final_info"]``
    (each key with its ``_key`` mask) where ``info["_final_obs"]`` is True.
    ``step`` before the first ``reset`` raises ``RuntimeError``.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}
    single_action_space: spaces.MultiDiscrete
    single_observation_space: spaces.Box

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
        calibration = Calibration.load(self.config.calibration)
        calibration.warn_outside(self.config)
        self.dynamics = Dynamics(self.config, num_envs, calibration)
        self.single_action_space = spaces.MultiDiscrete(self.dynamics.nvec)
        low, high = self.dynamics.observation_bounds()
        self.single_observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._nvec = self.single_action_space.nvec
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._needs_reset = True

    @property
    def autoreset_mode(self) -> AutoresetMode:
        """How finished sub-envs restart (``metadata["autoreset_mode"]``; gymnasium's own vector envs and torchrl read
        this attribute)."""
        return self.metadata["autoreset_mode"]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.dynamics.reset(int(self.np_random.integers(2**62)))  # as FedPEATEnv
        self._autoreset[:] = False
        self._needs_reset = False
        return self.dynamics.observe(), self._start_info()

    def _start_info(self) -> dict:
        """The info of the episodes as they start (a reset's): the terms 0, the starting perplexity, round 0."""
        out = self.dynamics.new_output()  # zeros: no round played yet
        out.round_["perplexity"] = self.dynamics.ppl
        return self._info(out)

    def action_masks(self) -> np.ndarray:
        """(num_envs, mask length) boolean masks, one row per sub-env (see ``FedPEATEnv.action_masks``)."""
        return self.dynamics.action_masks()

    def validate_actions(self, actions: np.ndarray) -> np.ndarray:
        """``actions`` as a C-contiguous int64 array (num_envs, len(nvec)), or ValueError."""
        actions = np.asarray(actions)
        if actions.shape == (self.num_envs, len(self._nvec)) and actions.dtype.kind in "iu":
            actions = np.ascontiguousarray(actions, dtype=np.int64)
            if self.dynamics.valid(actions):
                return actions
        raise ValueError(f"actions must be integers of shape {(self.num_envs, len(self._nvec))} within {self._nvec}")

    def _restart(self, envs: np.ndarray) -> None:
        """New episodes for the sub-envs in ``envs``. With one sub-env, jump to the next episode point of the stream as
        ``FedPEATEnv``'s unseeded reset does, so that ``FedPEATVectorEnv(1)`` and ``FedPEAT-v1`` meet the same episodes
        for ever; with more, continue the shared stream."""
        if self.num_envs == 1:
            self.dynamics.next_episodes()
        else:
            self.dynamics.reset_episodes(envs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, out, terminated, truncated, final_obs = self.step_result(actions)
        info = self._info(out)
        if final_obs is not None:  # SAME_STEP: the sub-envs that reset report their reset's info, the round's aside
            done = terminated | truncated
            final_info = {key: value.copy() for key, value in info.items()} | {f"_{key}": done.copy() for key in info}
            start = self._start_info()
            for key, value in info.items():
                value[done] = start[key][done]
            info |= {"final_obs": final_obs, "_final_obs": done, "final_info": final_info, "_final_info": done.copy()}
        return obs, out.round_["reward"], terminated, truncated, info

    @staticmethod
    def _info(out: Output) -> dict:
        """The reward terms and ``INFO_KEYS`` of a round (copies, (B,) each)."""
        info = {key: out.terms[name].copy() for name, key in zip(REWARD_TERMS, REWARD_INFO_KEYS)}
        return info | {key: out.round_[key].astype(np.int64 if kind is int else np.float64) for key, kind in INFO_KEYS}

    def step_result(self, actions: np.ndarray) -> tuple[np.ndarray, Output, np.ndarray, np.ndarray, np.ndarray | None]:
        """``step`` without building ``info``: (observation, the round's ``Output`` (its ``round_`` records hold the
        reward and perplexity), terminated, truncated, the last observations of the sub-envs that SAME_STEP reset
        (None if none)). For adapters that read a few fields (``agents.vec``)."""
        if self._needs_reset:
            raise RuntimeError("call reset() before step(): FedPEATVectorEnv has no episodes yet")
        actions = self.validate_actions(actions)
        d = self.dynamics
        final_obs = None
        if self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP:
            out = d.step(actions)
            obs, (terminated, truncated) = out.obs, out.ended
            done = terminated | truncated
            if done.any():
                final_obs = obs
                self._restart(done)
                obs = d.observe()
        else:  # NEXT_STEP: sub-envs that ended last step start anew and skip this step (reward 0)
            resetting = self._autoreset
            if self.num_envs == 1 and resetting[0]:  # nothing plays: no round is drawn (a single env's reset draws none)
                self._restart(resetting)
                out = d.new_output()
                out.obs[:] = d.observe()
            else:
                if resetting.any():
                    self._restart(resetting)
                out = d.step(actions, ~resetting)
            obs, (terminated, truncated) = out.obs, out.ended
            self._autoreset = terminated | truncated
        return obs, out, terminated, truncated, final_obs
