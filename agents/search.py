"""Search baselines that look ahead on deep copies of the env: greedy (one round) and the clairvoyant oracle.

A copy of the env's round model that continues its random stream (``Dynamics.fork()``, what ``copy.deepcopy`` of the
env would give, cheaper) draws exactly the fading, surrogate noise and availability the real env will draw next (the
draws do not depend on the action). Simulating an action on such a copy therefore shows its true outcome: both
baselines know the coming round's channel, the oracle also the next ``lookahead`` rounds': they are clairvoyant, upper
bounds rather than controllers (``agents.mpc.MPCPolicy`` is the honest planner). They only make sense for the
surrogate fidelity.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from agents.policy import action_choices, as_fedpeat, level_entries

Score = Callable[[np.ndarray], float]


def rollout(env: gym.Env, action: np.ndarray, rounds: int) -> tuple[list[float], list[float], bool]:
    """Hold ``action`` for up to ``rounds`` rounds on a copy of ``env``'s round model that continues its realised
    random stream (``Dynamics.fork``: what a deep copy of the env would draw): (rewards, perplexity terms, whether
    the episode ended)."""
    sim = as_fedpeat(env).dynamics.fork()
    actions = np.ascontiguousarray(np.asarray(action, dtype=np.int64)[None, :])
    rewards, gaps = [], []
    for _ in range(rounds):
        out = sim.step(actions)
        rewards.append(float(out.round_["reward"][0]))
        gaps.append(float(out.terms["perplexity"][0]))
        if out.ended[0, 0] or out.ended[1, 0]:
            return rewards, gaps, True
    return rewards, gaps, False


def simulate(env: gym.Env, action: np.ndarray, rounds: int) -> float:
    """Return of holding ``action`` for up to ``rounds`` rounds on a deep copy of ``env`` (stops at episode end)."""
    return sum(rollout(env, action, rounds)[0])


def coordinate_search(env: gym.Env, start: np.ndarray, score: Score, sweeps: int) -> tuple[np.ndarray, float]:
    """Improve ``start`` one action entry at a time: each entry takes its best allowed value given the others,
    judged by ``score``; up to ``sweeps`` passes over the entries (stops early when a pass changes nothing). Rank
    entries of unselected devices are skipped. Returns (plan, its score); at most sweeps × Σ_i |allowed values of
    entry i| calls of ``score``."""
    choices, n_levels = action_choices(env), level_entries(env)
    plan = np.asarray(start, dtype=np.int64).copy()
    best = score(plan)
    for _ in range(sweeps):
        improved = False
        for i, values in enumerate(choices):
            if i >= n_levels and plan[i - n_levels] == 0:
                continue
            for value in values:
                if value == plan[i]:
                    continue
                candidate = plan.copy()
                candidate[i] = value
                value_score = score(candidate)
                if value_score > best + 1e-12:
                    plan, best, improved = candidate, value_score, True
        if not improved:
            break
    return plan, best


def idle_action(env: gym.Env) -> np.ndarray:
    """No device selected (rank entries, if any, at the largest allowed rank)."""
    choices, n_levels = action_choices(env), level_entries(env)
    return np.array([0 if i < n_levels else values[-1] for i, values in enumerate(choices)], dtype=np.int64)


def uniform_actions(env: gym.Env) -> list[np.ndarray]:
    """For each level k = 0..K: every device whose memory holds k at level k, the others idle."""
    choices, n_levels = action_choices(env), level_entries(env)
    actions = []
    for level in range(int(as_fedpeat(env).action_space.nvec[0])):
        action = idle_action(env)
        action[:n_levels] = [level if level in choices[i] else 0 for i in range(n_levels)]
        actions.append(action)
    return actions


def best_of(candidates: list[np.ndarray], score: Score) -> np.ndarray:
    """The candidate with the highest score (the first one on ties)."""
    return candidates[int(np.argmax([score(c) for c in candidates]))]


def _require_surrogate(env: gym.Env, name: str) -> None:
    fidelity = getattr(getattr(env, "config", None), "fidelity", "surrogate")
    if fidelity != "surrogate":
        raise ValueError(f"{name} needs fidelity 'surrogate' (it deep-copies the env), got fidelity={fidelity!r}")


class GreedyPolicy:
    """Best immediate reward: each round, coordinate search over each device's allowed levels, scoring a candidate
    by the reward of that one round (simulated on a deep copy, so with the round's realised channel). The search
    starts from the best uniform assignment ("every device that fits at level k", k = 0..K: k = 0 is nobody), not
    from nobody alone: the memory term is a mean over the selected devices, so adding a first device can cost more
    than it brings while adding several pays. Cost per round: ≤ K + 1 + sweeps × Σ_i |allowed levels of i| steps.

    :param sweeps: passes over the devices per round.
    """

    def __init__(self, sweeps: int = 2) -> None:
        if sweeps < 1:
            raise ValueError(f"sweeps must be >= 1, got {sweeps}")
        self.sweeps = sweeps

    def reset(self, env: gym.Env) -> None:
        _require_surrogate(env, "GreedyPolicy")

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        def score(action: np.ndarray) -> float:
            return simulate(env, action, 1)

        return coordinate_search(env, best_of(uniform_actions(env), score), score, self.sweeps)[0]


class OraclePolicy:
    """Clairvoyant receding-horizon search: deep copies of the env know the future channel and perplexity noise.

    A candidate action a is scored on a copy by holding it for up to H = ``lookahead`` rounds and then idling to
    the end of the episode, with the best switch-off point m ≤ H:

        V(a) = max_m [ r_1 + … + r_m + (rounds left − m) · p_m ]

    where p_m is the perplexity term after round m: an idle round (nobody selected) leaves the perplexity and so
    pays exactly p_m, and idling is always feasible, so V is the return of a real plan. Each round the search
    starts from the best of last round's action and the uniform assignments (see ``GreedyPolicy``), runs a
    coordinate search with V, applies the result and replans next round. It is a strong heuristic, not an exact
    optimum. Cost per round: ≤ (K + 2 + sweeps × Σ_i |allowed levels of i|) × H env steps and deep copies — with
    N = 10, K = 4, H = 5, sweeps = 2 at most 530 steps (≈ 0.2 s on one CPU core, ≈ 1–4 s per 20-round episode).

    :param lookahead: rounds H an action is held in a simulation.
    :param sweeps: passes over the devices per round.
    """

    def __init__(self, lookahead: int = 5, sweeps: int = 2) -> None:
        if lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {lookahead}")
        if sweeps < 1:
            raise ValueError(f"sweeps must be >= 1, got {sweeps}")
        self.lookahead, self.sweeps = lookahead, sweeps
        self._plan: np.ndarray | None = None
        self._round = 0

    def reset(self, env: gym.Env) -> None:
        _require_surrogate(env, "OraclePolicy")
        self._plan, self._round = None, 0

    def value(self, env: gym.Env, action: np.ndarray) -> float:
        """V(action): hold it for m ≤ lookahead rounds, then idle to the end; the best m."""
        rewards, gaps, ended = rollout(env, action, self.lookahead)
        left = as_fedpeat(env).config.horizon - self._round
        tails = (left - np.arange(1, len(rewards) + 1)) * np.asarray(gaps)
        if ended:
            tails[-1] = 0.0  # nothing is paid after the episode's last round
        return float(np.max(np.cumsum(rewards) + tails))

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        def score(action: np.ndarray) -> float:
            return self.value(env, action)

        candidates = uniform_actions(env)
        if self._plan is not None:
            allowed, idle = action_choices(env), candidates[0]
            candidates.insert(0, np.array([v if v in ok else i for v, ok, i in zip(self._plan, allowed, idle)]))
        self._plan, _ = coordinate_search(env, best_of(candidates, score), score, self.sweeps)
        self._round += 1
        return self._plan.copy()
