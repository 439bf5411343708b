"""Static policies and the best one found by search: a rule fixed at reset, held for the whole episode.

A static rule ranks the devices once, at reset, by what the orchestrator knows of them then, keeps the top ``k`` of
those whose memory holds ``level``, and trains them at that level in every round they are available (the others sit
out). The family (``STATIC_ORDERS`` × k = 1..N × level 1..K) contains "every device at level k" (``fixed-k``: k = N)
and "the device with the most data that can hold ε = 0, alone" (order "share", k = 1, level 1).

``best-static`` (``BestStaticPolicy``) evaluates every rule of the family on validation episodes (the batched
surrogate reset with ``VALIDATION_SEED``, never the benchmark's test seeds) and plays the best one: the strongest
policy without adaptation, the baseline an adaptive controller has to beat.

| order | devices ranked by (at reset) |
|---|---|
| ``share`` | data share, largest first |
| ``memory`` | memory headroom, largest first (ties: data share) |
| ``gain`` | channel gain of the last round, strongest first (ties: data share) |
| ``coverage`` | greedily, the device that most raises Σ_d w_d · log(10⁻³ + data held in domain d) of the chosen set (w_d: the
  domain's share of the evaluation) |
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import pandas as pd

from agents.evaluate import VALIDATION_SEED
from agents.policy import action_choices, as_fedpeat, level_entries

STATIC_ORDERS: tuple[str, ...] = ("share", "memory", "gain", "coverage")
SEARCH_EPISODES = 500
"""Validation episodes each rule of the family is scored on (the batched surrogate reset with ``VALIDATION_SEED``;
the same episodes for every rule)."""


@dataclass(frozen=True)
class StaticRule:
    """Hold the top ``k`` devices by ``order`` among those whose memory holds ``level``, at that level."""

    order: str
    k: int
    level: int

    def __post_init__(self) -> None:
        if self.order not in STATIC_ORDERS:
            raise ValueError(f"order must be one of {STATIC_ORDERS}, got {self.order!r}")
        if self.k < 1 or self.level < 1:
            raise ValueError(f"k and level must be >= 1, got k={self.k}, level={self.level}")

    @property
    def name(self) -> str:
        return f"{self.order}-top{self.k}@{self.level}"

    def levels(self, dynamics) -> np.ndarray:
        """(B, N) int64: the level of each device of each episode of a ``fedpeat_env.dynamics.Dynamics`` (this rule's
        level for its held devices, 0 for the others), from what its episodes show at reset."""
        s = dynamics.state
        out = np.zeros(s.share.shape, dtype=np.int64)
        if self.level >= s.fits.shape[2]:
            return out
        for b in range(s.share.shape[0]):
            out[b, self._held(s, b, dynamics.tables.eval_weight)] = self.level
        return out

    def _held(self, s, b: int, eval_weight: np.ndarray) -> np.ndarray:
        fits = np.flatnonzero(s.fits[b, :, self.level])
        share = s.share[b]
        if self.order == "coverage":
            return _coverage_order(fits, share, s.mix[b], eval_weight)[: self.k]
        key = {"share": share, "memory": s.headroom[b], "gain": s.gain_db[b]}[self.order]
        return fits[np.lexsort((-share[fits], -key[fits]))][: self.k]  # by the key, then by data share


def _coverage_order(candidates: np.ndarray, share: np.ndarray, mix: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``candidates`` in greedy order of the gain in Σ_d w_d · log(10⁻³ + data held in domain d) (ties: data share)."""
    held, chosen, left = np.zeros(mix.shape[1]), [], list(candidates)
    while left:
        gains = [weight @ np.log(1e-3 + held + share[i] * mix[i]) + 1e-9 * share[i] for i in left]
        best = left.pop(int(np.argmax(gains)))
        held += share[best] * mix[best]
        chosen.append(best)
    return np.asarray(chosen, dtype=int)


def allowed_levels(levels: np.ndarray, masks: np.ndarray, num_levels: int) -> np.ndarray:
    """``levels`` (B, N) where the action masks (B, mask length) allow them this round, else 0 (away or too small)."""
    batch, n = levels.shape
    level_masks = masks[:, : n * num_levels].reshape(batch, n, num_levels)
    return np.where(np.take_along_axis(level_masks, levels[..., None], axis=2)[..., 0], levels, 0)


class StaticPolicy:
    """Plays one ``StaticRule``: its devices, chosen at reset, at its level whenever the mask allows it (else 0)."""

    def __init__(self, rule: StaticRule) -> None:
        self.rule = rule
        self._levels: np.ndarray | None = None

    def reset(self, env: gym.Env) -> None:
        n = level_entries(env)
        width = int(as_fedpeat(env).action_space.nvec[0])
        if self.rule.level >= width:
            raise ValueError(f"level must be in 1..{width - 1} for this env, got {self.rule.level}")
        self._levels = self.rule.levels(as_fedpeat(env).dynamics)[0][:n]
        self._ranks = np.array([values[-1] for values in action_choices(env)[n:]], dtype=np.int64)

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        if self._levels is None:
            raise RuntimeError("call reset(env) before act()")
        masks = np.asarray(as_fedpeat(env).action_masks())[None, :]
        levels = allowed_levels(self._levels[None, :], masks, int(as_fedpeat(env).action_space.nvec[0]))[0]
        return np.concatenate([levels, self._ranks])


def static_family(num_devices: int, num_levels: int, orders: Sequence[str] = STATIC_ORDERS) -> list[StaticRule]:
    """Every rule: each order × k = 1..N × level 1..K (k = N: the same for every order, kept once)."""
    rules = [StaticRule(o, k, level) for level in range(1, num_levels + 1) for k in range(1, num_devices)
             for o in orders]
    return rules + [StaticRule(orders[0], num_devices, level) for level in range(1, num_levels + 1)]


def rule_returns(rules: Sequence[StaticRule], env_kwargs: dict, episodes: int, seed: int = VALIDATION_SEED) -> np.ndarray:
    """(len(rules), episodes) returns of each rule on the same ``episodes`` episodes, played all at once in the
    batched surrogate (``FedPEATVectorEnv``, reset with ``seed``): common random numbers across the rules."""
    from fedpeat_env.vector import FedPEATVectorEnv

    vec = FedPEATVectorEnv(episodes, **{k: v for k, v in env_kwargs.items() if k != "fidelity"})
    n, width = vec.dynamics.N, int(vec.single_action_space.nvec[0])
    ranks = np.broadcast_to(vec.single_action_space.nvec[n:] - 1, (episodes, len(vec.single_action_space.nvec) - n))
    out = np.zeros((len(rules), episodes))
    for r, rule in enumerate(rules):
        vec.reset(seed=seed)
        levels, live = rule.levels(vec.dynamics), np.ones(episodes, dtype=bool)
        for _ in range(vec.dynamics.config.horizon):  # every episode ends by the horizon
            actions = np.concatenate([allowed_levels(levels, vec.action_masks(), width), ranks], axis=1)
            _, result, terminated, truncated, _ = vec.step_result(actions)
            out[r] += np.where(live, result.round_["reward"], 0.0)
            live &= ~(terminated | truncated)
    return out


def search_static(env_kwargs: dict, episodes: int = SEARCH_EPISODES, orders: Sequence[str] = STATIC_ORDERS,
                  say: Callable[[str], None] | None = None) -> tuple[StaticRule, pd.DataFrame]:
    """Score every rule of the family on ``episodes`` validation episodes (``VALIDATION_SEED``, the same episodes for
    every rule) by mean return; returns (the best rule, one row per rule: its mean return, best first)."""
    from fedpeat_env import EnvConfig

    config = EnvConfig.from_kwargs(**env_kwargs)
    rules = static_family(config.num_devices, len(config.compression_levels), orders)
    returns = rule_returns(rules, env_kwargs, episodes).mean(axis=1)
    table = pd.DataFrame([{"rule": rule.name, **asdict(rule), "return": float(value)}
                          for rule, value in zip(rules, returns)])
    table = table.sort_values("return", ascending=False, kind="stable").reset_index(drop=True)
    best = StaticRule(table.loc[0, "order"], int(table.loc[0, "k"]), int(table.loc[0, "level"]))
    if say is not None:
        say(f"best static rule on {episodes} validation episodes: {best.name} ({table.loc[0, 'return']:.3f})")
    return best, table


_SEARCHED: dict[str, StaticRule] = {}
"""Rules found in this process, by env options (a search per scenario and process)."""


class BestStaticPolicy:
    """The best ``StaticRule`` of the family for the env's scenario, found by ``search_static`` on validation episodes
    the first time it meets a scenario (then kept for this process), and played like ``StaticPolicy``.

    :param episodes: validation episodes of the search.
    """

    def __init__(self, episodes: int = SEARCH_EPISODES) -> None:
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        self.episodes = episodes
        self.rule: StaticRule | None = None
        self._policy: StaticPolicy | None = None

    def reset(self, env: gym.Env) -> None:
        options = asdict(as_fedpeat(env).config)
        kwargs = {k: v for k, v in options.items() if k not in ("fidelity", "executor", "ray_address")}
        key = json.dumps([kwargs, self.episodes], sort_keys=True, default=str)
        if key not in _SEARCHED:
            _SEARCHED[key] = search_static(kwargs, self.episodes)[0]
        self.rule = _SEARCHED[key]
        self._policy = StaticPolicy(self.rule)
        self._policy.reset(env)

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        if self._policy is None:
            raise RuntimeError("call reset(env) before act()")
        return self._policy.act(obs, env)
