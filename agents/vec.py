"""SB3 ``VecEnv`` over the batched surrogate: n_envs FedPEAT-v1 episodes per compiled step instead of n_envs
Python env steps (``DummyVecEnv``). Same-step autoreset with ``terminal_observation`` in ``infos``, as SB3 expects;
``env_method("action_masks")`` serves MaskablePPO."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode
from numpy.lib.recfunctions import structured_to_unstructured
from stable_baselines3.common.vec_env import VecEnv

from fedpeat_env.reward import REWARD_TERMS
from fedpeat_env.vector import FedPEATVectorEnv

EPISODE_SUMS = ("round_latency_s", "exchanges", "memory_violations", "unavailable", "participants")
"""Round numbers summed over an episode for ``episode_metrics`` (besides the reward terms)."""


class FedPEATSB3VecEnv(VecEnv):
    """``num_envs`` surrogate episodes (wrap with ``VecMonitor`` for episode statistics). ``step_time_s`` and
    ``steps`` accumulate the wall time and count of batched steps (the env's share of training time)."""

    def __init__(self, num_envs: int, seed: int | None = None, **env_kwargs: Any) -> None:
        self.venv = FedPEATVectorEnv(num_envs, autoreset_mode=AutoresetMode.SAME_STEP, **env_kwargs)
        super().__init__(num_envs, self.venv.single_observation_space, self.venv.single_action_space)
        self._seed = seed
        self._actions: np.ndarray | None = None
        self.step_time_s, self.steps = 0.0, 0
        self._sums = np.zeros((num_envs, len(REWARD_TERMS) + len(EPISODE_SUMS)))
        self._finished: list[np.ndarray] = []

    def reset(self) -> np.ndarray:
        obs, _ = self.venv.reset(seed=self._seed)
        self._seed = None  # later resets continue the generator
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs, -1)

    def step_wait(self):
        started = time.perf_counter()
        assert self._actions is not None  # step_async set them
        obs, out, terminated, truncated, final_obs = self.venv.step_result(self._actions)
        infos = [{"perplexity": ppl, "TimeLimit.truncated": cut}
                 for ppl, cut in zip(out.round_["perplexity"].tolist(), truncated.tolist())]
        if final_obs is not None:
            for i in np.flatnonzero(terminated | truncated):
                infos[i]["terminal_observation"] = final_obs[i]
        self._accumulate(out, terminated | truncated)
        self.step_time_s += time.perf_counter() - started
        self.steps += self.num_envs
        return obs, out.round_["reward"].astype(np.float32), terminated | truncated, infos

    def _accumulate(self, out, done: np.ndarray) -> None:
        """Add the round's reward terms and ``EPISODE_SUMS`` to each sub-env's episode sums; keep finished episodes'
        sums with their final perplexity."""
        self._sums[:, :len(REWARD_TERMS)] += structured_to_unstructured(out.terms)
        self._sums[:, len(REWARD_TERMS):] += structured_to_unstructured(out.round_[list(EPISODE_SUMS)])
        if done.any():
            ended = np.flatnonzero(done)
            self._finished.append(np.column_stack([self._sums[ended], out.round_["perplexity"][ended]]))
            self._sums[ended] = 0.0

    def episode_metrics(self) -> dict[str, float]:
        """Means over the episodes finished since the last call (then forgotten): each reward term's episode sum
        (``reward/<term>``), the episode totals of ``EPISODE_SUMS`` and the final perplexity; empty if none ended."""
        if not self._finished:
            return {}
        means = np.concatenate(self._finished).mean(axis=0)
        self._finished = []
        names = [f"reward/{t}" for t in REWARD_TERMS] + list(EPISODE_SUMS) + ["final_perplexity"]
        return dict(zip(names, means.tolist()))

    def get_state(self) -> dict[str, Any]:
        """A copy of the episodes in progress (the batched env with its random generators, the seed of a pending
        reset, the running episode sums) for a checkpoint; ``set_state`` continues them exactly. The step counters
        are not part of it."""
        return copy.deepcopy({"venv": self.venv, "seed": self._seed, "sums": self._sums, "finished": self._finished})

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue the episodes of ``get_state`` (taken from an adapter with the same settings)."""
        state = copy.deepcopy(state)
        self.venv, self._seed, self._sums, self._finished = state["venv"], state["seed"], state["sums"], state["finished"]

    def close(self) -> None:
        self.venv.close()

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list:
        if method_name == "episode_metrics":
            return [self.episode_metrics() if i == 0 else {} for i in self._indices(indices)]
        if method_name != "action_masks":
            raise AttributeError(f"FedPEATSB3VecEnv supports env_method('action_masks', 'episode_metrics') only, got "
                                 f"{method_name!r}")
        masks = self.venv.action_masks()
        return [masks[i] for i in self._indices(indices)]

    def get_attr(self, attr_name: str, indices=None) -> list:
        """Attributes of the adapter (``step_time_s``, ``steps``: reported once, by index 0) or of the vector env."""
        if attr_name in ("step_time_s", "steps"):
            return [getattr(self, attr_name) if i == 0 else 0 for i in self._indices(indices)]
        value = getattr(self.venv, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        raise AttributeError("FedPEATSB3VecEnv sub-environments share one batched state; set_attr is not supported")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def seed(self, seed: int | None = None) -> Sequence[None]:
        self._seed = seed
        return [None] * self.num_envs

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)
