"""The wireless + memory cost model: path loss, Rayleigh fading, Shannon rates, latency and training memory.

NumPy, and numba for the channel's round; torch only inside the two functions that count tensor bytes and
parameters (the surrogate env imports this module without torch). No Gymnasium / SB3 dependency.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal

import numba
import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

# Thermal noise PSD at 290 K, kT = -174 dBm/Hz (3GPP TR 36.814, Annex A.2.1 simulation assumptions).
NOISE_PSD_DBM_PER_HZ: float = -174.0


def _out(x: np.ndarray) -> float | np.ndarray:
    """Return a Python float for 0-d results, the array otherwise."""
    arr = np.asarray(x, dtype=float)
    return float(arr) if arr.ndim == 0 else arr


def _checked(name: str, x: float | np.ndarray, *, strict: bool) -> np.ndarray:
    """``x`` as a float array, ValueError unless all > 0 (strict) or >= 0 (NaN always rejected)."""
    arr = np.asarray(x, dtype=float)
    if not np.all(arr > 0 if strict else arr >= 0):
        raise ValueError(f"{name} must be {'>' if strict else '>='} 0, got {x!r}")
    return arr


def dbm_to_w(dbm: float | np.ndarray) -> float | np.ndarray:
    """Power in dBm -> watts."""
    return _out(10.0 ** ((np.asarray(dbm, dtype=float) - 30.0) / 10.0))


def w_to_dbm(w: float | np.ndarray) -> float | np.ndarray:
    """Power in watts (> 0) -> dBm."""
    return _out(10.0 * np.log10(_checked("w", w, strict=True)) + 30.0)


def db_to_linear(db: float | np.ndarray) -> float | np.ndarray:
    """Ratio in dB -> linear ratio."""
    return _out(10.0 ** (np.asarray(db, dtype=float) / 10.0))


def linear_to_db(x: float | np.ndarray) -> float | np.ndarray:
    """Linear ratio (> 0) -> dB."""
    return _out(10.0 * np.log10(_checked("x", x, strict=True)))


def noise_psd_w_per_hz(noise_figure_db: float = 9.0) -> float:
    """Receiver noise PSD in W/Hz: -174 dBm/Hz thermal noise plus the noise figure (dB, >= 0)."""
    if not noise_figure_db >= 0:
        raise ValueError(f"noise_figure_db must be >= 0 dB, got {noise_figure_db!r}")
    return float(dbm_to_w(NOISE_PSD_DBM_PER_HZ + noise_figure_db))


def path_loss_db(distance_m: float | np.ndarray) -> float | np.ndarray:
    """Urban-macro path loss in dB, 3GPP TR 36.814 (Annex A.2.1.1): 128.1 + 37.6*log10(d_km), d in metres (> 0)."""
    return _out(_path_loss_db(_checked("distance_m", distance_m, strict=True)))


def _path_loss_db(d_m):
    """Unchecked path loss, for callers that validated their distances (the channel draws them in a valid range)."""
    return 128.1 + 37.6 * np.log10(d_m / 1000.0)


def shannon_rate(bandwidth_hz: float | np.ndarray, tx_power_w: float | np.ndarray, channel_gain: float | np.ndarray,
                 noise_psd_w_per_hz: float | np.ndarray) -> float | np.ndarray:
    """Shannon capacity r = B*log2(1 + p*g / (N0*B)) in bit/s, broadcast over all arguments.

    bandwidth_hz > 0 (Hz), tx_power_w >= 0 (W), channel_gain >= 0 (linear), noise_psd_w_per_hz > 0 (W/Hz).
    """
    b = _checked("bandwidth_hz", bandwidth_hz, strict=True)
    p = _checked("tx_power_w", tx_power_w, strict=False)
    g = _checked("channel_gain", channel_gain, strict=False)
    n0 = _checked("noise_psd_w_per_hz", noise_psd_w_per_hz, strict=True)
    return _out(_shannon(b, p, g, n0))


def _shannon(b, p, g, n0):
    """Unchecked Shannon rate, for callers that validated their arguments once (the channel's hot path)."""
    return b * np.log2(1.0 + p * g / (n0 * b))


_shannon_compiled = numba.njit(cache=True)(_shannon)  # the same formulas on scalars, in compiled channel code
_path_loss_compiled = numba.njit(cache=True)(_path_loss_db)
LARGE_CHANNEL = 1024
"""Channels of at least this many devices draw a round's normals with numba's ``Generator`` (the same numbers as
numpy's, ~2x faster per draw, ~9 us per call) and compute rates with numpy's vectorised log2; smaller ones draw
with numpy and run a round as one compiled call."""
_NO_DRAWS = np.empty((2, 0))  # ``_compiled_round`` without advancing the fading


@numba.njit(cache=True, error_model="numpy")
def _faded(h: float, rho: float, w: float) -> float:
    """One component of h <- rho*h + sqrt(1-rho^2)*w', w' ~ CN(0,1): the standard normal ``w`` scaled by 1/sqrt(2).
    rho = 0: a fresh CN(0,1) component."""
    return rho * h + math.sqrt(1.0 - rho**2) * (w / math.sqrt(2.0))


@numba.njit(cache=True, error_model="numpy")
def _gain(path_gain: float, h: np.ndarray, i: int) -> float:
    """Linear gain path_gain * |h_i|^2 of device i (``h`` (2, N): real and imaginary parts)."""
    return path_gain * (h[0, i] * h[0, i] + h[1, i] * h[1, i])


@numba.njit(cache=True, error_model="numpy")
def _place_devices(idx: np.ndarray, distances_drawn: np.ndarray, bandwidths_drawn: np.ndarray, normals: np.ndarray,
                   distances: np.ndarray, bandwidths: np.ndarray, path_loss: np.ndarray, path_gain: np.ndarray,
                   h: np.ndarray) -> np.ndarray:
    """Devices ``idx`` (n,) get the drawn distances and bandwidths (n,), a fresh CN(0,1) fading from ``normals``
    (2, n), and the path loss (dB) and linear path gain of their distance; returns their gains in dB (n,)."""
    gains_db = np.empty(len(idx))
    for j in range(len(idx)):
        i = idx[j]
        distances[i], bandwidths[i] = distances_drawn[j], bandwidths_drawn[j]
        h[0, i], h[1, i] = _faded(0.0, 0.0, normals[0, j]), _faded(0.0, 0.0, normals[1, j])
        path_loss[i] = _path_loss_compiled(distances[i])
        path_gain[i] = 10.0 ** (-path_loss[i] / 10.0)
        gains_db[j] = 10.0 * math.log10(_gain(path_gain[i], h, i))
    return gains_db


def _fading_draws(rng: np.random.Generator, n: int) -> np.ndarray:
    """(2, n) standard normals: the real parts, then the imaginary parts, of n CN(0,1) draws (unscaled)."""
    return rng.standard_normal((2, n))


_fading_draws_compiled = numba.njit(cache=True)(_fading_draws)  # the same draws, in numba (``LARGE_CHANNEL``)


@numba.njit(cache=True, error_model="numpy")
def _fade(h: np.ndarray, rho: float, w: np.ndarray) -> None:
    """Advance the fading ``h`` (2, N: real and imaginary parts) in place by one round with the standard normals
    ``w`` (2, N: real parts, imaginary parts)."""
    for k in range(2):
        for i in range(h.shape[1]):
            h[k, i] = _faded(h[k, i], rho, w[k, i])


@numba.njit(cache=True, error_model="numpy")
def _gains(h: np.ndarray, path_gain: np.ndarray, out: np.ndarray) -> None:
    """Linear gains path_gain*|h|^2 (N,) of the fading ``h`` (2, N), into ``out``."""
    for i in range(h.shape[1]):
        out[i] = _gain(path_gain[i], h, i)


@numba.njit(cache=True, error_model="numpy")
def _compiled_round(h: np.ndarray, rho: float, w: np.ndarray, path_gain: np.ndarray, uplink_hz: np.ndarray,
                    uplink_w: float, downlink_hz: float, downlink_w: float, n0: float, out: np.ndarray) -> None:
    """``_fade`` with ``w`` (none if it has no columns), then [gain, uplink rate, downlink rate] (3, N) into ``out``."""
    if w.shape[1]:
        _fade(h, rho, w)
    _gains(h, path_gain, out[0])
    for i in range(h.shape[1]):
        out[1, i] = _shannon_compiled(uplink_hz[i], uplink_w, out[0, i], n0)
        out[2, i] = _shannon_compiled(downlink_hz, downlink_w, out[0, i], n0)


LatencyAggregation = Literal["sum", "max"]
LATENCY_AGGREGATIONS: tuple[str, ...] = ("sum", "max")
"""How a round's device latencies Q_i combine, and how the downlink is shared:

| aggregation | round latency | downlink of device i |
|---|---|---|
| ``"sum"`` (FedPEAT: total latency of all devices) | Σ_i Q_i | the whole band: the server serves devices in turn |
| ``"max"`` (devices served at the same time) | max_i Q_i | band and power split equally between the n devices that download in the round: r_dl / n |
"""


@numba.njit(cache=True, error_model="numpy")
def _latency_s(downlink_bytes: float, uplink_bytes: float, downlink_rate_bps: float, uplink_rate_bps: float) -> float:
    """Q = 8*F_dl/r_dl + 8*F_ul/r_ul (s) of one device; a zero payload costs 0 s whatever its rate (unchecked: the
    env's compiled round and ``transmission_latency_s`` call it)."""
    q = 0.0
    if downlink_bytes > 0:
        q += 8.0 * downlink_bytes / downlink_rate_bps
    if uplink_bytes > 0:
        q += 8.0 * uplink_bytes / uplink_rate_bps
    return q


@numba.njit(cache=True, error_model="numpy")
def downlink_share(aggregation_is_max: bool, num_downloading: int) -> float:
    """Share of the downlink rate each downloading device gets (``LatencyAggregation``): 1 in turn, 1/n at once."""
    return 1.0 / max(num_downloading, 1) if aggregation_is_max else 1.0


def transmission_latency_s(downlink_bytes: float | np.ndarray, uplink_bytes: float | np.ndarray,
                           downlink_rate_bps: float | np.ndarray, uplink_rate_bps: float | np.ndarray) -> float | np.ndarray:
    """Communication latency Q = 8*F_dl/r_dl + 8*F_ul/r_ul in seconds (bytes, bit/s), broadcast over the arguments.

    A zero payload costs 0 s whatever its rate; a positive payload needs a positive rate.
    """
    arrays = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in
                                   (downlink_bytes, uplink_bytes, downlink_rate_bps, uplink_rate_bps)))
    for name, size, rate_name, rate in (("downlink_bytes", arrays[0], "downlink_rate_bps", arrays[2]),
                                        ("uplink_bytes", arrays[1], "uplink_rate_bps", arrays[3])):
        _checked(name, size, strict=False)
        if not np.all(rate[size > 0] > 0):
            raise ValueError(f"{rate_name} must be > 0 where {name} > 0, got {rate!r}")
    flat = [a.ravel() for a in arrays]
    q = np.array([_latency_s(*values) for values in zip(*(f.tolist() for f in flat))]).reshape(arrays[0].shape)
    return _out(q)


def round_latency_s(device_latencies_s: Iterable[float], aggregation: LatencyAggregation) -> float:
    """A round's latency from its participants' Q_i (s): their sum or their maximum (0 without participants)."""
    if aggregation not in LATENCY_AGGREGATIONS:
        raise ValueError(f"latency aggregation must be one of {LATENCY_AGGREGATIONS}, got {aggregation!r}")
    values = list(device_latencies_s)
    return float(sum(values) if aggregation == "sum" else max(values, default=0.0))


def tensor_bytes(tensors: Mapping[str, torch.Tensor] | Iterable[torch.Tensor] | torch.Tensor) -> int:
    """Bytes held by the given tensors: sum of numel * element_size (a state dict, an iterable, or one tensor)."""
    import torch

    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    elif isinstance(tensors, Mapping):
        tensors = tensors.values()
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor_bytes expects torch.Tensor items, got {type(t).__name__}")
        total += t.numel() * t.element_size()
    return total


@dataclass(frozen=True)
class ChannelConfig:
    """Cell geometry and radio parameters (distances in m, bandwidths in Hz, powers in dBm)."""

    min_distance_m: float = 50.0
    max_distance_m: float = 500.0
    fading_correlation: float = 0.9  # Gauss-Markov rho per round (0 = i.i.d. Rayleigh)
    noise_figure_db: float = 9.0
    uplink_bandwidth_hz: tuple[float, float] = (1e6, 5e6)  # per-device draw range (uniform)
    uplink_power_dbm: float = 23.0  # UE power class 23 dBm, 3GPP TR 36.814 Annex A.2.1
    downlink_bandwidth_hz: float = 20e6
    downlink_power_dbm: float = 40.0

    def __post_init__(self) -> None:
        for f in fields(self):  # every setting a finite number (NaN passes the negated range checks below)
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise ValueError(f"{f.name} must be {'finite numbers' if isinstance(value, tuple) else 'a finite number'}"
                                 f", got {value!r}")
        if not self.min_distance_m > 0:
            raise ValueError(f"min_distance_m must be > 0 m, got {self.min_distance_m!r}")
        if not self.max_distance_m >= self.min_distance_m:
            raise ValueError(f"max_distance_m must be >= min_distance_m ({self.min_distance_m}), got {self.max_distance_m!r}")
        if not 0 <= self.fading_correlation < 1:
            raise ValueError(f"fading_correlation must be in [0, 1), got {self.fading_correlation!r}")
        if not self.noise_figure_db >= 0:
            raise ValueError(f"noise_figure_db must be >= 0 dB, got {self.noise_figure_db!r}")
        bw = self.uplink_bandwidth_hz
        if len(bw) != 2 or not 0 < bw[0] <= bw[1]:
            raise ValueError(f"uplink_bandwidth_hz must be a (low, high) pair with 0 < low <= high, got {bw!r}")
        if not self.downlink_bandwidth_hz > 0:
            raise ValueError(f"downlink_bandwidth_hz must be > 0 Hz, got {self.downlink_bandwidth_hz!r}")
        for name in ("uplink_power_dbm", "downlink_power_dbm"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite dBm value, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ChannelState:
    """One round's per-device channel, arrays of shape (N,) (read-only copies)."""

    gain: np.ndarray  # linear channel power gain g = 10^(-PL/10) * |h|^2
    uplink_rate_bps: np.ndarray
    downlink_rate_bps: np.ndarray


class WirelessChannel:
    """Per-device path loss (fixed distances) x Rayleigh fading |h|^2 ~ Exp(1) with Gauss-Markov time correlation:
    h_{t+1} = rho*h_t + sqrt(1-rho^2)*w_t, h, w ~ CN(0,1), so the marginal of |h|^2 stays Exp(1).

    Uplink and downlink see the same gain (reciprocity). Each device's uplink uses its own bandwidth; the downlink
    rate given is that of the whole downlink band (``downlink_share`` splits it when devices are served at once).
    All randomness comes from ``rng``: distances, then uplink bandwidths, then the initial fading, then one CN(0,1)
    vector per ``step`` (its N real parts, then its N imaginary parts). A round costs a few compiled / vectorised
    calls for any number of devices (see ``LARGE_CHANNEL``).
    """

    def __init__(self, num_devices: int, config: ChannelConfig, rng: np.random.Generator) -> None:
        if isinstance(num_devices, bool) or not isinstance(num_devices, (int, np.integer)) or num_devices < 1:
            raise ValueError(f"num_devices must be an integer >= 1, got {num_devices!r}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.num_devices = int(num_devices)
        self.large = self.num_devices >= LARGE_CHANNEL  # draws in numba, rates with numpy (``LARGE_CHANNEL``)
        self.config = config
        self._rng = rng
        n = self.num_devices
        self.distances_m, self.uplink_bandwidth_hz, self._path_loss, self._path_gain = (np.empty(n) for _ in range(4))
        self.path_loss_db = self._path_loss.view()
        self.path_loss_db.flags.writeable = False  # the linear path gain is derived from it when a device is drawn
        self._h = np.empty((2, n))  # fading: real and imaginary parts
        self._draw(np.arange(n))
        self._bind()

    def _bind(self) -> None:
        """The Shannon rates' arguments (constructor-validated: the unchecked formula is safe), over this channel's own
        bandwidth array."""
        config = self.config
        self._links = (self.uplink_bandwidth_hz, float(dbm_to_w(config.uplink_power_dbm)),
                       float(config.downlink_bandwidth_hz), float(dbm_to_w(config.downlink_power_dbm)),
                       noise_psd_w_per_hz(config.noise_figure_db))

    def fork(self, rng: np.random.Generator) -> WirelessChannel:
        """A copy with its own per-device arrays (the same distances, bandwidths and fading state) that draws from
        ``rng``: what a planner simulates on without touching this channel or its stream."""
        twin = copy.copy(self)
        for name in self._ARRAYS:
            setattr(twin, name, getattr(self, name).copy())
        twin.path_loss_db = twin._path_loss.view()
        twin.path_loss_db.flags.writeable = False
        twin._rng = rng
        twin._bind()
        return twin

    def _draw(self, idx: np.ndarray) -> np.ndarray:
        """Draw the devices ``idx``: distances, then bandwidths, then fading; returns their gains in dB."""
        n, cfg, rng = len(idx), self.config, self._rng
        draws = (rng.uniform(cfg.min_distance_m, cfg.max_distance_m, n), rng.uniform(*cfg.uplink_bandwidth_hz, n),
                 _fading_draws(rng, n))
        return _place_devices(idx, *draws, self.distances_m, self.uplink_bandwidth_hz, self._path_loss, self._path_gain,
                              self._h)

    def reset_devices(self, devices: np.ndarray) -> np.ndarray:
        """Redraw distance, uplink bandwidth and fading of the given devices (indices or boolean mask), in the
        same order as the constructor (distances, bandwidths, fading), e.g. a new episode of a vectorised env;
        returns their gains in dB."""
        devices = np.asarray(devices)
        return self._draw(np.flatnonzero(devices) if devices.dtype == bool else devices.astype(np.int64))

    def _normals(self) -> np.ndarray:
        """A round's fading draws (2, N)."""
        return (_fading_draws_compiled if self.large else _fading_draws)(self._rng, self.num_devices)

    def _round_into(self, advance: bool, out: np.ndarray) -> None:
        """Advance the fading by one round if ``advance``; write [gain, uplink rate, downlink rate] (3, N) into
        ``out``."""
        rho = float(self.config.fading_correlation)
        if not self.large:
            _compiled_round(self._h, rho, self._normals() if advance else _NO_DRAWS, self._path_gain, *self._links, out)
            return
        if advance:
            _fade(self._h, rho, self._normals())
        _gains(self._h, self._path_gain, out[0])
        up_hz, up_w, down_hz, down_w, n0 = self._links
        # ``_shannon`` step by step in place (the same operations in the same order: the same bits), no temporaries
        for row, hz, w in ((1, up_hz, up_w), (2, down_hz, down_w)):
            rate = out[row]
            np.multiply(w, out[0], out=rate)
            np.divide(rate, np.multiply(n0, hz), out=rate)
            np.add(1.0, rate, out=rate)
            np.log2(rate, out=rate)
            np.multiply(hz, rate, out=rate)

    def _state(self, advance: bool) -> ChannelState:
        """``_round_into`` a fresh array, returned read-only as a ``ChannelState``."""
        out = np.empty((3, self.num_devices))
        self._round_into(advance, out)
        out.flags.writeable = False  # fresh, never aliased
        return ChannelState(gain=out[0], uplink_rate_bps=out[1], downlink_rate_bps=out[2])

    def current(self) -> ChannelState:
        """State of the current fading draw (draws no randomness)."""
        return self._state(False)

    def step(self) -> ChannelState:
        """Advance the fading by one round (one CN(0,1) draw per device), then return the new state."""
        return self._state(True)

    def step_into(self, out: np.ndarray) -> None:
        """``step`` writing [gain, uplink rate (bit/s), downlink rate (bit/s)] into the caller's float64 array
        ``out`` (3, N) instead of a new ``ChannelState``: for loops that step millions of rounds."""
        if out.shape != (3, self.num_devices) or out.dtype != np.float64:
            raise ValueError(f"out must be a float64 array of shape (3, {self.num_devices}), got {out.dtype} {out.shape}")
        self._round_into(True, out)

    _ARRAYS = ("distances_m", "uplink_bandwidth_hz", "_path_loss", "_path_gain", "_h")
    """Per-device arrays drawn by the constructor / ``reset_devices`` and advanced by ``step`` (``state_dict``)."""

    def state_dict(self) -> dict:
        """Everything drawn or advanced so far, for checkpoints: ``"rng"`` (the generator's state, JSON-ready) and
        copies of the per-device arrays (distances, bandwidths, path loss and gain, fading)."""
        return {"rng": self._rng.bit_generator.state, **{name: getattr(self, name).copy() for name in self._ARRAYS}}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s output: the next ``step`` draws what it would have drawn."""
        for name in self._ARRAYS:
            target, value = getattr(self, name), np.asarray(state[name], dtype=float)
            if value.shape != target.shape:
                raise ValueError(f"channel state {name} must have shape {target.shape}, got {value.shape}")
        for name in self._ARRAYS:
            getattr(self, name)[...] = state[name]  # in place: ``path_loss_db`` and the rate arguments are views of them
        self._rng.bit_generator.state = state["rng"]

    def gain_db(self) -> np.ndarray:
        """Current channel power gain in dB, shape (N,)."""
        g = np.empty(self.num_devices)
        _gains(self._h, self._path_gain, g)
        return 10.0 * np.log10(g)


@dataclass(frozen=True)
class MemoryFootprint:
    """On-device training memory, in bytes."""

    weights_bytes: int  # frozen weights (emulator) held on device
    adapter_bytes: int  # trainable parameters
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.adapter_bytes + self.gradient_bytes + self.optimizer_bytes + self.activation_bytes


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def training_memory(frozen_params: int, trainable_params: int, *, batch_size: int, seq_len: int, d_model: int,
                    num_blocks: int, num_heads: int, vocab_size: int, bytes_per_value: int = 4,
                    optimizer_states: int = 2) -> MemoryFootprint:
    """Memory (bytes) to fine-tune a transformer: weights, adapter, gradients, optimiser states and activations.

    Activations stored for backward follow Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
    Transformer Models", Sec. 4.1 (no recomputation), in values per block: s*b*d*17 + 2.5*a*s^2*b (their 34 sbh +
    5 a s^2 b bytes at 2 bytes/value); plus the logits and their softmax, 2*b*s*V values. AdamW keeps 2 states.
    """
    _check_int("frozen_params", frozen_params, 0)
    _check_int("trainable_params", trainable_params, 0)
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("d_model", d_model),
                        ("num_blocks", num_blocks), ("num_heads", num_heads), ("vocab_size", vocab_size),
                        ("bytes_per_value", bytes_per_value)):
        _check_int(name, value, 1)
    _check_int("optimizer_states", optimizer_states, 0)
    b, s, d, a, v, bpv = (int(x) for x in (batch_size, seq_len, d_model, num_heads, vocab_size, bytes_per_value))
    # Twice the activation value count, kept integer so that 2.5*a*s^2*b stays exact; rounded up to whole bytes.
    twice_values = int(num_blocks) * (34 * b * s * d + 5 * a * s * s * b) + 4 * b * s * v
    return MemoryFootprint(
        weights_bytes=int(frozen_params) * bpv,
        adapter_bytes=int(trainable_params) * bpv,
        gradient_bytes=int(trainable_params) * bpv,
        optimizer_bytes=int(optimizer_states) * int(trainable_params) * bpv,
        activation_bytes=(twice_values * bpv + 1) // 2,
    )


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(frozen, trainable) parameter counts of ``module``, split by ``requires_grad`` (shared tensors counted once)."""
    params = list(module.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return sum(p.numel() for p in params) - trainable, trainable
