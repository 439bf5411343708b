"""The v1 scenario: content skew over the tuning domains, device availability, what the agent sees of the data, and the
warning outside the calibration."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest

import fedpeat_env  # noqa: F401
from fedpeat_env.dynamics import DEVICE_FEATURES, DOMAINS
from fedpeat_env.surrogate import Calibration, Coverage
from fedpeat_env.vector import FedPEATVectorEnv
from tests.helpers import hand_calibration


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cal") / "cal.json"
    hand_calibration().save(path)
    return str(path)


def test_the_v0_id_is_retired_for_v1():
    with pytest.raises(gym.error.DeprecatedEnv, match="FedPEAT-v1"):
        gym.make("FedPEAT-v0")


def test_content_skew_splits_each_domain_over_the_devices(calibration):
    env = gym.make("FedPEAT-v1", calibration=calibration, num_devices=8, server_fraction=0.2).unwrapped
    d = env.dynamics
    weight = np.array([778, 447, 359]) / 1584
    np.testing.assert_allclose(d.tables.domain_weight, weight)
    for seed in range(5):
        env.reset(seed=seed)
        share, mix = d.share[0], d.mix[0]
        assert share.sum() == pytest.approx(0.8)  # the devices hold what the server does not
        np.testing.assert_allclose(mix.sum(axis=1), 1.0)
        np.testing.assert_allclose((share[:, None] * mix).sum(axis=0), 0.8 * weight)  # every domain's blocks, all dealt
    skewed = np.abs(mix - weight).max()
    near_iid = gym.make("FedPEAT-v1", calibration=calibration, num_devices=8, domain_alpha=1000.0).unwrapped
    near_iid.reset(seed=4)
    assert np.abs(near_iid.dynamics.mix[0] - weight).max() < 0.05 < skewed
    np.testing.assert_allclose(near_iid.dynamics.share[0], 1 / 8, rtol=0.15)
    one_domain = gym.make("FedPEAT-v1", calibration=calibration, partition="dirichlet").unwrapped
    one_domain.reset(seed=0)
    np.testing.assert_array_equal(one_domain.dynamics.mix[0], np.tile([1.0, 0.0, 0.0], (10, 1)))
    np.testing.assert_array_equal(one_domain.dynamics.tables.eval_weight, [1.0, 0.0, 0.0])


def test_the_observation_shows_histograms_availability_and_domain_progress(calibration):
    env = gym.make("FedPEAT-v1", calibration=calibration, num_devices=4)
    obs, _ = env.reset(seed=1)
    d = env.unwrapped.dynamics
    per_device = obs[: 4 * DEVICE_FEATURES].reshape(4, DEVICE_FEATURES)
    np.testing.assert_allclose(per_device[:, 7:], d.mix[0], rtol=1e-6)
    np.testing.assert_array_equal(per_device[:, 6], d.available[0].astype(np.float32))
    np.testing.assert_array_equal(obs[4 * DEVICE_FEATURES + 2:], [0.0, 0.0, 0.0])  # no progress yet
    action = np.where(env.unwrapped.action_masks().reshape(4, 5)[:, 1], 1, 0)
    obs, _, _, _, info = env.step(action)
    progress = np.log(4000.0 / d.domain_ppl[0]) / np.log(4000.0 / 165.0)
    np.testing.assert_allclose(obs[4 * DEVICE_FEATURES + 2:], np.minimum(progress, 2.0), rtol=1e-5)
    assert info["perplexity"] == pytest.approx(float(np.exp(d.tables.eval_weight @ np.log(d.domain_ppl[0]))))
    hidden = gym.make("FedPEAT-v1", calibration=calibration, num_devices=4, observe_domains=False)
    obs, _ = hidden.reset(seed=1)
    assert not obs[: 4 * DEVICE_FEATURES].reshape(4, DEVICE_FEATURES)[:, 7:].any()


def test_availability_is_a_markov_chain_with_the_stated_rates(calibration):
    env = gym.make("FedPEAT-v1", calibration=calibration, num_devices=50, horizon=20,
                   availability_off_rate=0.2, availability_on_rate=0.3, target_perplexity=2.0).unwrapped
    d = env.dynamics
    starts, ups, downs, stays_up, stays_down = [], 0, 0, 0, 0
    for seed in range(6):
        env.reset(seed=seed)
        starts.append(d.available[0].mean())
        before = d.available[0].copy()
        for _ in range(20):
            env.step(np.zeros(50, dtype=np.int64))
            after = d.available[0]
            downs += int((before & ~after).sum())
            stays_up += int((before & after).sum())
            ups += int((~before & after).sum())
            stays_down += int((~before & ~after).sum())
            before = after.copy()
    assert np.mean(starts) == pytest.approx(0.3 / 0.5, abs=0.05)  # the stationary distribution
    assert downs / (downs + stays_up) == pytest.approx(0.2, abs=0.03)
    assert ups / (ups + stays_down) == pytest.approx(0.3, abs=0.04)
    always = gym.make("FedPEAT-v1", calibration=calibration, availability="always").unwrapped
    always.reset(seed=0)
    assert always.dynamics.available.all()


def test_availability_draws_do_not_depend_on_actions(calibration):
    a = gym.make("FedPEAT-v1", calibration=calibration, target_perplexity=2.0).unwrapped
    b = gym.make("FedPEAT-v1", calibration=calibration, target_perplexity=2.0).unwrapped
    a.reset(seed=3)
    b.reset(seed=3)
    for t in range(10):
        a.step(np.zeros(10, dtype=np.int64))
        b.step(np.full(10, 1 + t % 4, dtype=np.int64))
        np.testing.assert_array_equal(a.dynamics.available, b.dynamics.available)


def test_bad_scenario_options_name_the_option(calibration):
    for kwargs, message in [({"partition": "topics"}, r"partition must be one of \('iid', 'dirichlet', 'domains'\)"),
                            ({"availability": "sometimes"}, r"availability must be one of \('always', 'markov'\)"),
                            ({"domain_alpha": 0.0}, r"domain_alpha must be in \[0.001, 1000\]"),
                            ({"dirichlet_alpha": float("inf")}, "dirichlet_alpha must be a finite number, got inf"),
                            ({"domain_alpha": float("nan")}, "domain_alpha must be a finite number, got nan"),
                            ({"availability_off_rate": 1.5}, r"availability_off_rate must be in \[0, 1\]"),
                            ({"availability_on_rate": 0.0}, "availability_on_rate must be > 0 with availability='markov'"),
                            ({"observe_domains": "yes"}, "observe_domains must be True or False")]:
        with pytest.raises(ValueError, match=message):
            gym.make("FedPEAT-v1", calibration=calibration, **kwargs)
    gym.make("FedPEAT-v1", calibration=calibration, availability="always", availability_on_rate=0.0)


def test_one_warning_names_the_options_outside_the_calibration(tmp_path):
    path = tmp_path / "cal.json"
    hand_calibration(covered=Coverage(num_devices=(5, 20), rounds=20, server_fraction=(0.0, 0.3),
                                      dirichlet_alpha=(0.3, 1.0), domain_alpha=(0.2, 2.0))).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym.make("FedPEAT-v1", calibration=str(path), num_devices=20, horizon=20, domain_alpha=0.2)  # inside: silent
    with pytest.warns(UserWarning) as caught:
        gym.make("FedPEAT-v1", calibration=str(path), num_devices=50, horizon=30, domain_alpha=5.0)
    assert len(caught) == 1
    message = str(caught[0].message)
    for part in ("num_devices=50 (calibrated: 5–20)", "horizon=30 (calibrated: 1–20)", "domain_alpha=5.0 (calibrated: 0.2–2)"):
        assert part in message
    with pytest.warns(UserWarning, match=r"dirichlet_alpha=0.1 \(calibrated: 0.3–1\)"):
        gym.make("FedPEAT-v1", calibration=str(path), partition="dirichlet", dirichlet_alpha=0.1)
    with pytest.warns(UserWarning, match=r"server_fraction=0.5"):
        FedPEATVectorEnv(2, calibration=str(path), server_fraction=0.5)


def test_the_committed_calibration_covers_the_default_scenario():
    cal = Calibration.load()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make("FedPEAT-v1")
    assert env.unwrapped.dynamics.target == pytest.approx(1.05 * cal.best_perplexity["+".join(DOMAINS)])
    assert cal.covered.rounds >= 20 and cal.covered.num_devices[0] <= 5 and cal.covered.num_devices[1] >= 20


@pytest.mark.parametrize("field, value, message", [
    ("rate", float("nan"), "calibration field rate must be finite numbers"),
    ("shape", -1.0, "calibration field shape must be > 0"),
    ("reuse", "oops", "calibration field reuse must be finite numbers"),
    ("domain_train_blocks", ["oops", 447, 359], "calibration field domain_train_blocks must be a list of integers"),
    ("best_perplexity", {"pydocs": float("nan")}, "calibration field best_perplexity must map scenarios to finite"),
    ("covered", {"num_devices": ["a", 3]}, r"calibration field covered.num_devices must be a \[low, high\] pair"),
    ("levels", "oops", "calibration field levels must be a list of finite numbers, got .oops."),
    ("domain_plateau", [1.0, 2.0], "domain_plateau must have one entry per domain"),
])
def test_a_bad_calibration_file_names_the_field(tmp_path, field, value, message):
    path = tmp_path / "bad.json"
    hand_calibration().save(path)
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        Calibration.load(path)
    with pytest.raises(ValueError, match=message):
        gym.make("FedPEAT-v1", calibration=str(path))


def test_episodes_with_fewer_devices_leave_empty_slots(calibration):
    env = gym.make("FedPEAT-v1", calibration=calibration, num_devices=8, episode_devices=(3, 5), availability="always",
                   memory_tiers=(2.0,), target_perplexity=2.0).unwrapped
    d = env.dynamics
    counts = set()
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        n = int(d.present[0])
        counts.add(n)
        assert d.share[0, :n].sum() == pytest.approx(1.0) and not d.share[0, n:].any()
        per_device = obs[: 8 * DEVICE_FEATURES].reshape(8, DEVICE_FEATURES)
        empty = per_device[n:]  # no memory, data or availability; holds no emulator (-1); its channel is still drawn
        assert not empty[:, [1, *range(3, DEVICE_FEATURES)]].any() and (empty[:, 2] == -1).all()
        masks = env.action_masks().reshape(8, 5)
        assert masks[:n, 1:].all() and not masks[n:, 1:].any() and masks[:, 0].all()
    assert counts == {3, 4, 5}  # uniform over the range
    # the per-device normalisations use the episode's n: every device exchanges once in round 1
    env.reset(seed=0)
    n = int(d.present[0])
    _, _, _, _, info = env.step(np.array([4] * n + [0] * (8 - n)))
    assert info["exchanges"] == n and info["reward_exchanges"] == pytest.approx(-0.3 * n / n)
    with pytest.raises(ValueError, match=r"episode_devices must be None or \(low, high\) with 1 <= low <= high"):
        gym.make("FedPEAT-v1", calibration=calibration, num_devices=4, episode_devices=(3, 5))


def test_a_fork_simulates_ahead_like_a_deep_copy_without_touching_the_env(calibration):
    import copy

    env = gym.make("FedPEAT-v1", calibration=calibration, target_perplexity=2.0).unwrapped
    env.reset(seed=2)
    d = env.dynamics
    before = [array.copy() for array in d.state]
    action = np.zeros((1, 10), dtype=np.int64)
    action[0, :4] = 4
    realised, copied, sampled = d.fork(), copy.deepcopy(d), d.fork(np.random.PCG64(99).state)
    for _ in range(4):
        a, b = realised.step(action), copied.step(action)
        sampled.step(action)
        np.testing.assert_array_equal(a.round_values, b.round_values)  # the realised future, as a deep copy draws it
        np.testing.assert_array_equal(a.obs, b.obs)
    assert not np.array_equal(realised.gain_db, sampled.gain_db)  # another stream: another future
    for array, kept in zip(d.state, before):  # the env itself did not move
        np.testing.assert_array_equal(array, kept)
