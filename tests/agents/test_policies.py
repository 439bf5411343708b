"""Baselines and the look-ahead searches on a small surrogate env (own calibration file, not the committed one)."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest

import fedpeat_env  # noqa: F401
from agents.baselines import FixedPolicy, RandomPolicy, UCBPolicy, make_policy
from agents.evaluate import evaluate
from agents.policy import Policy, action_choices
from agents.search import GreedyPolicy, OraclePolicy, idle_action, simulate, uniform_actions
from fedpeat_env.env import FedPEATEnv

NAMES = ["fixed-0", "fixed-1", "fixed-2", "fixed-3", "fixed-4", "full-model", "random", "greedy", "oracle", "ucb",
         "best-static", "mpc", "largest-2", "smallest-1"]
KWARGS = {"best-static": {"episodes": 8}, "mpc": {"futures": 2}}
"""Smaller searches than the defaults, for speed."""
SEEDS = range(6)


@pytest.mark.parametrize("control_rank", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_baseline_plays_valid_masked_actions(name, control_rank, env_kwargs):
    env = gym.make("FedPEAT-v1", **env_kwargs, control_rank=control_rank)
    policy = make_policy(name, **KWARGS.get(name, {}))
    assert isinstance(policy, Policy)
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        policy.reset(env.unwrapped)
        done, rounds = False, 0
        while not done:
            action = policy.act(obs, env.unwrapped)
            assert env.action_space.contains(action)
            for value, allowed in zip(action, action_choices(env.unwrapped)):
                assert value in allowed
            obs, reward, terminated, truncated, info = env.step(action)
            getattr(policy, "observe", lambda *a: None)(reward, info)
            assert info["memory_violations"] == 0
            done, rounds = terminated or truncated, rounds + 1
        assert rounds == env_kwargs["horizon"] or terminated


def test_make_policy_and_fixed_validation(env_kwargs):
    with pytest.raises(ValueError, match="policy name"):
        make_policy("sarsa")
    with pytest.raises(ValueError, match="infeasible"):
        FixedPolicy(1, infeasible="drop")
    env = FedPEATEnv(**env_kwargs)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="level must be in 0..4"):
        FixedPolicy(5).reset(env)
    no_full = FedPEATEnv(**env_kwargs, compression_levels=(0.25, 0.5))
    no_full.reset(seed=0)
    with pytest.raises(ValueError, match="compression_levels"):
        FixedPolicy(None).reset(no_full)
    with pytest.raises(ValueError, match="fidelity"):
        OraclePolicy().reset(FedPEATEnv(**env_kwargs, fidelity="engine"))


def test_fixed_infeasible_modes(env_kwargs):
    env = FedPEATEnv(**env_kwargs)
    env.reset(seed=0)
    choices = action_choices(env)
    skip, compress, select = (FixedPolicy(1, mode) for mode in ("skip", "compress", "select"))
    for policy in (skip, compress, select):
        policy.reset(env)
    for i, allowed in enumerate(choices):
        assert select.act(None, env)[i] == 1
        assert skip.act(None, env)[i] == (1 if 1 in allowed else 0)
        assert compress.act(None, env)[i] == (allowed[allowed >= 1][0] if np.any(allowed >= 1) else 0)


def test_deepcopy_reproduces_the_future(env_kwargs):
    env = FedPEATEnv(**env_kwargs)
    env.reset(seed=3)
    env.step(np.array([4, 4, 0]))
    twin = copy.deepcopy(env)
    rng = np.random.default_rng(0)
    for _ in range(4):
        action = np.array([rng.choice(v) for v in action_choices(env)])
        a, b = env.step(action), twin.step(action)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4] and a[4] == b[4]


def test_greedy_is_best_immediate_among_simple_actions(env_kwargs):
    env = FedPEATEnv(**env_kwargs)
    for seed in SEEDS:
        env.reset(seed=seed)
        greedy = GreedyPolicy()
        greedy.reset(env)
        best = simulate(env, greedy.act(None, env), 1)
        assert best >= simulate(env, idle_action(env), 1) - 1e-12
        for level in range(1, 5):
            fixed = FixedPolicy(level)
            fixed.reset(env)
            assert best >= simulate(env, fixed.act(None, env), 1) - 1e-12


def test_oracle_beats_fixed_and_greedy(env_kwargs):
    # The oracle is a receding-horizon heuristic, not an exact optimum, so "≥ every fixed policy" is not a theorem
    # per seed; it holds on these seeds, and we assert it on the mean over seeds (plus a small per-seed slack).
    means, per_seed = {}, {}
    for name in ["fixed-1", "fixed-2", "fixed-3", "fixed-4", "greedy", "oracle"]:
        returns = evaluate(make_policy(name), "FedPEAT-v1", env_kwargs, SEEDS)["return"].to_numpy()
        means[name], per_seed[name] = returns.mean(), returns
    best_fixed = max(means[f"fixed-{k}"] for k in range(1, 5))
    assert means["oracle"] >= best_fixed
    assert means["oracle"] >= means["greedy"]
    best_fixed_per_seed = np.max([per_seed[f"fixed-{k}"] for k in range(1, 5)], axis=0)
    assert np.all(per_seed["oracle"] >= best_fixed_per_seed - 0.1)


def test_random_covers_unmasked_values(env_kwargs):
    env = FedPEATEnv(**env_kwargs)
    env.reset(seed=0)
    policy = RandomPolicy(seed=1)
    actions = np.array([policy.act(None, env) for _ in range(300)])
    for i, allowed in enumerate(action_choices(env)):
        assert set(np.unique(actions[:, i])) == set(allowed)


def test_ucb_tries_every_level_then_credits_rounds(env_kwargs):
    env = FedPEATEnv(**env_kwargs, availability="always")
    env.reset(seed=0)
    policy = UCBPolicy(c=0.0)
    policy.reset(env)
    arms = policy.arms
    rounds = max(len(a) for a in arms)
    for _ in range(rounds):
        _, reward, _, _, info = env.step(policy.act(None, env))
        policy.observe(reward, info)
    for i, a in enumerate(arms):
        assert np.all(policy.pulls[i, a] >= 1) or len(a) == 0
        assert policy.pulls[i].sum() == (rounds if len(a) else 0)
    with pytest.raises(ValueError, match="c must be"):
        UCBPolicy(c=-1.0)


def test_evaluate_uses_common_random_numbers(env_kwargs):
    a = evaluate(make_policy("random", seed=5), "FedPEAT-v1", env_kwargs, [0, 1], episodes_per_seed=2)
    b = evaluate(make_policy("random", seed=5), "FedPEAT-v1", env_kwargs, [0, 1], episodes_per_seed=2)
    assert list(a.columns) == ["seed", "episode", "return", "final_perplexity", "rounds", "total_latency_s",
                               "exchanges", "memory_violations", "unavailable", "reached_target"]
    assert len(a) == 4 and a.equals(b)
    assert a["episode"].tolist() == [0, 1, 0, 1]


def test_oracle_value_is_the_return_of_a_real_plan(env_kwargs):
    # V(a) = best over m of "hold a for m rounds, then idle to the end", each plan played out on a copy
    env = FedPEATEnv(**env_kwargs)
    horizon = env_kwargs["horizon"]
    for seed in (0, 2):
        env.reset(seed=seed)
        oracle = OraclePolicy(lookahead=3)
        oracle.reset(env)
        for action in uniform_actions(env):
            plans = [_hold_then_idle(env, action, m) for m in range(1, 4)]
            assert oracle.value(env, action) == pytest.approx(max(plans))
        assert oracle.value(env, idle_action(env)) == pytest.approx(simulate(env, idle_action(env), horizon))


def _hold_then_idle(env, action, rounds: int) -> float:
    twin, total, done, t = copy.deepcopy(env), 0.0, False, 0
    while not done:
        _, reward, terminated, truncated, _ = twin.step(action if t < rounds else idle_action(twin))
        total, done, t = total + reward, terminated or truncated, t + 1
    return total
