"""The vectorised surrogate against the single env (one implementation of the dynamics)."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import fedpeat_env  # noqa: F401
from fedpeat_env.dynamics import DEVICE_FEATURES, ROUND_FEATURES
from fedpeat_env.env import FedPEATEnv
from fedpeat_env.vector import FedPEATVectorEnv

ROUND_T = DEVICE_FEATURES * 10 + 1
"""Index of round / T in the observation at N = 10."""


@pytest.mark.parametrize("mode", ["next_step", "same_step"])
def test_batch_of_one_reproduces_the_single_env_over_many_episodes(mode):
    from gymnasium.vector import AutoresetMode

    autoreset = AutoresetMode.NEXT_STEP if mode == "next_step" else AutoresetMode.SAME_STEP
    single, vector = FedPEATEnv(horizon=4), FedPEATVectorEnv(1, autoreset, horizon=4)
    obs_s, _ = single.reset(seed=11)
    obs_v, _ = vector.reset(seed=11)
    assert np.array_equal(obs_s, obs_v[0])
    rng = np.random.default_rng(1)
    episodes = 0
    while episodes < 5:
        action = rng.integers(0, 5, size=10)
        obs_s, r_s, term_s, trunc_s, info_s = single.step(action)
        obs_v, r_v, term_v, trunc_v, info_v = vector.step(action[None])
        same_step_end = (term_s or trunc_s) and mode == "same_step"
        final, step_info = (info_v["final_obs"][0], info_v["final_info"]) if same_step_end else (obs_v[0], info_v)
        assert np.array_equal(obs_s, final) and r_s == pytest.approx(float(r_v[0]))
        assert info_s["perplexity"] == step_info["perplexity"][0] and (term_v[0], trunc_v[0]) == (term_s, trunc_s)
        if term_s or trunc_s:
            episodes += 1
            obs_s, _ = single.reset()  # unseeded: the next episode of the stream
            if mode == "next_step":
                obs_v, *_ = vector.step(action[None])  # the autoreset step
            assert np.array_equal(obs_s, obs_v[0]), f"episode {episodes + 1} starts elsewhere"


def test_autoreset_next_step_and_independent_sub_envs():
    vector = FedPEATVectorEnv(3, horizon=3)
    vector.reset(seed=0)
    actions = np.zeros((3, 10), dtype=np.int64)
    for _ in range(3):
        obs, reward, terminated, truncated, _ = vector.step(actions)
    assert truncated.all() and not terminated.any()
    obs, reward, terminated, truncated, info = vector.step(actions)  # the autoreset step
    assert (reward == 0).all() and not (terminated | truncated).any()
    assert np.allclose(obs[:, ROUND_T], 0.0)  # round counter back to 0
    assert vector.observation_space.contains(obs)
    assert len({tuple(o[:5]) for o in obs}) == 3  # different scenarios per sub-env


def test_vector_env_rejects_bad_actions_a_step_before_reset_and_engine_fidelity():
    vector = FedPEATVectorEnv(2)
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):  # not rewards of -10 from no episode
        vector.step(np.zeros((2, 10), dtype=np.int64))
    _, info = vector.reset(seed=0)
    _, _, _, _, step_info = vector.step(np.zeros((2, 10), dtype=np.int64))
    assert set(info) == set(step_info) and all(np.shape(v) == (2,) for v in info.values())  # one layout for both
    assert vector.autoreset_mode == AutoresetMode.NEXT_STEP
    with pytest.raises(ValueError, match="actions must be integers of shape"):
        vector.step(np.full((2, 10), 7))
    with pytest.raises(ValueError, match="fidelity must be 'surrogate'"):
        FedPEATVectorEnv(2, fidelity="engine")


def test_same_step_autoreset_and_the_sb3_adapter():
    from gymnasium.vector import AutoresetMode

    from agents.vec import FedPEATSB3VecEnv

    vector = FedPEATVectorEnv(2, autoreset_mode=AutoresetMode.SAME_STEP, horizon=2)
    vector.reset(seed=0)
    zeros = np.zeros((2, 10), dtype=np.int64)
    vector.step(zeros)
    obs, _, _, truncated, info = vector.step(zeros)
    assert truncated.all() and info["_final_obs"].all() and info["_final_info"].all()
    assert np.allclose(info["final_obs"][:, ROUND_T], 1.0) and np.allclose(obs[:, ROUND_T], 0.0)  # round/T: 1 → new episode

    sb3 = FedPEATSB3VecEnv(3, seed=5, horizon=2)
    first = sb3.reset()
    assert first.shape == (3, DEVICE_FEATURES * 10 + ROUND_FEATURES)
    sb3.step(np.zeros((3, 10), dtype=np.int64))
    obs, reward, done, infos = sb3.step(np.zeros((3, 10), dtype=np.int64))
    assert done.all() and reward.dtype == np.float32
    assert all("terminal_observation" in i and i["TimeLimit.truncated"] for i in infos)
    assert len(sb3.env_method("action_masks")) == 3 and sb3.env_method("action_masks")[0].shape == (50,)
    assert sb3.get_attr("steps") == [6, 0, 0]
    with pytest.raises(ValueError, match="autoreset_mode must be"):
        FedPEATVectorEnv(2, autoreset_mode="sometimes")


def test_same_step_reports_the_reset_info_and_the_rounds_info_aside_as_gymnasiums_vector_envs():
    """SAME_STEP as gymnasium's SyncVectorEnv: a sub-env that ended reports its reset's info (round 0, terms 0, the
    new episode's starting perplexity) and the round's info in ``final_info`` (with ``_key`` masks), the others their
    round's; torchrl reads the round's numbers from ``final_info``."""
    from gymnasium.vector import AutoresetMode

    from fedpeat_env.reward import REWARD_INFO_KEYS

    vector = FedPEATVectorEnv(3, autoreset_mode=AutoresetMode.SAME_STEP, horizon=2)
    vector.reset(seed=4)
    ones = np.ones((3, 10), dtype=np.int64)
    vector.step(ones)
    vector.dynamics.t[2] = 0  # sub-env 2 is one round behind: it does not end with the others
    obs, reward, terminated, truncated, info = vector.step(ones)
    done = terminated | truncated
    assert done.tolist() == [True, True, False]
    final = info["final_info"]
    assert np.array_equal(info["_final_info"], done) and all(np.array_equal(final[f"_{k}"], done) for k in REWARD_INFO_KEYS)
    np.testing.assert_allclose(sum(final[k] for k in REWARD_INFO_KEYS)[done], reward[done])  # the round's terms
    assert (final["round"][done] == 2).all() and (info["round"][done] == 0).all()
    assert all((info[k][done] == 0).all() for k in REWARD_INFO_KEYS)
    np.testing.assert_array_equal(info["perplexity"][done], vector.dynamics.ppl[done])  # where the new episodes start
    assert info["round"][2] == 1 and np.isclose(sum(info[k] for k in REWARD_INFO_KEYS)[2], reward[2])  # still playing


def test_sb3_adapter_reports_episode_metrics_that_add_up_to_the_returns():
    from agents.vec import EPISODE_SUMS, FedPEATSB3VecEnv

    sb3 = FedPEATSB3VecEnv(4, seed=3, horizon=3)
    sb3.reset()
    assert sb3.env_method("episode_metrics", indices=[0]) == [{}]  # nothing ended yet
    rng = np.random.default_rng(0)
    returns = np.zeros(4)
    for _ in range(6):  # two episodes per sub-env
        _, reward, _, infos = sb3.step(rng.integers(0, 5, size=(4, 10)))
        returns += reward
    metrics = sb3.env_method("episode_metrics", indices=[0])[0]
    terms = [k for k in metrics if k.startswith("reward/")]
    assert len(terms) >= 4 and set(EPISODE_SUMS) <= set(metrics) and metrics["final_perplexity"] > 0
    assert np.isclose(sum(metrics[k] for k in terms), returns.sum() / 8, rtol=1e-5)  # mean episode return
    assert metrics["participants"] > 0 and sb3.env_method("episode_metrics", indices=[0]) == [{}]  # drained


def test_large_batch_is_reproducible_and_within_bounds():
    def run(seed: int) -> list[np.ndarray]:
        vector = FedPEATVectorEnv(110, horizon=5)  # 1100 devices: the channel's vectorised path
        obs, _ = vector.reset(seed=seed)
        vector.action_space.seed(seed)
        out = [obs]
        for _ in range(12):  # two autoresets per sub-env at least
            obs, reward, terminated, truncated, info = vector.step(vector.action_space.sample())
            assert vector.observation_space.contains(obs) and np.isfinite(reward).all()
            out += [obs, reward]
        return out

    a, b, c = run(0), run(0), run(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[-2], c[-2])  # observations (the last rewards are 0 on both: a synchronous autoreset)


def test_large_batch_path_gives_the_same_episodes(monkeypatch):
    import federation.system as system

    def run() -> list:
        env = FedPEATEnv()
        out = [env.reset(seed=4)[0]]
        for level in (1, 2, 3, 4, 0, 4):
            obs, reward, _, _, info = env.step(np.full(10, level))
            out.append((obs, reward, info["perplexity"]))
        env.reset()
        return out + [env.step(np.full(10, 4))[0]]

    small = run()
    monkeypatch.setattr(system, "LARGE_CHANNEL", 1)  # numba draws, numpy's log2: the batches of >= 1024 devices
    large = run()
    np.testing.assert_array_equal(small[0], large[0])
    for (obs_s, r_s, ppl_s), (obs_l, r_l, ppl_l) in zip(small[1:-1], large[1:-1]):
        np.testing.assert_allclose(obs_s, obs_l, rtol=1e-6)
        assert r_s == pytest.approx(r_l, rel=1e-12) and ppl_s == pytest.approx(ppl_l, rel=1e-12)
    np.testing.assert_allclose(small[-1], large[-1], rtol=1e-6)


@pytest.mark.parametrize("mode", ["NEXT_STEP", "SAME_STEP"])
def test_step_result_is_step_without_the_info_dict(mode):
    from gymnasium.vector import AutoresetMode

    envs = [FedPEATVectorEnv(4, autoreset_mode=AutoresetMode[mode], horizon=3) for _ in range(2)]
    for env in envs:
        env.reset(seed=2)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(7):
        actions = rng.integers(0, 5, size=(4, 10))
        obs, reward, terminated, truncated, info = envs[0].step(actions)
        obs_r, out, terminated_r, truncated_r, final_obs = envs[1].step_result(actions)
        assert np.array_equal(obs, obs_r) and np.array_equal(reward, out.round_["reward"])
        assert np.array_equal(terminated, terminated_r) and np.array_equal(truncated, truncated_r)
        round_info = info.get("final_info", info)  # SAME_STEP: every sub-env's round there when some reset
        assert np.array_equal(round_info["perplexity"], out.round_["perplexity"])
        assert np.array_equal(round_info["reward_latency"], out.terms["latency"])
        assert (final_obs is None) == ("final_obs" not in info)
        if final_obs is not None:
            assert np.array_equal(final_obs, info["final_obs"])
            ended += 1
    assert ended == (2 if mode == "SAME_STEP" else 0)  # horizon 3 in 7 steps: two same-step resets


def test_make_vec_by_id_returns_the_compiled_vector_env():
    import gymnasium as gym

    from fedpeat_env.vector import FedPEATVectorEnv

    venv = gym.make_vec("FedPEAT-v1", num_envs=8, vectorization_mode="vector_entry_point", num_devices=4)
    assert isinstance(venv, FedPEATVectorEnv) and venv.num_envs == 8
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (8, DEVICE_FEATURES * 4 + ROUND_FEATURES)
