"""Tests of the wireless + memory cost model (federation.system)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from federation.system import (
    NOISE_PSD_DBM_PER_HZ,
    ChannelConfig,
    ChannelState,
    MemoryFootprint,
    WirelessChannel,
    count_parameters,
    db_to_linear,
    dbm_to_w,
    linear_to_db,
    noise_psd_w_per_hz,
    path_loss_db,
    shannon_rate,
    tensor_bytes,
    training_memory,
    transmission_latency_s,
    w_to_dbm,
)

N0_NO_NF = 10.0 ** ((-174.0 - 30.0) / 10.0)  # -174 dBm/Hz in W/Hz


# ---------------------------------------------------------------- unit conversions


def test_conversions() -> None:
    assert NOISE_PSD_DBM_PER_HZ == -174.0
    assert dbm_to_w(30.0) == pytest.approx(1.0)
    assert dbm_to_w(23.0) == pytest.approx(0.19952623, rel=1e-7)
    assert w_to_dbm(0.001) == pytest.approx(0.0, abs=1e-12)
    assert db_to_linear(20.0) == pytest.approx(100.0)
    assert linear_to_db(1000.0) == pytest.approx(30.0)
    assert isinstance(dbm_to_w(0.0), float)
    np.testing.assert_allclose(dbm_to_w(np.array([0.0, 10.0, 30.0])), [1e-3, 1e-2, 1.0])
    with pytest.raises(ValueError, match="^w must"):
        w_to_dbm(-1.0)
    with pytest.raises(ValueError, match="^x must"):
        linear_to_db(0.0)


def test_noise_psd() -> None:
    assert noise_psd_w_per_hz(0.0) == pytest.approx(N0_NO_NF, rel=1e-12)
    assert noise_psd_w_per_hz(9.0) == pytest.approx(N0_NO_NF * 10.0**0.9, rel=1e-12)
    assert noise_psd_w_per_hz() == noise_psd_w_per_hz(9.0)
    with pytest.raises(ValueError, match="noise_figure_db"):
        noise_psd_w_per_hz(-1.0)


def test_path_loss() -> None:
    assert path_loss_db(1000.0) == 128.1
    assert path_loss_db(100.0) == 128.1 - 37.6
    np.testing.assert_allclose(path_loss_db(np.array([100.0, 1000.0, 10000.0])), [90.5, 128.1, 165.7])
    for bad in (0.0, -5.0, np.array([100.0, 0.0]), float("nan")):
        with pytest.raises(ValueError, match="distance_m"):
            path_loss_db(bad)


# ---------------------------------------------------------------- Shannon rate and latency


def test_shannon_rate_hand_computation() -> None:
    b, p, g = 1e6, 0.2, 1e-10
    snr = p * g / (N0_NO_NF * b)  # 0.2e-10 / (3.98e-21 * 1e6) ~ 5024
    expected = b * math.log2(1.0 + snr)
    assert shannon_rate(b, p, g, noise_psd_w_per_hz(0.0)) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(12.295e6, rel=1e-3)
    assert shannon_rate(b, 0.0, g, N0_NO_NF) == 0.0
    assert isinstance(shannon_rate(b, p, g, N0_NO_NF), float)


def test_shannon_rate_broadcasts() -> None:
    b = np.array([1e6, 2e6, 5e6])
    g = np.array([1e-10, 1e-11, 1e-12])
    out = shannon_rate(b, 0.2, g, N0_NO_NF)
    assert isinstance(out, np.ndarray) and out.shape == (3,)
    expected = [bi * math.log2(1.0 + 0.2 * gi / (N0_NO_NF * bi)) for bi, gi in zip(b, g, strict=True)]
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    # (3,) x (2, 1) -> (2, 3)
    assert shannon_rate(b, np.array([[0.1], [0.2]]), 1e-10, N0_NO_NF).shape == (2, 3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"bandwidth_hz": 0.0}, "bandwidth_hz"),
        ({"bandwidth_hz": np.array([1e6, -1.0])}, "bandwidth_hz"),
        ({"tx_power_w": -0.1}, "tx_power_w"),
        ({"channel_gain": -1e-10}, "channel_gain"),
        ({"noise_psd_w_per_hz": 0.0}, "noise_psd_w_per_hz"),
    ],
)
def test_shannon_rate_errors(kwargs: dict, name: str) -> None:
    args = {"bandwidth_hz": 1e6, "tx_power_w": 0.2, "channel_gain": 1e-10, "noise_psd_w_per_hz": N0_NO_NF}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        shannon_rate(**args)


def test_transmission_latency() -> None:
    # 1 MB down at 8 Mbit/s (1 s) + 0.5 MB up at 2 Mbit/s (2 s)
    assert transmission_latency_s(1e6, 5e5, 8e6, 2e6) == pytest.approx(3.0)
    assert transmission_latency_s(0, 0, 0.0, 0.0) == 0.0  # nothing to send: rates irrelevant
    assert transmission_latency_s(1e6, 0, 8e6, 0.0) == pytest.approx(1.0)
    out = transmission_latency_s(np.array([0.0, 1e6, 2e6]), 1e6, np.array([0.0, 4e6, 8e6]), 8e6)
    np.testing.assert_allclose(out, [1.0, 3.0, 3.0])
    with pytest.raises(ValueError, match="downlink_bytes"):
        transmission_latency_s(-1, 0, 1e6, 1e6)
    with pytest.raises(ValueError, match="uplink_bytes"):
        transmission_latency_s(0, np.array([1.0, -1.0]), 1e6, 1e6)
    with pytest.raises(ValueError, match="downlink_rate_bps"):
        transmission_latency_s(10, 0, 0.0, 1e6)
    with pytest.raises(ValueError, match="uplink_rate_bps"):
        transmission_latency_s(0, np.array([0.0, 5.0]), 1e6, np.array([1e6, -1e6]))


def test_tensor_bytes() -> None:
    tensors = {
        "a": torch.zeros(10, 3, dtype=torch.float32),  # 120
        "b": torch.zeros(7, dtype=torch.float16),  # 14
        "c": torch.zeros(2, 2, dtype=torch.int64),  # 32
    }
    assert tensor_bytes(tensors) == 166
    assert tensor_bytes(list(tensors.values())) == 166
    assert tensor_bytes(t for t in tensors.values()) == 166
    assert tensor_bytes(nn.Linear(4, 3).state_dict()) == (12 + 3) * 4
    assert tensor_bytes({}) == 0


# ---------------------------------------------------------------- channel


def _gains(seed: int, steps: int = 5, **cfg) -> np.ndarray:
    ch = WirelessChannel(4, ChannelConfig(**cfg), np.random.default_rng(seed))
    return np.stack([ch.step().gain for _ in range(steps)])


def test_channel_reproducible() -> None:
    np.testing.assert_array_equal(_gains(7), _gains(7))
    assert not np.array_equal(_gains(7), _gains(8))


def test_channel_state_shapes_and_consistency() -> None:
    cfg = ChannelConfig()
    ch = WirelessChannel(6, cfg, np.random.default_rng(0))
    assert np.all((ch.distances_m >= 50.0) & (ch.distances_m <= 500.0))
    assert np.all((ch.uplink_bandwidth_hz >= 1e6) & (ch.uplink_bandwidth_hz <= 5e6))
    np.testing.assert_allclose(ch.path_loss_db, 128.1 + 37.6 * np.log10(ch.distances_m / 1000.0))
    s0, s1 = ch.current(), ch.current()
    assert isinstance(s0, ChannelState)
    np.testing.assert_array_equal(s0.gain, s1.gain)  # current() draws nothing
    assert s0.gain.shape == s0.uplink_rate_bps.shape == s0.downlink_rate_bps.shape == (6,)
    np.testing.assert_allclose(ch.gain_db(), 10.0 * np.log10(s0.gain))
    n0 = noise_psd_w_per_hz(cfg.noise_figure_db)
    np.testing.assert_allclose(s0.uplink_rate_bps, shannon_rate(ch.uplink_bandwidth_hz, dbm_to_w(23.0), s0.gain, n0))
    np.testing.assert_allclose(s0.downlink_rate_bps, shannon_rate(20e6, dbm_to_w(40.0), s0.gain, n0))
    assert not np.array_equal(ch.step().gain, s0.gain)
    with pytest.raises(ValueError, match="num_devices"):
        WirelessChannel(0, cfg, np.random.default_rng(0))


def test_channel_step_draws_numpys_normals_and_matches_the_complex_model() -> None:
    cfg = ChannelConfig()
    ch, rng = WirelessChannel(5, cfg, np.random.default_rng(4)), np.random.default_rng(4)
    rng.uniform(size=10)  # distances and bandwidths
    h = (rng.standard_normal(5) + 1j * rng.standard_normal(5)) / math.sqrt(2.0)
    scale = 10.0 ** (-ch.path_loss_db / 10.0)
    for _ in range(3):
        h = 0.9 * h + math.sqrt(1 - 0.81) * (rng.standard_normal(5) + 1j * rng.standard_normal(5)) / math.sqrt(2.0)
        np.testing.assert_allclose(ch.step().gain, scale * np.abs(h) ** 2, rtol=1e-12)


def test_large_channels_take_the_vectorised_path_with_the_same_draws(monkeypatch) -> None:
    import federation.system as system

    def run(threshold: int) -> list[ChannelState]:
        monkeypatch.setattr(system, "LARGE_CHANNEL", threshold)
        ch = WirelessChannel(64, ChannelConfig(), np.random.default_rng(8))
        ch.reset_devices(np.arange(0, 64, 3))
        return [ch.current(), ch.step(), ch.step()]

    for small, large in zip(run(10**6), run(64)):
        np.testing.assert_array_equal(small.gain, large.gain)  # same normals (numba's Generator = numpy's stream)
        np.testing.assert_allclose(small.uplink_rate_bps, large.uplink_rate_bps, rtol=1e-14)
        np.testing.assert_allclose(small.downlink_rate_bps, large.downlink_rate_bps, rtol=1e-14)


@pytest.mark.parametrize("devices", [5, 64])
def test_step_into_writes_what_step_returns(monkeypatch, devices: int) -> None:
    import federation.system as system

    monkeypatch.setattr(system, "LARGE_CHANNEL", 64)  # 5 devices: compiled round; 64: vectorised path
    stepped, filled = (WirelessChannel(devices, ChannelConfig(), np.random.default_rng(4)) for _ in range(2))
    out = np.full((3, devices), np.nan)
    for _ in range(3):
        state = stepped.step()
        filled.step_into(out)
        np.testing.assert_array_equal(out, np.stack([state.gain, state.uplink_rate_bps, state.downlink_rate_bps]))
    with pytest.raises(ValueError, match=rf"out must be a float64 array of shape \(3, {devices}\)"):
        filled.step_into(np.empty((3, devices), dtype=np.float32))


def test_channel_restored_from_its_state_dict_steps_like_the_original() -> None:
    original = WirelessChannel(4, ChannelConfig(), np.random.default_rng(2))
    original.step()
    original.reset_devices(np.array([1]))  # drawn after construction: part of the state too
    state = original.state_dict()
    restored = WirelessChannel(4, ChannelConfig(), np.random.default_rng(99))
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.path_loss_db, original.path_loss_db)
    for _ in range(3):
        a, b = original.step(), restored.step()
        np.testing.assert_array_equal(np.stack([a.gain, a.uplink_rate_bps, a.downlink_rate_bps]),
                                      np.stack([b.gain, b.uplink_rate_bps, b.downlink_rate_bps]))
    with pytest.raises(ValueError, match=r"channel state distances_m must have shape \(3,\), got \(4,\)"):
        WirelessChannel(3, ChannelConfig(), np.random.default_rng(0)).load_state_dict(state)


def test_path_loss_is_read_only() -> None:
    ch = WirelessChannel(3, ChannelConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="read-only"):
        ch.path_loss_db[0] = 10.0


def _fading_samples(rho: float, devices: int = 500, steps: int = 400) -> np.ndarray:
    """|h|^2 = g / 10^(-PL/10), shape (steps, devices)."""
    ch = WirelessChannel(devices, ChannelConfig(fading_correlation=rho), np.random.default_rng(123))
    scale = 10.0 ** (-ch.path_loss_db / 10.0)
    return np.stack([ch.step().gain / scale for _ in range(steps)])


def _lag1_autocorr(x: np.ndarray) -> float:
    x = x - x.mean()
    return float((x[1:] * x[:-1]).mean() / (x * x).mean())


def test_fading_statistics() -> None:
    correlated, iid = _fading_samples(0.9), _fading_samples(0.0)
    assert correlated.mean() == pytest.approx(1.0, rel=0.05)
    assert iid.mean() == pytest.approx(1.0, rel=0.05)
    # Gauss-Markov: corr(|h_t|^2, |h_{t+1}|^2) = rho^2
    assert _lag1_autocorr(correlated) == pytest.approx(0.81, abs=0.05)
    assert abs(_lag1_autocorr(iid)) < 0.05
    assert _lag1_autocorr(correlated) > _lag1_autocorr(iid) + 0.5


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_distance_m": 0.0}, "min_distance_m"),
        ({"min_distance_m": 100.0, "max_distance_m": 50.0}, "max_distance_m"),
        ({"fading_correlation": 1.0}, "fading_correlation"),
        ({"fading_correlation": -0.1}, "fading_correlation"),
        ({"noise_figure_db": -1.0}, "noise_figure_db"),
        ({"uplink_bandwidth_hz": (5e6, 1e6)}, "uplink_bandwidth_hz"),
        ({"uplink_bandwidth_hz": (0.0, 1e6)}, "uplink_bandwidth_hz"),
        ({"downlink_bandwidth_hz": 0.0}, "downlink_bandwidth_hz"),
        ({"uplink_power_dbm": float("nan")}, "uplink_power_dbm"),
        ({"downlink_power_dbm": float("inf")}, "downlink_power_dbm"),
    ],
)
def test_channel_config_errors(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ChannelConfig(**kwargs)


# ---------------------------------------------------------------- memory


def test_training_memory_hand_computation() -> None:
    m = training_memory(1000, 100, batch_size=2, seq_len=8, d_model=16, num_blocks=2, num_heads=4, vocab_size=50)
    assert isinstance(m, MemoryFootprint)
    assert (m.weights_bytes, m.adapter_bytes, m.gradient_bytes, m.optimizer_bytes) == (4000, 400, 400, 800)
    # per block: 2*8*16*17 = 4352 + 2.5*4*8^2*2 = 1280 -> 5632 values; x2 blocks = 11264; logits 2*8*50*2 = 1600
    assert m.activation_bytes == (11264 + 1600) * 4 == 51456
    assert m.total_bytes == 4000 + 400 + 400 + 800 + 51456
    sgd = training_memory(10, 3, batch_size=1, seq_len=1, d_model=1, num_blocks=1, num_heads=1, vocab_size=1,
                          bytes_per_value=2, optimizer_states=0)
    # 17 + 2.5 + 2 = 21.5 values x 2 bytes = 43
    assert (sgd.weights_bytes, sgd.optimizer_bytes, sgd.activation_bytes) == (20, 0, 43)


@pytest.mark.parametrize("name", ["batch_size", "seq_len", "d_model", "num_blocks", "num_heads", "vocab_size",
                                  "bytes_per_value"])
def test_training_memory_errors(name: str) -> None:
    kwargs = {"batch_size": 2, "seq_len": 8, "d_model": 16, "num_blocks": 2, "num_heads": 4, "vocab_size": 50}
    kwargs[name] = 0
    with pytest.raises(ValueError, match=name):
        training_memory(1, 1, **kwargs)


def test_training_memory_param_errors() -> None:
    kwargs = {"batch_size": 2, "seq_len": 8, "d_model": 16, "num_blocks": 2, "num_heads": 4, "vocab_size": 50}
    with pytest.raises(ValueError, match="frozen_params"):
        training_memory(-1, 1, **kwargs)
    with pytest.raises(ValueError, match="trainable_params"):
        training_memory(1, -1, **kwargs)
    with pytest.raises(ValueError, match="optimizer_states"):
        training_memory(1, 1, optimizer_states=-1, **kwargs)


def test_count_parameters() -> None:
    lin = nn.Linear(4, 3)  # weight 12, bias 3
    lin.bias.requires_grad_(False)
    assert count_parameters(lin) == (3, 12)
    assert count_parameters(nn.Sequential(lin, nn.Linear(3, 2))) == (3, 12 + 8)


def test_reset_devices_redraws_only_the_given_devices():
    from federation.system import ChannelConfig, WirelessChannel

    channel = WirelessChannel(6, ChannelConfig(), np.random.default_rng(3))
    before = (channel.distances_m.copy(), channel.uplink_bandwidth_hz.copy(), channel.gain_db())
    channel.reset_devices(np.array([False, True, False, False, True, False]))
    after = (channel.distances_m, channel.uplink_bandwidth_hz, channel.gain_db())
    for old, new in zip(before, after):
        assert np.array_equal(old[[0, 2, 3, 5]], new[[0, 2, 3, 5]])
        assert not np.any(old[[1, 4]] == new[[1, 4]])
    assert np.allclose(channel.path_loss_db, 128.1 + 37.6 * np.log10(channel.distances_m / 1000.0))


def test_reset_devices_returns_their_gains() -> None:
    ch = WirelessChannel(6, ChannelConfig(), np.random.default_rng(1))
    ch.step()
    np.testing.assert_allclose(ch.reset_devices(np.array([4, 1])), ch.gain_db()[[4, 1]], rtol=1e-12)
    np.testing.assert_allclose(ch.gain_db(), 10.0 * np.log10(ch.current().gain), rtol=1e-12)
