"""The honest baselines: static rules and the best one by search on validation seeds, and MPC on sampled futures."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest

import fedpeat_env  # noqa: F401
from agents import static
from agents.baselines import FixedPolicy, make_policy
from agents.evaluate import TEST_SEED, VALIDATION_SEED
from agents.mpc import MPCPolicy
from agents.policy import CLAIRVOYANT
from agents.search import simulate, uniform_actions
from agents.static import BestStaticPolicy, StaticPolicy, StaticRule, search_static, static_family


@pytest.fixture
def env(env_kwargs):
    env = gym.make("FedPEAT-v1", **{**env_kwargs, "num_devices": 6, "horizon": 6}).unwrapped
    env.reset(seed=3)
    return env


def _held(rule: StaticRule, env) -> list[int]:
    return list(np.flatnonzero(rule.levels(env.dynamics)[0]))


def test_static_rules_rank_devices_by_what_is_known_at_reset(env):
    d = env.dynamics
    share, fits = d.share[0], d.fits[0]
    holders = np.flatnonzero(fits[:, 1])  # the devices whose memory holds level 1 (the full model)
    top = StaticRule("share", 2, 1).levels(d)[0]
    assert set(np.flatnonzero(top)) <= set(holders) and set(top) <= {0, 1}
    assert set(np.flatnonzero(top)) == set(holders[np.argsort(-share[holders], kind="stable")][:2])
    assert _held(StaticRule("memory", 1, 4), env) == [int(np.lexsort((-share, -d.headroom[0]))[0])]
    assert _held(StaticRule("gain", 1, 4), env) == [int(np.lexsort((-share, -d.gain_db[0]))[0])]
    # coverage: greedily the device that most raises Σ_d w_d·log(1e-3 + held_d)
    w, mix = d.tables.eval_weight, d.mix[0]
    first = max(range(6), key=lambda i: w @ np.log(1e-3 + share[i] * mix[i]))
    assert _held(StaticRule("coverage", 1, 4), env) == [first] and len(_held(StaticRule("coverage", 6, 4), env)) == 6
    with pytest.raises(ValueError, match="order must be one of"):
        StaticRule("luck", 1, 1)


def test_the_family_holds_fixed_k_and_the_largest_share_rule(env):
    family = static_family(6, 4)
    assert len(family) == 4 * 5 * 4 + 4 and len(set(family)) == len(family)
    every = StaticPolicy(StaticRule("share", 6, 2))
    fixed = FixedPolicy(2)
    every.reset(env)
    fixed.reset(env)
    for _ in range(4):  # every device at level 2 whenever it is allowed: fixed-2, round by round
        action = fixed.act(None, env)
        np.testing.assert_array_equal(every.act(None, env), action)
        env.step(action)


def test_the_batched_search_scores_a_rule_as_its_episodes_do(env_kwargs):
    from agents.evaluate import evaluate

    rule = StaticRule("coverage", 2, 1)
    returns = static.rule_returns([rule], env_kwargs, episodes=1, seed=5)[0]
    # one episode of the batched env is the single env's episode of the same seed (FedPEATVectorEnv(1) == FedPEAT-v1)
    single = evaluate(StaticPolicy(rule), env_kwargs=env_kwargs, seeds=[5])
    assert returns[0] == pytest.approx(single["return"].iloc[0])


def test_best_static_searches_validation_seeds_only(env_kwargs, monkeypatch):
    from fedpeat_env.vector import FedPEATVectorEnv

    seen = []
    reset = FedPEATVectorEnv.reset

    def recording(self, *, seed=None, options=None):
        seen.append(seed)
        return reset(self, seed=seed, options=options)

    monkeypatch.setattr(FedPEATVectorEnv, "reset", recording)
    best, table = search_static(env_kwargs, episodes=16)
    assert set(seen) == {VALIDATION_SEED} and not set(seen) & set(range(TEST_SEED, TEST_SEED + 10_000))
    assert len(table) == len(static_family(3, 4)) and table["return"].is_monotonic_decreasing
    assert best == StaticRule(table.loc[0, "order"], int(table.loc[0, "k"]), int(table.loc[0, "level"]))
    # the named baseline plays the rule its own search found, searched once per scenario and process
    static._SEARCHED.clear()
    policy = make_policy("best-static", episodes=16)
    assert isinstance(policy, BestStaticPolicy)
    env = gym.make("FedPEAT-v1", **env_kwargs).unwrapped
    env.reset(seed=TEST_SEED)
    before = len(seen)
    policy.reset(env)
    assert policy.rule == best and len(seen) > before
    searched = len(seen)
    env.reset(seed=TEST_SEED + 1)
    policy.reset(env)
    assert len(seen) == searched  # no second search
    played = StaticPolicy(best)
    played.reset(env)
    np.testing.assert_array_equal(policy.act(None, env), played.act(None, env))


def _with_other_future(env, seed: int):
    """A copy of ``env`` in the same state whose random stream (the coming fading, noise, availability) differs."""
    other = copy.deepcopy(env)
    other.dynamics.rng.bit_generator.state = np.random.PCG64(seed).state
    return other


def test_mpc_never_reads_the_realised_future_and_greedy_does(env):
    streams = [np.random.PCG64(s).state for s in (1, 2)]
    for t in range(5):
        other = _with_other_future(env, 100 + t)
        a, b = MPCPolicy(seed=7), MPCPolicy(seed=7)
        a.reset(env)
        b.reset(other)
        action = a.act(None, env)
        np.testing.assert_array_equal(action, b.act(None, other))  # the present is all it uses
        probe = uniform_actions(env)[-1]  # every allowed device at the last level: a round whose outcome is random
        assert a.value(env, probe, streams) == b.value(other, probe, streams)
        # the same check catches a search that reads the future: greedy's simulation is the realised round
        assert simulate(env, probe, 1) != simulate(other, probe, 1)
        env.step(action)
    assert set(CLAIRVOYANT) == {"greedy", "oracle"}
    with pytest.raises(ValueError, match="futures must be >= 1"):
        MPCPolicy(futures=0)


def test_mpc_plans_on_the_engine_with_the_surrogate(env_kwargs):
    engine = gym.make("FedPEAT-Engine-v1", **{**env_kwargs, "num_devices": 2, "horizon": 2, "engine_local_steps": 1})
    obs, _ = engine.reset(seed=0)
    policy = MPCPolicy(lookahead=2, futures=2)
    policy.reset(engine.unwrapped)
    action = policy.act(obs, engine.unwrapped)
    assert engine.action_space.contains(action)
    engine.step(action)  # a real round of what the model-based plan chose
    engine.close()
