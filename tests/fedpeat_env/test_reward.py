"""Each reward term on a hand-built round (known rates, sizes and surrogate), computed by hand in the test."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from fedpeat_env.env import FedPEATEnv
from fedpeat_env.reward import REWARD_TERMS, RewardWeights, reward_terms
from tests.helpers import hand_calibration

# a surrogate with known parameters: plateaus 100 (ε = 0) and 140 (ε = 0.5), ppl_0 = 300, no coverage or reuse term
KNOWN = dict(initial_domain_perplexity=(300.0, 300.0, 300.0), levels=(0.0, 0.5), ladder=(1.0, 1.4),
             domain_plateau=(100.0, 100.0, 100.0), rate=2.0, shape=0.5, share_exponent=0.5, rank_exponent=0.3,
             noise_std=0.0, noise_exponent=0.5)
UPLINK = np.array([2e6, 1e6, 4e6])  # bit/s of devices 0, 1, 2
DOWNLINK = np.array([40e6, 10e6, 20e6])


@pytest.fixture
def calibration_file(tmp_path):
    path = tmp_path / "known.json"
    hand_calibration(**KNOWN).save(path)
    return path


def _round(calibration_file, action, **options):
    """One step of a 3-device env on the known surrogate, with the channel's rates replaced by ``UPLINK``/``DOWNLINK``
    and no noise; returns (env, reward, info)."""
    env = FedPEATEnv(num_devices=3, cost_profile="embedded", compression_levels=(0.0, 0.5), rank_levels=(2, 4, 8),
                     memory_tiers=(2.0,), partition="iid", calibration=str(calibration_file), target_perplexity=120.0,
                     **({"availability": "always"} | options))
    env.reset(seed=0)
    d = env.dynamics
    d._draw_round = lambda: (UPLINK.copy(), DOWNLINK.copy())  # known rates; the surrogate's noise stays 0
    _, reward, _, _, info = env.step(np.asarray(action))
    return env, reward, info


def _by_hand(env, action, ranks=None):
    """Bytes, latencies Q_i and memory use of the active devices of ``action``, from the env's size tables."""
    t = env.dynamics.tables
    active = [i for i, a in enumerate(action[:3]) if a > 0]
    rank = ranks or [len(t.adapter_bytes) - 1] * 3
    down = {i: t.emulator_bytes[action[i]] + t.adapter_bytes[rank[i]] for i in active}  # first round: every one exchanges
    up = {i: t.adapter_bytes[rank[i]] for i in active}
    use = {i: t.memory_bytes[action[i], rank[i]] / env.dynamics.state.allowed[0, i] for i in active}
    return active, down, up, use


def test_each_term_of_the_default_reward_by_hand(calibration_file):
    action = [1, 2, 0]  # device 0 on the full model, device 1 at ε = 0.5, device 2 idle
    env, reward, info = _round(calibration_file, action)
    active, down, up, use = _by_hand(env, action)
    q = {i: 8 * down[i] / DOWNLINK[i] + 8 * up[i] / UPLINK[i] for i in active}  # "sum": whole downlink each
    q_ref = env.dynamics.reference_latency_s
    w = RewardWeights()
    # surrogate: shares 1/3 each (IID), trainers' share 2/3, ε̄ = (0 + 0.5)/2 = 0.25 → plateau 120, rank 8 (no factor)
    s, plateau, gap0, gap = 2 / 3, 120.0, 300.0 - 120.0, 300.0 - 120.0
    ppl = plateau + gap0 * ((gap / gap0) ** (-1 / 0.5) + 2.0 * s**0.5) ** (-0.5)
    expected = {
        "perplexity": -w.perplexity * max(ppl - 120.0, 0.0) / (300.0 - 120.0),
        "latency": -w.latency * sum(min(q[i] / q_ref, 10.0) for i in active) / 3,
        "exchanges": -w.exchanges * 2 / 3,
        "memory": -w.memory * sum(use.values()) / 3,
        "memory_penalty": 0.0,
        "exchange_penalty": 0.0,
        "availability_penalty": 0.0,
    }
    assert info["perplexity"] == pytest.approx(ppl)
    assert info["round_latency_s"] == pytest.approx(q[0] + q[1])
    assert info["share"] == pytest.approx(s) and info["compression"] == pytest.approx(0.25)
    for name in REWARD_TERMS:
        assert info[f"reward_{name}"] == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name
    assert reward == pytest.approx(sum(expected.values()))


def test_max_latency_splits_the_downlink_and_mean_memory(calibration_file):
    action = [1, 2, 1]
    env, _, info = _round(calibration_file, action, latency_aggregation="max", memory_aggregation="mean")
    active, down, up, use = _by_hand(env, action)
    q = {i: 8 * down[i] / (DOWNLINK[i] / 3) + 8 * up[i] / UPLINK[i] for i in active}  # three devices share the band
    q_ref = env.dynamics.reference_latency_s
    assert info["round_latency_s"] == pytest.approx(max(q.values()))
    assert info["reward_latency"] == pytest.approx(-0.5 * min(max(q.values()) / q_ref, 10.0))
    assert info["reward_memory"] == pytest.approx(-0.2 * np.mean(list(use.values())))


def test_penalties_by_hand(calibration_file):
    # devices too small for the full model: selected anyway, they are dropped and penalised, and exchange nothing
    env = FedPEATEnv(num_devices=3, cost_profile="embedded", compression_levels=(0.0, 0.5), memory_tiers=(0.8,),
                     calibration=str(calibration_file), horizon=4, target_perplexity=2.0, availability="always")
    env.reset(seed=0)
    masks = env.action_masks().reshape(3, 3)
    assert not masks[:, 1].any() and masks[:, 2].all()  # η · 0.8 × the full footprint holds ε = 0.5 only
    _, _, _, _, info = env.step(np.array([1, 1, 2]))
    assert (info["memory_violations"], info["exchanges"]) == (2, 1)
    assert info["reward_memory_penalty"] == pytest.approx(-2.0 * RewardWeights().memory_penalty)
    # exchange budget κ·T = 0.25 · 4 = 1 per device: its second and third exchanges are penalised, idling is free
    env = FedPEATEnv(num_devices=3, cost_profile="embedded", compression_levels=(0.0, 0.5), memory_tiers=(2.0,),
                     calibration=str(calibration_file), horizon=4, exchange_fraction=0.25, target_perplexity=2.0,
                     availability="always")
    env.reset(seed=0)
    steps = [env.step(np.array([level, 0, 0]))[4] for level in (1, 2, 0, 1)]
    assert [i["exchanges"] for i in steps] == [1, 1, 0, 1]
    assert [i["reward_exchange_penalty"] for i in steps] == [0.0, -0.5, 0.0, -0.5]


def test_an_unavailable_device_is_dropped_penalised_and_keeps_what_it_holds(calibration_file):
    # on = off = 1: every device's availability flips every round, so who is available next round is known
    env = FedPEATEnv(num_devices=3, cost_profile="embedded", compression_levels=(0.0, 0.5), memory_tiers=(2.0,),
                     calibration=str(calibration_file), horizon=6, target_perplexity=2.0, partition="iid",
                     availability="markov", availability_off_rate=1.0, availability_on_rate=1.0)
    d = env.dynamics
    seed = next(s for s in range(50) if env.reset(seed=s) and 0 < d.available[0].sum() < 3)  # both kinds at the start
    env.reset(seed=seed)
    first = d.available[0].copy()
    masks = env.action_masks().reshape(3, 3)
    np.testing.assert_array_equal(masks[:, 1:], np.repeat(first[:, None], 2, axis=1))  # only level 0 when away
    up = int(np.flatnonzero(first)[0])
    action = np.zeros(3, dtype=np.int64)
    action[up] = 1
    _, _, _, _, info = env.step(action)
    assert d.held[0, up] == 1 and info["participants"] == 1
    np.testing.assert_array_equal(d.available[0], ~first)  # every chain flipped
    ppl = info["perplexity"]
    action = np.zeros(3, dtype=np.int64)
    action[up] = 2  # now away: dropped like a memory overflow, charged, keeps its emulator
    _, reward, _, _, info = env.step(action)
    assert (info["unavailable"], info["memory_violations"], info["participants"], info["exchanges"]) == (1, 0, 0, 0)
    assert info["reward_availability_penalty"] == pytest.approx(-RewardWeights().availability_penalty)
    assert d.held[0, up] == 1 and info["perplexity"] == ppl and info["round_latency_s"] == 0.0
    assert reward == pytest.approx(sum(reward_terms(info).values()))


def test_server_joins_the_round_share_and_compression(calibration_file):
    action = [2, 0, 0]
    env, _, info = _round(calibration_file, action, server_fraction=0.4)
    device_share = 0.6 / 3
    s = 0.4 + device_share
    assert info["share"] == pytest.approx(s)
    assert info["compression"] == pytest.approx(device_share * 0.5 / s)  # the server trains the full model
    assert info["participants"] == 1
    # nobody selected: the server still trains, the perplexity moves, no latency
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(3, dtype=np.int64))
    assert info["share"] == pytest.approx(0.4) and info["perplexity"] < 300.0 and info["round_latency_s"] == 0.0


def test_a_smaller_rank_learns_more_slowly(calibration_file):
    env, _, info8 = _round(calibration_file, [1, 1, 1, 2, 2, 2], control_rank=True)
    env, _, info2 = _round(calibration_file, [1, 1, 1, 0, 0, 0], control_rank=True)
    cal = hand_calibration(**KNOWN)
    expected = {r: float(cal.mean_step(np.array([[300.0, 300.0, 300.0]]), np.array([1.0]), np.array([0.0]), np.array([r]),
                                       np.array([[1.0, 0.0, 0.0]]), np.array([0.0]))[0, 0]) for r in (2, 8)}
    assert info8["perplexity"] == pytest.approx(expected[8]) and info2["perplexity"] == pytest.approx(expected[2])
    # every device on the full model, all the data: one round of (r/r_max)^ρ · a effective rounds from the start
    assert expected[2] == pytest.approx(100.0 + 200.0 * (1 + 2.0 * (2 / 8) ** 0.3) ** (-0.5))
    assert expected[8] == pytest.approx(100.0 + 200.0 * (1 + 2.0) ** (-0.5))
    assert info2["perplexity"] > info8["perplexity"]


def test_reward_table_of_the_docstring_names_the_terms():
    rows = re.findall(r"^\s*\| (\w+) \| −", FedPEATEnv.__doc__, flags=re.M)
    assert tuple(rows) == REWARD_TERMS


def test_weights_reject_wrong_types():
    with pytest.raises(ValueError, match="reward weight latency must be a finite number >= 0"):
        RewardWeights(latency="high")
    with pytest.raises(ValueError, match="reward weight memory must be a finite number >= 0"):
        RewardWeights(memory=-1.0)
    assert math.isclose(RewardWeights().record()["latency"], 0.5)
