"""The multi-agent face: ``fedpeat_env.parallel_env`` as PettingZoo sees it, and against the single-agent env."""

from __future__ import annotations

import pickle
import warnings

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

import fedpeat_env
from fedpeat_env.dynamics import DEVICE_FEATURES, ROUND_FEATURES


@pytest.mark.parametrize("extra", [{}, {"control_rank": True}])
def test_pettingzoo_parallel_api_test_passes(env_kwargs, extra):
    env = fedpeat_env.parallel_env(**env_kwargs, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the API test warns about agents given data after their end, and the like
        parallel_api_test(env, num_cycles=50)
    assert env.possible_agents == ["device_0", "device_1", "device_2"]
    assert env.observation_space("device_1").shape == (DEVICE_FEATURES + ROUND_FEATURES,)
    assert env.action_space("device_1") == (gym.spaces.MultiDiscrete([5, 3]) if extra else gym.spaces.Discrete(5))
    assert env.state_space.shape == (3 * DEVICE_FEATURES + ROUND_FEATURES,)


def test_agents_see_their_slice_and_jointly_play_the_single_agent_episode(env_kwargs):
    """The same seed and joint actions give the single-agent env's observations, reward, masks and end."""
    parallel = fedpeat_env.parallel_env(**env_kwargs)
    single = gym.make("FedPEAT-v1", **env_kwargs)
    obs, infos = parallel.reset(seed=4)
    flat, _ = single.reset(seed=4)
    rng = np.random.default_rng(0)
    done = False
    while not done:
        for i, agent in enumerate(parallel.possible_agents):  # own features, then the round's
            np.testing.assert_array_equal(obs[agent][:DEVICE_FEATURES], flat[DEVICE_FEATURES * i:DEVICE_FEATURES * (i + 1)])
            np.testing.assert_array_equal(obs[agent][DEVICE_FEATURES:], flat[3 * DEVICE_FEATURES:])
        np.testing.assert_array_equal(np.concatenate([infos[a]["action_mask"] for a in parallel.agents]),
                                      single.unwrapped.action_masks())
        np.testing.assert_array_equal(parallel.state(), flat)
        joint = rng.integers(0, 5, size=3)
        obs, rewards, terminations, truncations, infos = parallel.step(dict(zip(parallel.agents, joint)))
        flat, reward, terminated, truncated, info = single.step(joint)
        assert set(rewards.values()) == {reward}  # the shared reward
        assert set(terminations.values()) == {terminated} and set(truncations.values()) == {truncated}
        assert infos["device_0"]["round"] == info
        done = terminated or truncated
    assert parallel.agents == []
    with pytest.raises(RuntimeError, match="call reset"):
        parallel.step({})


def test_bad_joint_actions_are_refused_by_name(env_kwargs):
    parallel = fedpeat_env.parallel_env(**env_kwargs)
    parallel.reset(seed=0)
    with pytest.raises(ValueError, match=r"missing \['device_2'\]"):
        parallel.step({"device_0": 1, "device_1": 1})
    with pytest.raises(ValueError, match="unknown agent 'device_9'"):
        parallel.step({"device_0": 1, "device_1": 1, "device_2": 0, "device_9": 1})


def test_a_pickled_env_continues_the_same_episode(env_kwargs):
    """SuperSuit copies envs with cloudpickle: the copy's round buffers must still be the ones the kernels write."""
    env = gym.make("FedPEAT-v1", **env_kwargs).unwrapped
    env.reset(seed=1)
    copies = [pickle.loads(pickle.dumps(env)), cloudpickle.loads(cloudpickle.dumps(env))]
    for action in ([1, 2, 0], [4, 4, 4], [0, 1, 3]):
        a = env.step(np.array(action))
        for copy in copies:
            b = copy.step(np.array(action))
            np.testing.assert_array_equal(a[0], b[0])
            assert a[1] == b[1] != 0.0 and a[4] == b[4]


def test_the_multi_agent_face_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, fedpeat_env, fedpeat_env.parallel; print(sorted({'torch', 'supersuit'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
