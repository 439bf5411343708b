"""The FedPEAT round model for B parallel episodes. The single env runs it with B = 1, the vector env with
B = num_envs: one implementation of the observation, the costs and the reward, in compiled kernels (numba,
``cache=True``: the first use on a machine compiles for a few seconds, later processes load the cache).

Randomness: one PCG64 stream per seed. At reset, each episode draws its scenario (memory tiers, data shares,
distances, bandwidths, fading); every step draws one fading vector for all devices and one surrogate noise value per
episode, whatever the action, so every policy sees the same channel and noise on the same seed (common random
numbers). ``next_episodes`` starts the next episodes 2^80 draws further: they do not depend on what earlier episodes
drew.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np

from federation.system import WirelessChannel, dbm_to_w, noise_psd_w_per_hz, path_loss_db, shannon_rate
from fedpeat_env.config import EnvConfig
from fedpeat_env.costs import LevelCosts, level_costs

if TYPE_CHECKING:
    from fedpeat_env.surrogate import Calibration

GAIN_DB_CENTRE, GAIN_DB_SCALE = -100.0, 20.0  # gain normalisation: (g_dB + 100) / 20, clipped to [-3, 3]
REWARD_TERMS = ("perplexity", "latency", "exchanges", "memory", "memory_penalty", "exchange_penalty")
EPISODE_STRIDE = 2**80
"""Draws between the starts of consecutive ``next_episodes`` (PCG64's period is 2^128)."""
LATENCY_CAP = 10.0
"""The latency term saturates at 10 reference latencies: a round that slow has failed anyway, and without a cap a
deep Rayleigh fade during an emulator download cost single episodes −10,000 and swamped reward normalisation."""

# Rows of a round's result, an array (NUM_ROWS, B) float64. REWARD is the sum of rows TERMS .. TERMS + 5 (the
# reward terms in REWARD_TERMS order); PERPLEXITY and ROUND are after the round.
REWARD, TERMS, PERPLEXITY, LATENCY_S, EXCHANGES, VIOLATIONS, PARTICIPANTS, ROUND = 0, 1, 7, 8, 9, 10, 11, 12
MEMORY_USE, EXCESS_EXCHANGES, COMPRESSION, SHARE, NOISE, NUM_ROWS = 13, 14, 15, 16, 17, 18
"""LATENCY_S: max transmission latency over active devices (s). EXCHANGES, VIOLATIONS (selected but over η·capacity:
dropped), PARTICIPANTS (selected and within memory: trained): device counts. MEMORY_USE: mean memory / allowed
memory over active devices (0 if none). EXCESS_EXCHANGES: exchanges beyond each device's κ·T budget. COMPRESSION:
data-weighted ε of the active devices (0 if none); SHARE: their share of all device data; NOISE: the round's
standard normal of the surrogate."""

INFO_ROWS = (("perplexity", PERPLEXITY, float), ("round_latency_s", LATENCY_S, float), ("exchanges", EXCHANGES, int),
             ("memory_violations", VIOLATIONS, int), ("participants", PARTICIPANTS, int), ("round", ROUND, int))
"""(info key, result row, type) of the round numbers both envs report in ``info`` besides the reward terms."""


class Dynamics:
    """State and transition of B FedPEAT episodes (N devices, horizon T).

    Scenario, drawn at reset: ``allowed`` η·capacity (bytes), ``share`` data shares, ``headroom`` allowed / full-model
    footprint clipped to [0, 2] (B, N); ``masks`` (B, mask length). Each round: ``noise`` (B,) the surrogate's
    standard normals. Channel: ``channel``, a ``WirelessChannel`` of B·N devices (episode-major); ``gain_db`` (B, N) its
    current gains in dB. State: ``ppl``, ``t`` (B,); ``held`` emulator level, ``exchanges`` and ``participation``
    counts (B, N); ``active`` (B, N) the devices that trained in the last round.
    """

    def __init__(self, config: EnvConfig, batch: int, calibration: Calibration) -> None:
        self.config, self.batch = config, batch
        self.N, self.K = config.num_devices, len(config.compression_levels)
        self.ranks = config.rank_levels if config.control_rank else config.rank_levels[-1:]
        self.R = len(self.ranks)
        self.costs: LevelCosts = level_costs(config.cost_profile, config.compression_levels, self.ranks)
        # tables indexed by action level 0..K (0 = not selected)
        self.eps_table = np.concatenate([[0.0], self.costs.compression])
        self.held_eps_table = np.concatenate([[-1.0], self.costs.compression])  # observation: −1 = no emulator
        self.emulator_bytes = np.concatenate([[0.0], self.costs.emulator_bytes])
        self.memory_table = np.vstack([np.zeros((1, self.R)), self.costs.memory_bytes])
        self.target = float(config.target_perplexity or 1.1 * min(calibration.plateau_perplexity))
        self.initial_ppl = float(calibration.initial_perplexity)
        if not self.initial_ppl > self.target:
            raise ValueError(f"target_perplexity must be below the initial perplexity {self.initial_ppl:.1f}, got {self.target}")
        self.exchange_budget = config.exchange_fraction * config.horizon
        self.reference_latency_s = self._reference_latency()
        self.obs_dim = 5 * self.N + 2
        self.weights = np.array([getattr(config.reward, name) for name in REWARD_TERMS], dtype=float)
        self.nvec = np.array([self.K + 1] * self.N + ([self.R] * self.N if config.control_rank else []))
        self._all = np.ones(batch, dtype=bool)
        self._tiers = np.asarray(config.memory_tiers, dtype=float)
        self._smallest_rank_memory = self.memory_table[:, 0].copy()
        B, N = batch, self.N
        self.allowed, self.share, self.headroom = np.zeros((B, N)), np.zeros((B, N)), np.zeros((B, N))
        self.masks = np.ones((B, int(self.nvec.sum())), dtype=bool)
        self.ppl, self.t, self.noise = np.zeros(B), np.zeros(B, dtype=np.int64), np.zeros(B)
        self.held, self.exchanges, self.participation = (np.zeros((B, N), dtype=np.int64) for _ in range(3))
        self.active, self.gain_db = np.zeros((B, N), dtype=bool), np.zeros((B, N))
        # the kernels' arguments that persist (arrays updated in place): state, scenario, tables; surrogate; reward
        self._model = (self.t, self.ppl, self.noise, self.held, self.exchanges, self.participation, self.active,
                       self.gain_db, self.allowed, self.share, self.headroom, self.memory_table, self.emulator_bytes,
                       self.eps_table, self.held_eps_table, self.costs.adapter_bytes, self.exchange_budget)
        self._surrogate = calibration.step_arguments
        self._rewards = (self.weights, self.reference_latency_s, self.target, self.initial_ppl, config.horizon)
        self.rng = np.random.Generator(np.random.PCG64(0))  # its state is set by ``reset``
        self.channel = WirelessChannel(B * N, config.channel, self.rng)
        self._link = np.empty((3, B * N))  # the round's [gain, uplink rate, downlink rate] (``WirelessChannel.step_into``)

    def _reference_latency(self) -> float:
        """Downloading the full model at the cell edge with average fading: the unit of the latency term."""
        ch = self.config.channel
        gain = 10 ** (-path_loss_db(ch.max_distance_m) / 10)
        rate = shannon_rate(ch.downlink_bandwidth_hz, dbm_to_w(ch.downlink_power_dbm), gain, noise_psd_w_per_hz(ch.noise_figure_db))
        return 8.0 * self.costs.full_model_bytes / float(rate)

    # --- reset ---------------------------------------------------------------------------------------
    def reset(self, seed: int) -> None:
        """Start B new episodes: their scenarios, every later round and later resets draw from the PCG64 stream of
        ``seed``."""
        self._origin, self._episode = np.random.PCG64(seed).state, 0
        self.rng.bit_generator.state = self._origin
        self.reset_episodes(self._all)

    def next_episodes(self) -> None:
        """Start B new episodes at the next multiple of ``EPISODE_STRIDE`` draws of the stream."""
        self._episode += 1
        self.rng.bit_generator.state = self._origin
        self.rng.bit_generator.advance(self._episode * EPISODE_STRIDE)
        self.reset_episodes(self._all)

    def reset_episodes(self, envs: np.ndarray) -> None:
        """Start new episodes for the sub-envs in the bool mask ``envs`` (B,)."""
        idx = np.flatnonzero(envs)
        devices = (idx[:, None] * self.N + np.arange(self.N)).ravel()
        self.gain_db.reshape(-1)[devices] = self.channel.reset_devices(devices)
        self._start(idx)

    def _start(self, idx: np.ndarray) -> None:
        """Draw memory tiers and data shares ~ Dirichlet(2) of the sub-envs ``idx``; zero their state."""
        cfg, n = self.config, len(idx)
        draws = self.rng.random((n, self.N)), self.rng.standard_exponential((n, self.N, 2))
        _start_episodes(idx, *draws, self._tiers, cfg.memory_fraction, self.costs.full_memory_bytes,
                        self._smallest_rank_memory, self.masks, *self._model, *self._rewards)

    # --- observation and masks -----------------------------------------------------------------------
    def observe(self) -> np.ndarray:
        """(B, 5N + 2) float32: per device [gain, memory headroom, held ε, exchanges/T, participation/T] then
        [perplexity progress, round/T]."""
        obs = np.empty((self.batch, self.obs_dim), dtype=np.float32)
        _observe_all(obs, *self._model, *self._rewards)
        return obs

    def observation_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        low = np.tile([-3.0, 0.0, -1.0, 0.0, 0.0], self.N).tolist() + [-1.0, 0.0]
        high = np.tile([3.0, 2.0, 1.0, 1.0, 1.0], self.N).tolist() + [2.0, 1.0]
        return np.array(low, dtype=np.float32), np.array(high, dtype=np.float32)

    def action_masks(self) -> np.ndarray:
        """(B, N·(K+1) [+ N·R]) bool: level k of device i is allowed if its footprint at the smallest rank fits η·M_i."""
        return self.masks.copy()

    # --- one round -----------------------------------------------------------------------------------
    def valid(self, actions: np.ndarray) -> bool:
        """Whether int64 ``actions`` (B, N [+ N]) are all within the action space's ``nvec``."""
        return _in_range(actions, self.nvec)

    def _draw_round(self) -> tuple[np.ndarray, np.ndarray]:
        """Advance every episode's channel one round and draw its surrogate noise (``gain_db``, ``noise``); returns the
        uplink and downlink rates (B·N,) in bit/s (rows of a buffer the next round overwrites)."""
        link = self._link
        self.channel.step_into(link)
        np.log10(link[0].reshape(self.batch, self.N), out=self.gain_db)
        self.gain_db *= 10.0
        self.rng.standard_normal(out=self.noise)
        return link[1], link[2]

    def _outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """Fresh ([terminated, truncated] (2, B), observation (B, 5N + 2))."""
        return np.zeros((2, self.batch), dtype=bool), np.empty((self.batch, self.obs_dim), dtype=np.float32)

    def step(self, actions: np.ndarray, live: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A surrogate round: advance the channel, apply valid, C-contiguous int64 decisions (B, N [+ N ranks]) of the
        ``live`` episodes (bool (B,), None: all), price the round, move the perplexity by the calibrated surrogate,
        reward. Returns (observation (B, 5N + 2) float32, the round's result (NUM_ROWS, B), [terminated, truncated]
        (2, B) bool); episodes not live keep their state (result rows zero, not ended)."""
        uplink_bps, downlink_bps = self._draw_round()
        result, (ended, obs) = np.zeros((NUM_ROWS, self.batch)), self._outputs()
        _round(actions, self._all if live is None else live, uplink_bps, downlink_bps, result, ended, obs, *self._model,
               *self._surrogate, *self._rewards)
        return obs, result, ended

    def transmit(self, actions: np.ndarray) -> np.ndarray:
        """``step`` up to the perplexity, for another perplexity model (engine fidelity): returns the round's result
        with every row but REWARD, TERMS.., PERPLEXITY and ROUND; updates ``active``."""
        uplink_bps, downlink_bps = self._draw_round()
        result = np.zeros((NUM_ROWS, self.batch))
        _transmit(actions, uplink_bps, downlink_bps, result, *self._model)
        return result

    def finish(self, result: np.ndarray, next_ppl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rest of ``step`` after ``transmit``, given the next perplexity (B,): (observation, ended)."""
        ended, obs = self._outputs()
        _finish(next_ppl, result, ended, obs, *self._model, *self._rewards)
        return obs, ended


# --- compiled kernels: B episodes, N devices -------------------------------------------------------------------
@numba.njit(cache=True, error_model="numpy")
def _in_range(actions, nvec) -> bool:
    ok = True
    for b in range(actions.shape[0]):
        for i in range(actions.shape[1]):
            ok &= (actions[b, i] >= 0) & (actions[b, i] < nvec[i])
    return ok


@numba.njit(cache=True, error_model="numpy")
def _start_episodes(idx, tier_draws, exponential_draws, tiers, memory_fraction, full_memory_bytes,
                    smallest_rank_memory, masks, t, ppl, noise, held, exchanges, participation, active, gain_db,
                    allowed, share, headroom, memory_table, emulator_bytes, eps_table, held_eps_table, adapter_bytes,
                    exchange_budget, weights, reference_latency_s, target, initial_ppl, horizon) -> None:
    """New episodes for the sub-envs ``idx`` (n,): each device the memory tier where its ``tier_draws`` (n, N) ~ U(0, 1)
    falls and a data share ~ Dirichlet(2) (normalised Gamma(2) draws, each the sum of two ``exponential_draws``
    (n, N, 2) ~ Exp(1)). Masks follow from the footprint at the smallest rank (the rank head, if any, allows every
    rank); the state is zeroed."""
    N = allowed.shape[1]
    levels = len(smallest_rank_memory)
    for j in range(len(idx)):
        b = idx[j]
        total = 0.0
        for i in range(N):
            share[b, i] = exponential_draws[j, i, 0] + exponential_draws[j, i, 1]
            total += share[b, i]
        for i in range(N):
            share[b, i] /= total
            allowed[b, i] = memory_fraction * (tiers[int(tier_draws[j, i] * len(tiers))] * full_memory_bytes)
            headroom[b, i] = min(max(allowed[b, i] / full_memory_bytes, 0.0), 2.0)
            for k in range(levels):
                masks[b, i * levels + k] = smallest_rank_memory[k] <= allowed[b, i]
            held[b, i] = exchanges[b, i] = participation[b, i] = 0
            active[b, i] = False
        ppl[b] = initial_ppl
        t[b] = 0


# The entry kernels take, after their per-call arrays, ``Dynamics._model`` (state, scenario, tables), then (``_round``)
# ``Dynamics._surrogate`` and ``Dynamics._rewards``; they loop over episodes calling the per-episode parts.


@numba.njit(cache=True, error_model="numpy")
def _price(b, actions, uplink_bps, downlink_bps, out, t, noise, held, exchanges, participation, active, allowed, share,
           memory_table, emulator_bytes, eps_table, adapter_bytes, exchange_budget) -> None:
    """Costs of episode b's round into ``out[:, b]`` (rates (B·N,) in bit/s, episode-major). A selected device over
    its allowed memory is dropped; an active device whose held emulator differs downloads the new one (an exchange);
    every active device downloads and uploads its adapter."""
    N = held.shape[1]
    ranked = actions.shape[1] > N
    latency = memory = weighted = data = 0.0
    n_active = n_exchanges = n_violations = n_excess = 0
    for i in range(N):
        level = actions[b, i]
        active[b, i] = False
        if level == 0:
            continue
        rank = actions[b, N + i] if ranked else 0
        need = memory_table[level, rank]
        if need > allowed[b, i]:
            n_violations += 1
            continue
        active[b, i] = True
        n_active += 1
        adapter = adapter_bytes[rank]
        down = adapter
        if held[b, i] != level:
            held[b, i] = level
            exchanges[b, i] += 1
            n_exchanges += 1
            down += emulator_bytes[level]
            if exchanges[b, i] > exchange_budget:
                n_excess += 1
        participation[b, i] += 1
        latency = max(latency, 8.0 * down / downlink_bps[b * N + i] + 8.0 * adapter / uplink_bps[b * N + i])
        memory += need / allowed[b, i]
        data += share[b, i]
        weighted += share[b, i] * eps_table[level]
    out[LATENCY_S, b] = latency
    out[EXCHANGES, b] = n_exchanges
    out[VIOLATIONS, b] = n_violations
    out[PARTICIPANTS, b] = n_active
    out[MEMORY_USE, b] = memory / max(n_active, 1)
    out[EXCESS_EXCHANGES, b] = n_excess
    out[COMPRESSION, b] = weighted / max(data, 1e-12)
    out[SHARE, b] = data
    out[NOISE, b] = noise[b]


@numba.njit(cache=True, error_model="numpy")
def _settle(b, next_ppl, out, ended, weights, reference_latency_s, t, ppl, target, initial_ppl, horizon, N) -> None:
    """Episode b after its round: new perplexity, time, reward terms and reward into ``out[:, b]``, episode end."""
    ppl[b] = next_ppl
    t[b] += 1
    out[TERMS, b] = -weights[0] * max(next_ppl - target, 0.0) / (initial_ppl - target)
    out[TERMS + 1, b] = -weights[1] * min(out[LATENCY_S, b] / reference_latency_s, LATENCY_CAP)
    out[TERMS + 2, b] = -weights[2] * out[EXCHANGES, b] / N
    out[TERMS + 3, b] = -weights[3] * out[MEMORY_USE, b]
    out[TERMS + 4, b] = -weights[4] * out[VIOLATIONS, b]
    out[TERMS + 5, b] = -weights[5] * out[EXCESS_EXCHANGES, b]
    reward = 0.0
    for k in range(6):
        reward += out[TERMS + k, b]
    out[REWARD, b] = reward
    ended[0, b] = next_ppl <= target
    ended[1, b] = (next_ppl > target) & (t[b] >= horizon)


@numba.njit(cache=True, error_model="numpy")
def _next_perplexity(ppl, compression, share, z, levels, plateaus, rate, exponent, noise_std) -> float:
    """The surrogate round of one episode (``fedpeat_env.surrogate``). ppl_inf(ε) is linear between calibrated
    levels, constant beyond them (``np.interp``, written out: numba's is slow on scalars)."""
    if not share > 0:
        return ppl
    last = len(levels) - 1
    if compression < levels[0]:
        inf = plateaus[0]
    elif compression >= levels[last]:
        inf = plateaus[last]
    else:
        j = 0
        while compression >= levels[j + 1]:
            j += 1
        slope = (plateaus[j + 1] - plateaus[j]) / (levels[j + 1] - levels[j])
        inf = plateaus[j] if compression == levels[j] else slope * (compression - levels[j]) + plateaus[j]
    return (inf + (ppl - inf) * np.exp(-rate * share**exponent)) * np.exp(noise_std * z)


@numba.njit(cache=True, error_model="numpy")
def surrogate_step(ppl, compression, share, z, levels, plateaus, rate, exponent, noise_std, out) -> None:
    """``_next_perplexity`` of B episodes (``Calibration.step``): float64 (B,) arrays, the result into ``out``."""
    for b in range(len(ppl)):
        out[b] = _next_perplexity(ppl[b], compression[b], share[b], z[b], levels, plateaus, rate, exponent, noise_std)


@numba.njit(cache=True, error_model="numpy")
def _round(actions, live, uplink_bps, downlink_bps, out, ended, obs, t, ppl, noise, held, exchanges, participation,
           active, gain_db, allowed, share, headroom, memory_table, emulator_bytes, eps_table, held_eps_table,
           adapter_bytes, exchange_budget, levels, plateaus, rate, exponent, noise_std, weights, reference_latency_s,
           target, initial_ppl, horizon) -> None:
    """A surrogate round of the live episodes (``Dynamics.step``) and every episode's observation, episode by episode
    (its state is still in L1 cache when it is observed)."""
    N = held.shape[1]
    for b in range(held.shape[0]):
        if live[b]:
            _price(b, actions, uplink_bps, downlink_bps, out, t, noise, held, exchanges, participation, active, allowed,
                   share, memory_table, emulator_bytes, eps_table, adapter_bytes, exchange_budget)
            next_ppl = _next_perplexity(ppl[b], out[COMPRESSION, b], out[SHARE, b], out[NOISE, b], levels, plateaus,
                                        rate, exponent, noise_std)
            _settle(b, next_ppl, out, ended, weights, reference_latency_s, t, ppl, target, initial_ppl, horizon, N)
        else:
            active[b] = False
        _report(b, out, obs, t, ppl, held, exchanges, participation, gain_db, headroom, held_eps_table, target,
                initial_ppl, horizon)


@numba.njit(cache=True, error_model="numpy")
def _transmit(actions, uplink_bps, downlink_bps, out, t, ppl, noise, held, exchanges, participation, active, gain_db,
              allowed, share, headroom, memory_table, emulator_bytes, eps_table, held_eps_table, adapter_bytes,
              exchange_budget) -> None:
    """``_price`` of every episode (``Dynamics.transmit``)."""
    for b in range(held.shape[0]):
        _price(b, actions, uplink_bps, downlink_bps, out, t, noise, held, exchanges, participation, active, allowed,
               share, memory_table, emulator_bytes, eps_table, adapter_bytes, exchange_budget)


@numba.njit(cache=True, error_model="numpy")
def _finish(next_ppl, out, ended, obs, t, ppl, noise, held, exchanges, participation, active, gain_db, allowed, share,
            headroom, memory_table, emulator_bytes, eps_table, held_eps_table, adapter_bytes, exchange_budget, weights,
            reference_latency_s, target, initial_ppl, horizon) -> None:
    """``_settle`` and the observation of every episode (``Dynamics.finish``)."""
    N = held.shape[1]
    for b in range(held.shape[0]):
        _settle(b, next_ppl[b], out, ended, weights, reference_latency_s, t, ppl, target, initial_ppl, horizon, N)
        _report(b, out, obs, t, ppl, held, exchanges, participation, gain_db, headroom, held_eps_table, target,
                initial_ppl, horizon)


@numba.njit(cache=True, error_model="numpy")
def _report(b, out, obs, t, ppl, held, exchanges, participation, gain_db, headroom, held_eps_table, target, initial_ppl,
            horizon) -> None:
    """Episode b after its round (or its idle step): perplexity and round into ``out[:, b]``, its observation."""
    out[PERPLEXITY, b] = ppl[b]
    out[ROUND, b] = t[b]
    _observe(b, obs, t, ppl, held, exchanges, participation, gain_db, headroom, held_eps_table, target, initial_ppl,
             horizon)


@numba.njit(cache=True, error_model="numpy")
def _observe(b, obs, t, ppl, held, exchanges, participation, gain_db, headroom, held_eps_table, target, initial_ppl,
             horizon) -> None:
    """Write episode b's observation into ``obs[b]`` (layout: ``Dynamics.observe``; reciprocals instead of divisions
    in the per-device loop)."""
    N = held.shape[1]
    per_db, per_round = 1.0 / GAIN_DB_SCALE, 1.0 / horizon
    for i in range(N):
        obs[b, 5 * i] = min(max((gain_db[b, i] - GAIN_DB_CENTRE) * per_db, -3.0), 3.0)
        obs[b, 5 * i + 1] = headroom[b, i]
        obs[b, 5 * i + 2] = held_eps_table[held[b, i]]
        obs[b, 5 * i + 3] = min(exchanges[b, i] * per_round, 1.0)
        obs[b, 5 * i + 4] = min(participation[b, i] * per_round, 1.0)
    progress = (initial_ppl - ppl[b]) / (initial_ppl - target)
    obs[b, 5 * N] = min(max(progress, -1.0), 2.0)
    obs[b, 5 * N + 1] = t[b] * per_round


@numba.njit(cache=True, error_model="numpy")
def _observe_all(obs, t, ppl, noise, held, exchanges, participation, active, gain_db, allowed, share, headroom,
                 memory_table, emulator_bytes, eps_table, held_eps_table, adapter_bytes, exchange_budget, weights,
                 reference_latency_s, target, initial_ppl, horizon) -> None:
    """Every episode's observation into ``obs`` (B, 5N + 2)."""
    for b in range(held.shape[0]):
        _observe(b, obs, t, ppl, held, exchanges, participation, gain_db, headroom, held_eps_table, target, initial_ppl,
                 horizon)
