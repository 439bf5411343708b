"""The FedPEAT Gymnasium environment through ``gymnasium.make``."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest

import fedpeat_env  # noqa: F401  (registers the ids)
from federation.system import ChannelConfig
from fedpeat_env.costs import level_costs
from fedpeat_env.dynamics import DEVICE_FEATURES, DOMAINS, ROUND_FEATURES
from fedpeat_env.env import FedPEATEnv
from fedpeat_env.reward import REWARD_TERMS, reward_terms


def _make(**kwargs):
    return gym.make("FedPEAT-v1", **kwargs)


def _rollout(env, seed, actions):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append((obs, reward, info["perplexity"]))
        if terminated or truncated:
            break
    return out


def test_both_checkers_pass():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    for kwargs in ({}, {"control_rank": True, "num_devices": 4}):
        env = _make(**kwargs)
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped)


def test_spaces_match_the_docstring_tables():
    env = _make(num_devices=6, compression_levels=(0.0, 0.5, 0.75))
    assert list(env.action_space.nvec) == [4] * 6
    assert env.observation_space.shape == (DEVICE_FEATURES * 6 + ROUND_FEATURES,) == (10 * 6 + 5,)
    doc = FedPEATEnv.__doc__
    rows = re.findall(r"^\s*\| (F[iN](?:\+\d)?(?:\+d)?) \|.*\| \[(-?\d), (-?\d|N)\] \|", doc, flags=re.M)
    low, high = env.observation_space.low, env.observation_space.high
    checked = 0
    for index, lo, hi in rows:
        base, _, rest = index.partition("+")
        offsets = [int(rest.split("+")[0])] if rest and not rest.endswith("d") else []
        if rest.endswith("d"):  # one entry per domain
            start = int(rest.split("+")[0]) if rest != "d" else 0
            offsets = [start + d for d in range(len(DOMAINS))]
        for offset in offsets or [0]:
            i = (DEVICE_FEATURES * 6 if base == "FN" else 0) + offset
            assert (low[i], high[i]) == (float(lo), 6.0 if hi == "N" else float(hi)), index
            checked += 1
    assert checked == DEVICE_FEATURES + ROUND_FEATURES
    ranked = _make(num_devices=3, control_rank=True, rank_levels=(4, 8))
    assert list(ranked.action_space.nvec) == [5] * 3 + [2] * 3
    with pytest.raises(ValueError, match=r"control_rank=True needs a calibration with engine runs at every rank.*missing \[16\]"):
        _make(control_rank=True, rank_levels=(2, 4, 8, 16))
    with pytest.raises(ValueError, match=r"rank_levels\[-1\] = 16 \(the rank every device trains at\)"):
        _make(rank_levels=(16,))
    assert _make(rank_levels=(4,)).unwrapped.dynamics.tables.rank_values.tolist() == [4.0]  # a calibrated rank


def test_same_seed_same_trajectory_and_different_seed_differs():
    rng = np.random.default_rng(0)
    actions = [rng.integers(0, 5, size=10) for _ in range(20)]
    a, b, c = (_rollout(_make(), s, actions) for s in (3, 3, 4))
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])
    for x, y in zip(a[1:], b[1:]):
        assert np.array_equal(x[0], y[0]) and x[1] == y[1] and x[2] == y[2]
    assert any(x[1] != y[1] for x, y in zip(a[1:], c[1:]))


def test_channel_draws_do_not_depend_on_actions():
    env1, env2 = _make(target_perplexity=2.0).unwrapped, _make(target_perplexity=2.0).unwrapped  # never terminates
    env1.reset(seed=5)
    env2.reset(seed=5)
    for t in range(10):
        env1.step(np.zeros(10, dtype=np.int64))
        env2.step(np.full(10, 1 + t % 4, dtype=np.int64))
        assert np.array_equal(env1.dynamics.gain_db, env2.dynamics.gain_db)


def test_info_reward_terms_and_python_float_reward():
    env = _make()
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.full(10, 4))
    assert type(reward) is float and np.isfinite(reward)
    assert tuple(reward_terms(info)) == REWARD_TERMS == ("perplexity", "latency", "exchanges", "memory",
                                                         "memory_penalty", "exchange_penalty", "availability_penalty")
    assert [key for key in info if key.startswith("reward_")] == [f"reward_{t}" for t in REWARD_TERMS]  # flat keys
    assert reward == pytest.approx(sum(reward_terms(info).values()))
    _, reset_info = env.reset(seed=0)
    assert set(reset_info) == set(info) and reward_terms(reset_info) == dict.fromkeys(REWARD_TERMS, 0.0)
    for key in ("perplexity", "round_latency_s", "exchanges", "memory_violations", "unavailable", "reuse"):
        assert key in info
    # first round: every available device that fits downloads
    assert info["exchanges"] == 10 - info["memory_violations"] - info["unavailable"] > 0


def test_action_mask_matches_memory_and_violations_are_penalised():
    env = _make()
    env.reset(seed=2)
    d = env.unwrapped.dynamics
    mask = env.unwrapped.action_masks().reshape(10, 5)
    assert mask[:, 0].all()
    np.testing.assert_array_equal(mask[:, 1:], d.fits[0][:, 1:] & d.available[0][:, None])
    available = d.available[0].copy()
    assert 0 < available.sum() < 10  # seed 2 has devices away
    _, _, _, _, info = env.step(np.ones(10, dtype=np.int64))  # everyone on the full model
    assert info["memory_violations"] == int((available & ~d.fits[0][:, 1]).sum())
    assert info["unavailable"] == int((~available).sum())
    assert info["reward_memory_penalty"] == pytest.approx(-1.0 * info["memory_violations"])
    assert info["reward_availability_penalty"] == pytest.approx(-1.0 * info["unavailable"])


def test_exchange_only_when_the_emulator_changes_and_penalty_beyond_budget():
    env = _make(num_devices=2, horizon=8, exchange_fraction=0.25, memory_tiers=(2.0,), target_perplexity=2.0,
                availability="always")
    env.reset(seed=0)
    exchanges, penalties = [], []
    for level in (1, 1, 2, 3, 3, 4):
        _, _, _, _, info = env.step(np.array([level, 0]))
        exchanges.append(info["exchanges"])
        penalties.append(info["reward_exchange_penalty"])
    assert exchanges == [1, 0, 1, 1, 0, 1]
    assert penalties == [0, 0, 0, -0.5, 0, -0.5]  # budget κ·T = 2 exchanges per device


def test_bad_config_and_actions_raise_clear_errors():
    with pytest.raises(ValueError, match="num_devices must be >= 1"):
        _make(num_devices=0)
    with pytest.raises(ValueError, match=r"compression_levels must be values in \[0, 1\)"):
        _make(compression_levels=(0.0, 1.5))
    with pytest.raises(ValueError, match="cost_profile must be one of"):
        _make(cost_profile="gpt5")
    with pytest.raises(ValueError, match="unknown FedPEAT env option"):
        _make(num_device=3)
    env = _make(num_devices=3)
    env.reset(seed=0)
    for bad in (np.array([0, 1, 5]), np.array([0, 1]), np.array([0.5, 1, 1])):
        with pytest.raises(ValueError, match="action must be"):
            env.step(bad)


def test_cost_profiles_charge_the_architecture():
    small = level_costs("embedded", (0.0, 0.5), (8,))
    xl = level_costs("gpt2-xl", (0.0, 0.5), (8,))
    assert xl.full_model_bytes / 4 == pytest.approx(1_557_611_200)  # GPT2-XL parameters from its GPT2Config
    assert xl.emulator_bytes[0] > 500 * small.emulator_bytes[0]
    env = _make(cost_profile="gpt2-xl")
    env.reset(seed=0)
    _, _, _, _, info_xl = env.step(np.full(10, 4))
    env = _make(cost_profile="embedded")
    env.reset(seed=0)
    _, _, _, _, info_small = env.step(np.full(10, 4))
    assert info_xl["round_latency_s"] > 100 * info_small["round_latency_s"]


def test_embedded_costs_equal_the_engine_tensors():
    from federation.engine import EngineConfig, RoundRunner
    from federation.methods import DeviceDecision, FedPEATConfig
    from federation.training import LocalTrainConfig

    costs = level_costs("embedded", (0.0, 0.5, 0.75), (8,))
    runner = RoundRunner(EngineConfig(num_devices=3, max_eval_blocks=4,
                                      method_config=FedPEATConfig(train=LocalTrainConfig(steps=1, batch_size=8))))
    result = runner.run_round([DeviceDecision(True, e) for e in (0.0, 0.5, 0.75)])
    emulator = [m.num_bytes for m in runner.log.messages if m.kind in ("emulator", "frozen")]
    adapter = {m.num_bytes for m in runner.log.messages if m.kind == "adapter"}
    assert emulator == list(costs.emulator_bytes) and adapter == {costs.adapter_bytes[0]}
    assert [d.memory_bytes for d in result.devices] == list(costs.memory_bytes[:, 0])


def test_fed_ft_cost_profile_equals_the_engine_fed_ft_tensors():
    from federation.engine import EngineConfig, RoundRunner
    from federation.training import LocalTrainConfig

    costs = level_costs("embedded", (0.0,), (8,), trainable="all")
    runner = RoundRunner(EngineConfig(method="fed-ft", num_devices=2, max_eval_blocks=4))
    runner.method.train_config = LocalTrainConfig(steps=1, batch_size=8, lr=3e-4)
    result = runner.run_round()
    sent = {(m.direction, m.kind, m.num_bytes) for m in runner.log.messages}
    assert sent == {("down", "model", costs.adapter_bytes[0]), ("up", "model", costs.adapter_bytes[0])}
    assert costs.adapter_bytes[0] == costs.full_model_bytes and list(costs.emulator_bytes) == [0.0]
    assert [d.memory_bytes for d in result.devices] == [costs.memory_bytes[0, 0]] * 2
    xl = level_costs("gpt2-xl", (0.0,), (8,), trainable="all")  # weights + grads + AdamW state of every weight:
    assert xl.memory_bytes[0, 0] > 2 * xl.full_memory_bytes  # no memory tier of the default scenario holds it

    fed_ft = _make(trainable="all", compression_levels=(0.0,), memory_tiers=(100.0,), partition="iid", availability="always")
    peat = _make(compression_levels=(0.0,), memory_tiers=(100.0,), partition="iid", availability="always")
    fed_ft.reset(seed=3)
    peat.reset(seed=3)
    info_ft, info_peat = (env.step(np.ones(10, dtype=np.int64))[4] for env in (fed_ft, peat))
    assert info_ft["exchanges"] == 0 and info_peat["exchanges"] == 10  # Fed-FT has no frozen part to exchange
    assert info_ft["perplexity"] == pytest.approx(info_peat["perplexity"])  # the same learning dynamics, other costs
    assert info_ft["round_latency_s"] > 1.5 * info_peat["round_latency_s"]  # whole models up, every round
    for kwargs, match in [({"trainable": "lora"}, "trainable must be one of"),
                          ({"trainable": "all"}, r"compression_levels must be \(0.0,\) with trainable='all'"),
                          ({"trainable": "all", "compression_levels": (0.0,), "control_rank": True}, "control_rank must be False")]:
        with pytest.raises(ValueError, match=match):
            _make(**kwargs)


def test_engine_fidelity_runs_real_rounds():
    env = gym.make("FedPEAT-Engine-v1", num_devices=2, engine_local_steps=1, horizon=3, memory_tiers=(2.0,),
                   availability="always")
    obs, info = env.reset(seed=0)
    runner = env.unwrapped._runner
    d = env.unwrapped.dynamics
    assert info["perplexity"] == runner.initial_perplexity
    assert runner.data.domains == DOMAINS  # content skew: the three tuning domains, evaluated on their union
    # the engine split each domain as the episode drew it; the env sees the real blocks: shares and histograms
    counts = np.array([np.bincount(labels, minlength=3) for labels in runner.data.device_labels], dtype=float)
    np.testing.assert_allclose(d.share[0], counts.sum(axis=1) / counts.sum())
    np.testing.assert_allclose(d.mix[0], counts / counts.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(obs[5:DEVICE_FEATURES * 2:DEVICE_FEATURES], 2 * counts.sum(axis=1) / counts.sum(), rtol=1e-6)
    np.testing.assert_allclose(obs[7:10], d.mix[0, 0], rtol=1e-6)
    np.testing.assert_allclose(d.domain_ppl[0], [runner.server.task_perplexity[k] for k in range(3)])
    _, reward, _, _, info = env.step(np.array([1, 4]))
    assert runner.round == 1 and info["perplexity"] < runner.initial_perplexity and np.isfinite(reward)
    assert info["perplexity"] == pytest.approx(float(np.exp(d.tables.eval_weight @ np.log(d.domain_ppl[0]))), rel=1e-9)
    emulators = [m for m in runner.log.messages if m.kind in ("emulator", "frozen")]
    assert [len({int(k.split(".")[2]) for k in m.keys if k.startswith("transformer.h.")}) for m in emulators] == [10, 4]
    env.close()


@pytest.mark.slow
def test_engine_fidelity_passes_both_checkers():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("FedPEAT-Engine-v1", num_devices=2, engine_local_steps=1, horizon=3, memory_tiers=(2.0,))
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped)
    env.close()


def test_latency_term_saturates_on_a_hopeless_link():
    # the device transmits at -100 dBm: its adapter upload takes ages (the reference latency is a download)
    env = _make(num_devices=1, memory_tiers=(2.0,), target_perplexity=2.0, channel={"uplink_power_dbm": -100.0},
                availability="always")
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.array([1]))
    assert info["round_latency_s"] > 100 * env.unwrapped.dynamics.reference_latency_s
    assert info["reward_latency"] == pytest.approx(-0.5 * 10.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_devices": "ten"}, "num_devices must be an integer, got 'ten'"),
    ({"num_devices": 2.5}, "num_devices must be an integer, got 2.5"),
    ({"horizon": None}, "horizon must be an integer, got None"),
    ({"compression_levels": 0.5}, "compression_levels must be a tuple of finite numbers, got 0.5"),
    ({"target_perplexity": float("inf")}, "target_perplexity must be a finite number, got inf"),
    ({"memory_tiers": (0.5, float("nan"))}, r"memory_tiers must be a tuple of finite numbers, got \(0.5, nan\)"),
    ({"channel": {"max_distance_m": float("inf")}}, "channel: max_distance_m must be a finite number, got inf"),
    ({"channel": {"uplink_bandwidth_hz": [1e6, float("nan")]}}, "channel: uplink_bandwidth_hz must be finite numbers"),
    ({"reward": {"memory_penalty": float("inf")}}, "reward weight memory_penalty must be a finite number >= 0, got inf"),
    ({"control_rank": 1}, "control_rank must be True or False, got 1"),
    ({"cost_profile": 3}, r"cost_profile must be one of \('embedded'"),
])
def test_a_value_of_the_wrong_type_names_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _make(**kwargs)


def test_unexpected_keywords_are_type_errors_so_mainstream_clients_create_the_env_by_id():
    from stable_baselines3.common.env_util import make_vec_env

    from fedpeat_env.config import EnvOptionError

    for kwargs in ({"no_such_option": 1}, {"render_mode": "human"}):
        with pytest.raises(TypeError, match="no_such_option|render_mode"):
            FedPEATEnv(**kwargs)
    assert issubclass(EnvOptionError, ValueError)
    venv = make_vec_env("FedPEAT-v1", n_envs=2, env_kwargs={"num_devices": 3})  # SB3 passes render_mode first
    assert venv.num_envs == 2 and venv.reset().shape == (2, DEVICE_FEATURES * 3 + ROUND_FEATURES)


def test_render_modes_show_the_round():
    env = _make(render_mode="ansi", num_devices=4, availability="always")
    with pytest.raises(RuntimeError, match="call reset"):
        env.unwrapped.render()
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1, 2, 0, 4]))
    text = env.render()
    lines = text.splitlines()
    assert lines[0].startswith("round 1/20") and f"{info['perplexity']:.1f}" in lines[0] and len(lines) == 2 + 4
    trained = [line.split()[-1] == "yes" for line in lines[2:]]
    assert sum(trained) == info["participants"] and not trained[2]  # device 2 was not selected
    assert [line.split()[-2] for line in lines[2:]][2] == "-"  # and holds no emulator
    assert all(line.split()[-3] == "yes" for line in lines[2:])  # every device available
    mix = [[float(x) for x in line.split()[5:8]] for line in lines[2:]]
    np.testing.assert_allclose(mix, env.unwrapped.dynamics.mix[0], atol=0.006)
    picture = _make(render_mode="rgb_array")
    picture.reset(seed=0)
    picture.step(picture.action_space.sample())
    frame = picture.render()
    assert frame.shape == (480, 480, 3) and frame.dtype == np.uint8 and len(np.unique(frame.reshape(-1, 3), axis=0)) > 10
    plain = _make()
    plain.reset(seed=0)
    assert plain.render() is None


@pytest.mark.parametrize("options", [
    {"num_devices": 1},
    {"num_devices": 1000, "horizon": 3},
    {"horizon": 1},
    {"channel": ChannelConfig(min_distance_m=1.0, max_distance_m=2.0, fading_correlation=0.0)},  # very strong links
    {"channel": ChannelConfig(min_distance_m=5e4, max_distance_m=1e5, uplink_power_dbm=-30.0,  # links near zero
                              downlink_power_dbm=-30.0, fading_correlation=0.0)},
    {"control_rank": True, "num_devices": 3, "horizon": 2},
    {"partition": "dirichlet", "dirichlet_alpha": 1e-3},  # shares that underflow: a device of 1e-300 of the data
    {"domain_alpha": 1e-3},
    {"domain_alpha": 1e3, "partition": "domains"},
])
def test_observations_and_rewards_stay_finite_under_extreme_settings(options):
    """A seeded sweep: random actions never give NaN or inf in observations, rewards or the reward terms, and the
    observations stay in the declared space, at 1 or 1000 devices, horizon 1, channels from near-perfect to near-zero
    rate and the extreme data splits the options allow. (``info["round_latency_s"]`` may be inf on a link whose rate
    underflows to 0: B·log2(1 + SNR) with SNR below float64's epsilon.)"""
    env = gym.make("FedPEAT-v1", **options)
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        assert np.isfinite(obs).all()
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert np.isfinite(obs).all() and np.isfinite(reward), (options, seed)
            assert env.observation_space.contains(obs), (options, seed)
            assert all(np.isfinite(v) for v in reward_terms(info).values())
            done = terminated or truncated
    env.close()
