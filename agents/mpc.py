"""An honest model-based controller: receding-horizon search on *sampled* futures.

``agents.search``'s greedy and oracle simulate on deep copies of the env, which draw exactly the fading, surrogate
noise and availability the real env will draw next: they know the future. ``MPCPolicy`` plans on copies of the env's
round model (``Dynamics``, the calibrated surrogate) whose random stream is replaced, every round, by ``futures``
streams drawn from the policy's own generator: it knows the present state (what the observation shows and the
orchestrator holds) and the model, never the realised draws. The same sampled futures score every candidate of a
round (common random numbers within the plan). On the engine fidelity it plans with the surrogate while the engine
runs the real rounds: model-based control with a model that is not the world.

A candidate action a is held for up to H = ``lookahead`` rounds and then nobody trains, with the switch-off point
m ≤ H chosen on the mean over the futures (one plan for all futures, not one per future):

    V(a) = max_m mean_f [ r_1 + … + r_m + (rounds left − m) · p_m ]      (future f's rewards r and perplexity term p)

Each round the search starts from the best of last round's plan and the uniform assignments and runs a coordinate
search over the devices' allowed levels with V (``agents.search.coordinate_search``), plays the result and replans.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from agents.policy import action_choices, as_fedpeat
from agents.search import best_of, coordinate_search, uniform_actions


class MPCPolicy:
    """Receding-horizon search on sampled futures (see the module docstring).

    :param lookahead: rounds H a candidate is held in a simulation.
    :param futures: sampled futures per round.
    :param sweeps: coordinate-search passes over the devices per round.
    :param seed: seed of the policy's own generator (its futures).
    """

    def __init__(self, lookahead: int = 3, futures: int = 4, sweeps: int = 1, seed: int = 0) -> None:
        for name, value in (("lookahead", lookahead), ("futures", futures), ("sweeps", sweeps)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.lookahead, self.futures, self.sweeps, self.seed = lookahead, futures, sweeps, seed
        self.rng = np.random.default_rng(seed)
        self._plan: np.ndarray | None = None

    def reset(self, env: gym.Env) -> None:
        self._plan = None

    def value(self, env: gym.Env, action: np.ndarray, streams: Sequence[Mapping[str, Any]]) -> float:
        """V(action) on the futures ``streams`` (PCG64 states)."""
        horizon = as_fedpeat(env).dynamics.reward.horizon
        left = horizon - int(as_fedpeat(env).dynamics.t[0])
        rounds = min(self.lookahead, left)
        totals = np.zeros((len(streams), rounds))
        tails = np.zeros((len(streams), rounds))
        for f, stream in enumerate(streams):
            sim = as_fedpeat(env).dynamics.fork(stream)  # a sampled future: the env's own draws are never read
            total, actions = 0.0, np.ascontiguousarray(action[None, :], dtype=np.int64)
            for m in range(rounds):
                out = sim.step(actions)
                total += float(out.round_["reward"][0])
                totals[f, m] = total
                ended = bool(out.ended[0, 0] or out.ended[1, 0])
                tails[f, m] = 0.0 if ended else (left - m - 1) * float(out.terms["perplexity"][0])
                if ended:  # nothing is paid after the episode's last round: hold the total for the later m
                    totals[f, m + 1:], tails[f, m + 1:] = total, 0.0
                    break
        return float(np.max((totals + tails).mean(axis=0)))

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        streams = [np.random.PCG64(int(s)).state for s in self.rng.integers(0, 2**63, size=self.futures)]

        def score(action: np.ndarray) -> float:
            return self.value(env, action, streams)

        candidates = uniform_actions(env)
        if self._plan is not None:
            allowed, idle = action_choices(env), candidates[0]
            candidates.insert(0, np.array([v if v in ok else i for v, ok, i in zip(self._plan, allowed, idle)]))
        self._plan, _ = coordinate_search(env, best_of(candidates, score), score, self.sweeps)
        return self._plan.copy()
