"""Non-learning baselines (fixed level, random, UCB bandit) and the ``make_policy`` registry of every baseline.

| name | policy |
|------|--------|
| ``fixed-k`` | every device at level k every round ("FedPEAT without adaptive control"; ``fixed-0``: nobody) |
| ``full-model`` | every device trains the full model (the level with ε = 0): the Fed-FT-like baseline |
| ``random`` | uniform over the unmasked actions |
| ``best-static`` | the best static rule (devices by share, memory, gain or coverage × one level), found by search on
  validation episodes (``agents.static.BestStaticPolicy``) |
| ``mpc`` | receding-horizon search on sampled futures, never the realised ones (``agents.mpc.MPCPolicy``) |
| ``greedy`` | clairvoyant: best immediate reward, simulated with the round's realised draws (``agents.search``) |
| ``oracle`` | clairvoyant receding-horizon search, knowing the realised future (``agents.search.OraclePolicy``) |
| ``ucb`` | UCB1 bandit per device over its levels (DropPEFT-style adaptive baseline) |
| ``largest-k`` / ``smallest-k`` | the k devices of largest / smallest data share held for the whole episode, each at its
  least compressed level that fits, whenever it is available |
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from agents.mpc import MPCPolicy
from agents.policy import Policy, action_choices, as_fedpeat, level_entries
from agents.search import GreedyPolicy, OraclePolicy
from agents.static import BestStaticPolicy

Infeasible = Literal["skip", "compress", "select"]
POLICY_NAMES = ("fixed-k", "full-model", "random", "best-static", "mpc", "greedy", "oracle", "ucb", "largest-k",
                "smallest-k")



class FixedPolicy:
    """Every device at level ``level`` every round (rank entries, if any, at the largest rank): no adaptive control,
    but the protocol's own rule that only devices that are available (and whose memory holds the level) are asked,
    read from the action masks each round.

    :param level: action level k (0: nobody selected); None: the level whose ε is 0 (the full model).
    :param infeasible: devices that cannot take the level this round (their memory cannot hold it, or they are away)
        — ``skip``: they sit out; ``compress``: they take the next more compressed level that is allowed (or sit out);
        ``select``: they are selected anyway (the env drops them and charges the memory or availability penalty).
    """

    def __init__(self, level: int | None, infeasible: Infeasible = "skip") -> None:
        if level is not None and level < 0:
            raise ValueError(f"level must be >= 0 or None, got {level}")
        if infeasible not in ("skip", "compress", "select"):
            raise ValueError(f"infeasible must be 'skip', 'compress' or 'select', got {infeasible!r}")
        self.level, self.infeasible = level, infeasible
        self._level: int | None = None

    def reset(self, env: gym.Env) -> None:
        level = self.level if self.level is not None else _full_model_level(env)
        num_levels = int(as_fedpeat(env).action_space.nvec[0]) - 1
        if level > num_levels:
            raise ValueError(f"level must be in 0..{num_levels} for this env, got {level}")
        self._level = level

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        if self._level is None:
            raise RuntimeError("call reset(env) before act()")
        choices, n, level = action_choices(env), level_entries(env), self._level
        action = [values[-1] for values in choices]  # rank entries: largest rank
        for i in range(n):
            allowed = choices[i]
            if level in allowed or self.infeasible == "select":
                action[i] = level
            elif self.infeasible == "compress" and np.any(allowed > level):
                action[i] = int(allowed[allowed > level][0])
            else:
                action[i] = 0
        return np.array(action, dtype=np.int64)


class HeldPolicy:
    """The same k devices every round, chosen at reset by data share (the episode's drawn data): each trains at the
    least compressed level its memory holds, in every round it is available (else it sits out); rank entries, if
    any, at the largest rank. With ``largest`` the static rule "train the devices with the most data" (k = 1: the one
    device with the most data), else the smallest-share devices (where the data is reused most).

    :param k: devices held (all of them if fewer).
    :param largest: hold the largest-share devices (else the smallest).
    """

    def __init__(self, k: int, largest: bool = True) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.largest = k, largest
        self._levels: np.ndarray | None = None

    def reset(self, env: gym.Env) -> None:
        n = level_entries(env)
        share = np.asarray(as_fedpeat(env).dynamics.share[0], dtype=float)
        order = np.argsort(-share if self.largest else share, kind="stable")
        fits = as_fedpeat(env).dynamics.fits[0]  # (N, K+1): level k fits the device's memory
        self._levels = np.zeros(n, dtype=np.int64)
        for i in order[: self.k]:
            fitting = np.flatnonzero(fits[i, 1:]) + 1
            self._levels[i] = fitting[0] if len(fitting) else 0
        self._ranks = np.array([values[-1] for values in action_choices(env)[n:]], dtype=np.int64)

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        if self._levels is None:
            raise RuntimeError("call reset(env) before act()")
        available = np.asarray(as_fedpeat(env).dynamics.available[0], dtype=bool)
        return np.concatenate([np.where(available, self._levels, 0), self._ranks])


def _full_model_level(env: gym.Env) -> int:
    levels = list(getattr(as_fedpeat(env).config, "compression_levels", ()))
    if 0.0 not in levels:
        raise ValueError(f"full-model needs compression_levels to contain 0.0, got {tuple(levels)}")
    return levels.index(0.0) + 1


class RandomPolicy:
    """Each action entry uniform over its unmasked values (so uniform over the unmasked actions).

    :param seed: seed of the policy's own generator (independent of the env's).
    """

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self, env: gym.Env) -> None:
        pass

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        return np.array([self.rng.choice(values) for values in action_choices(env)], dtype=np.int64)


class UCBPolicy:
    """UCB1 bandit per device over the levels 1..K its memory holds (devices that fit none sit out, and a device sits
    out the rounds it is unavailable), learning within an episode like DropPEFT's per-device exploration–exploitation.
    Each round every selected device's pulled level is credited the round's reward split equally among the selected
    devices; a device picks the level maximising

        mean credit + c · spread · sqrt(ln t / n)

    (t: round, n: pulls of that level, spread: range of all credits so far, which makes c scale-free; unpulled
    levels first). Rank entries, if any, stay at the largest rank. Like DropPEFT it ignores switching costs: trying
    each level once and every later switch download a new emulator, so larger c pays more exchanges.

    :param c: exploration weight.
    """

    def __init__(self, c: float = 0.1) -> None:
        if not c >= 0:
            raise ValueError(f"c must be >= 0, got {c}")
        self.c = c

    def reset(self, env: gym.Env) -> None:
        choices, n = action_choices(env), level_entries(env)
        width = int(as_fedpeat(env).action_space.nvec[0])
        fits = as_fedpeat(env).dynamics.fits[0]  # (N, K+1): the levels each device's memory holds, whether it is away or not
        self.arms = [np.flatnonzero(fits[i, 1:]) + 1 for i in range(n)]
        self.pulls, self.totals = np.zeros((n, width)), np.zeros((n, width))
        self.ranks = np.array([values[-1] for values in choices[n:]], dtype=np.int64)
        self.t, self.low, self.high = 0, np.inf, -np.inf
        self._last: np.ndarray | None = None

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        self.t += 1
        spread = self.high - self.low if self.high > self.low else 1.0
        levels = np.zeros(len(self.arms), dtype=np.int64)
        for i, arms in enumerate(self.arms):
            if len(arms) == 0:
                continue
            n = self.pulls[i, arms]
            if np.any(n == 0):
                levels[i] = arms[np.flatnonzero(n == 0)[0]]
                continue
            score = self.totals[i, arms] / n + self.c * spread * np.sqrt(np.log(self.t) / n)
            levels[i] = arms[int(np.argmax(score))]
        allowed = action_choices(env)
        levels = np.array([k if k in allowed[i] else 0 for i, k in enumerate(levels)], dtype=np.int64)  # away: sit out
        self._last = levels
        return np.concatenate([levels, self.ranks])

    def observe(self, reward: float, info: dict) -> None:
        """Credit the last round's reward to the pulled levels (called by ``evaluate`` after each step)."""
        if self._last is None or not np.any(self._last > 0):
            return
        selected = np.flatnonzero(self._last > 0)
        credit = float(reward) / len(selected)
        self.pulls[selected, self._last[selected]] += 1
        self.totals[selected, self._last[selected]] += credit
        self.low, self.high = min(self.low, credit), max(self.high, credit)


def make_policy(name: str, **kwargs: Any) -> Policy:
    """A baseline by name (see the module table); ``kwargs`` go to its constructor."""
    match = re.fullmatch(r"fixed-(\d+)", name)
    if match:
        return FixedPolicy(int(match.group(1)), **kwargs)
    match = re.fullmatch(r"(largest|smallest)-([1-9]\d*)", name)
    if match:
        return HeldPolicy(int(match.group(2)), largest=match.group(1) == "largest", **kwargs)
    factories: dict[str, Callable[..., Policy]] = {
        "full-model": lambda **kw: FixedPolicy(None, **kw), "random": RandomPolicy, "greedy": GreedyPolicy,
        "oracle": OraclePolicy, "ucb": UCBPolicy, "best-static": BestStaticPolicy, "mpc": MPCPolicy}
    if name not in factories:
        raise ValueError(f"policy name must be one of {POLICY_NAMES} (fixed-k with k = 0..K, largest-k and smallest-k "
                         f"with k >= 1), got {name!r}")
    return factories[name](**kwargs)
