"""The multi-agent face of FedPEAT-v1: a PettingZoo ``ParallelEnv`` with one agent per device.

``fedpeat_env.parallel_env(**options)`` (``options``: the env options of ``gymnasium.make("FedPEAT-v1", ...)``) runs
the same single-agent ``FedPEATEnv`` underneath, so a joint action of the agents is exactly the single-agent env's
action and both faces meet the same episodes on the same seeds.

| | per agent ``device_i`` (i = 0..N−1) |
|---|---|
| observation | ``Box`` float32 of ``DEVICE_FEATURES + ROUND_FEATURES`` = 10 + 5 entries: entries 0..9 are device i's features (the block Fi..Fi+9 of ``FedPEATEnv``'s observation: gain, memory headroom, ε held, exchanges / T, participations / T, data share × n, available, domain shares), entries 10..14 the round features (FN..FN+4: perplexity progress, round / T, progress per domain) |
| action | ``Discrete(K+1)``: 0 = not selected, k = train through the emulator with ε = compression_levels[k−1]; with ``control_rank`` ``MultiDiscrete([K+1, R])``: level, then LoRA rank index |
| reward | the round's reward, shared: every agent gets the single-agent env's reward (a cooperative game; the devices share the model's progress and the round's costs and penalties) |
| termination / truncation | the episode's, for every agent at once; then ``agents`` is empty until ``reset`` |
| info | ``action_mask`` (bool: the levels, then with ``control_rank`` the ranks, that device i may choose now), and under ``"round"`` the single-agent env's info (reward terms and round numbers) |

``state()`` is the single-agent observation (all devices and the round; ``state_space``), for centralised critics.
Every slot is an agent, also the empty slots of an episode with fewer devices (``episode_devices``; their mask allows
only 0). Rendering (``render_mode`` "ansi" or "rgb_array") is the single-agent env's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from fedpeat_env.dynamics import DEVICE_FEATURES, ROUND_FEATURES
from fedpeat_env.env import FedPEATEnv


class FedPEATParallelEnv(ParallelEnv):
    """FedPEAT-v1 with one agent per device (see the module docstring for the spaces and the reward)."""

    metadata = {"name": "fedpeat_v1", "render_modes": ["ansi", "rgb_array"], "render_fps": 2, "is_parallelizable": True}

    def __init__(self, render_mode: str | None = None, **options: Any) -> None:
        self.env = FedPEATEnv(render_mode=render_mode, **options)
        self.render_mode = render_mode
        config = self.env.config
        self.num_devices = n = config.num_devices
        self.possible_agents = [f"device_{i}" for i in range(n)]
        self._index = {agent: i for i, agent in enumerate(self.possible_agents)}
        self.agents: list[str] = []
        nvec = self.env.action_space.nvec
        self._levels = int(nvec[0])
        self._ranks = int(nvec[n]) if len(nvec) > n else 0
        low, high = self.env.observation_space.low, self.env.observation_space.high
        lows, highs = agent_observations(low, n), agent_observations(high, n)
        self._obs_spaces = {agent: spaces.Box(lows[i], highs[i], dtype=np.float32)
                            for i, agent in enumerate(self.possible_agents)}
        action = spaces.Discrete(self._levels) if not self._ranks else spaces.MultiDiscrete([self._levels, self._ranks])
        self._action_spaces = {agent: action if i == 0 else _copy(action) for i, agent in enumerate(self.possible_agents)}
        self.state_space = self.env.observation_space
        self._obs = np.zeros(self.env.observation_space.shape, dtype=np.float32)

    # --- PettingZoo API ------------------------------------------------------------------------------
    def observation_space(self, agent: str) -> spaces.Box:
        return self._obs_spaces[agent]  # the same object at every call (PettingZoo's API test checks it)

    def action_space(self, agent: str) -> spaces.Space:
        return self._action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self._obs, info = self.env.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        return self._observations(), self._infos(info)

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.agents:
            raise RuntimeError("call reset() before step() (and after an episode ends)")
        missing = sorted(set(self.agents) - set(actions), key=self._index.__getitem__)
        if missing:
            raise ValueError(f"actions must give every live agent an action; missing {missing}")
        self._obs, reward, terminated, truncated, info = self.env.step(self.joint_action(actions))
        agents = self.agents
        observations, infos = self._observations(), self._infos(info)
        rewards = dict.fromkeys(agents, reward)
        terminations, truncations = dict.fromkeys(agents, terminated), dict.fromkeys(agents, truncated)
        if terminated or truncated:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """The single-agent observation of the round (every device, then the round features)."""
        return self._obs.copy()

    def render(self) -> str | np.ndarray | None:
        return self.env.render()

    def close(self) -> None:
        self.env.close()

    # --- helpers -------------------------------------------------------------------------------------
    def joint_action(self, actions: dict[str, Any]) -> np.ndarray:
        """The single-agent env's action (N levels, then N ranks with ``control_rank``) from the agents' actions
        (agents without one: level 0, the first rank)."""
        n = self.num_devices
        joint = np.zeros(n * (2 if self._ranks else 1), dtype=np.int64)
        for agent, action in actions.items():
            if agent not in self._index:
                raise ValueError(f"unknown agent {agent!r}; the agents are device_0 … device_{n - 1}")
            i = self._index[agent]
            parts = np.asarray(action, dtype=np.int64).reshape(-1)
            if parts.shape != ((2,) if self._ranks else (1,)):
                raise ValueError(f"action of {agent} must be in {self.action_space(agent)}, got {action!r}")
            joint[i] = parts[0]
            if self._ranks:
                joint[n + i] = parts[1]
        return joint

    def _observations(self) -> dict[str, np.ndarray]:
        per_agent = agent_observations(self._obs, self.num_devices)
        return {agent: per_agent[self._index[agent]] for agent in self.agents}

    def _infos(self, info: dict) -> dict[str, dict]:
        n, masks = self.num_devices, self.env.action_masks()
        levels = masks[: n * self._levels].reshape(n, self._levels)
        ranks = masks[n * self._levels:].reshape(n, self._ranks) if self._ranks else None
        return {agent: {"action_mask": levels[i] if ranks is None else np.concatenate([levels[i], ranks[i]]),
                        "round": info}
                for agent, i in ((a, self._index[a]) for a in self.agents)}


def agent_observations(obs: np.ndarray, num_devices: int) -> np.ndarray:
    """(N, DEVICE_FEATURES + ROUND_FEATURES) float32: each device's observation (its features, then the round's) from a
    single-agent observation of ``num_devices`` devices."""
    n = num_devices
    devices = np.asarray(obs, dtype=np.float32)[: DEVICE_FEATURES * n].reshape(n, DEVICE_FEATURES)
    round_features = np.asarray(obs, dtype=np.float32)[DEVICE_FEATURES * n: DEVICE_FEATURES * n + ROUND_FEATURES]
    return np.concatenate([devices, np.broadcast_to(round_features, (n, ROUND_FEATURES))], axis=1)


def stacked_joint_action(agent_actions: np.ndarray) -> np.ndarray:
    """The single-agent action from every agent's action in device order: (N,) levels as they are; (N, 2) level and
    rank index (``control_rank``) as the N levels, then the N ranks."""
    return np.asarray(agent_actions, dtype=np.int64).T.reshape(-1)


def _copy(space: spaces.Discrete | spaces.MultiDiscrete) -> spaces.Discrete | spaces.MultiDiscrete:
    """An equal, separate space object (each agent samples from its own generator)."""
    return spaces.Discrete(space.n) if isinstance(space, spaces.Discrete) else spaces.MultiDiscrete(space.nvec)
