"""The vectorised surrogate against the single env (one implementation of the dynamics)."""

from __future__ import annotations

import numpy as np
import pytest

import fedpeat_env  # noqa: F401
from fedpeat_env.env import FedPEATEnv
from fedpeat_env.vector import FedPEATVectorEnv


def test_batch_of_one_reproduces_the_single_env():
    single, vector = FedPEATEnv(), FedPEATVectorEnv(1)
    obs_s, _ = single.reset(seed=11)
    obs_v, _ = vector.reset(seed=11)
    assert np.array_equal(obs_s, obs_v[0])
    rng = np.random.default_rng(1)
    for _ in range(15):
        action = rng.integers(0, 5, size=10)
        obs_s, r_s, term_s, trunc_s, info_s = single.step(action)
        obs_v, r_v, term_v, trunc_v, info_v = vector.step(action[None])
        assert np.array_equal(obs_s, obs_v[0]) and r_s == pytest.approx(float(r_v[0]))
        assert info_s["perplexity"] == info_v["perplexity"][0]
        if term_s or trunc_s:
            assert term_v[0] == term_s and trunc_v[0] == trunc_s
            break


def test_autoreset_next_step_and_independent_sub_envs():
    vector = FedPEATVectorEnv(3, horizon=3)
    vector.reset(seed=0)
    actions = np.zeros((3, 10), dtype=np.int64)
    for _ in range(3):
        obs, reward, terminated, truncated, _ = vector.step(actions)
    assert truncated.all() and not terminated.any()
    obs, reward, terminated, truncated, info = vector.step(actions)  # the autoreset step
    assert (reward == 0).all() and not (terminated | truncated).any()
    assert np.allclose(obs[:, -1], 0.0)  # round counter back to 0
    assert vector.observation_space.contains(obs)
    assert len({tuple(o[:5]) for o in obs}) == 3  # different scenarios per sub-env


def test_vector_env_rejects_bad_actions_and_engine_fidelity():
    vector = FedPEATVectorEnv(2)
    vector.reset(seed=0)
    with pytest.raises(ValueError, match="actions must be integers of shape"):
        vector.step(np.full((2, 10), 7))
    with pytest.raises(ValueError, match="fidelity must be 'surrogate'"):
        FedPEATVectorEnv(2, fidelity="engine")
