"""The FedPEAT round model for B parallel episodes (numpy). The single env runs it with B = 1, the vector env
with B = num_envs: one implementation of the observation, the costs and the reward.

Randomness: at reset, each episode draws its scenario (memory tiers, data shares, distances, bandwidths) from
the scenario generator; every step draws one fading vector for all devices and one surrogate noise value per
episode, whatever the action, so every policy sees the same channel on the same seed (common random numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federation.system import WirelessChannel, dbm_to_w, noise_psd_w_per_hz, path_loss_db, shannon_rate
from fedpeat_env.config import EnvConfig
from fedpeat_env.costs import LevelCosts, level_costs
from fedpeat_env.surrogate import Calibration

GAIN_DB_CENTRE, GAIN_DB_SCALE = -100.0, 20.0  # gain normalisation: (g_dB + 100) / 20, clipped to [-3, 3]
REWARD_TERMS = ("perplexity", "latency", "exchanges", "memory", "memory_penalty", "exchange_penalty")
LATENCY_CAP = 10.0
"""The latency term saturates at 10 reference latencies: a round that slow has failed anyway, and without a cap a
deep Rayleigh fade during an emulator download cost single episodes −10,000 and swamped reward normalisation."""


@dataclass
class RoundCosts:
    """What one round cost, per episode (B,) or per device (B, N)."""

    active: np.ndarray
    """(B, N) selected and within memory: these devices train."""
    violations: np.ndarray
    """(B, N) selected but over η·capacity: dropped, penalised."""
    exchanged: np.ndarray
    """(B, N) downloaded a new emulator."""
    latency_s: np.ndarray
    """(B,) max transmission latency over active devices."""
    memory_use: np.ndarray
    """(B,) mean memory / allowed memory over active devices (0 if none)."""
    excess_exchanges: np.ndarray
    """(B,) exchanges this round beyond each device's κ·T budget."""
    compression: np.ndarray
    """(B,) data-weighted ε of the active devices (0 if none)."""
    share: np.ndarray
    """(B,) active devices' share of all device data."""


class Dynamics:
    """State and transition of B FedPEAT episodes."""

    def __init__(self, config: EnvConfig, batch: int, calibration: Calibration) -> None:
        self.config, self.batch, self.cal = config, batch, calibration
        self.N, self.K = config.num_devices, len(config.compression_levels)
        self.ranks = config.rank_levels if config.control_rank else config.rank_levels[-1:]
        self.R = len(self.ranks)
        self.costs: LevelCosts = level_costs(config.cost_profile, config.compression_levels, self.ranks)
        # tables indexed by action level 0..K (0 = not selected)
        self.eps_table = np.concatenate([[0.0], self.costs.compression])
        self.held_eps_table = np.concatenate([[-1.0], self.costs.compression])  # observation: −1 = no emulator
        self.emulator_bytes = np.concatenate([[0.0], self.costs.emulator_bytes])
        self.memory_table = np.vstack([np.zeros((1, self.R)), self.costs.memory_bytes])
        self.target = config.target_perplexity or 1.1 * min(calibration.plateau_perplexity)
        self.initial_ppl = calibration.initial_perplexity
        if not self.initial_ppl > self.target:
            raise ValueError(f"target_perplexity must be below the initial perplexity {self.initial_ppl:.1f}, got {self.target}")
        self.exchange_budget = config.exchange_fraction * config.horizon
        self.reference_latency_s = self._reference_latency()
        self.obs_dim = 5 * self.N + 2
        self.channel: WirelessChannel | None = None

    def _reference_latency(self) -> float:
        """Downloading the full model at the cell edge with average fading: the unit of the latency term."""
        ch = self.config.channel
        gain = 10 ** (-path_loss_db(ch.max_distance_m) / 10)
        rate = shannon_rate(ch.downlink_bandwidth_hz, dbm_to_w(ch.downlink_power_dbm), gain, noise_psd_w_per_hz(ch.noise_figure_db))
        return 8.0 * self.costs.full_model_bytes / float(rate)

    # --- reset ---------------------------------------------------------------------------------------
    def reset(self, scenario_rng: np.random.Generator, noise_rng: np.random.Generator, envs: np.ndarray | None = None) -> None:
        """Start new episodes for ``envs`` (bool mask (B,); None: all, which also creates the channel)."""
        B, N = self.batch, self.N
        if envs is None or self.channel is None:
            envs = np.ones(B, dtype=bool)
            self.scenario_rng, self.noise_rng = scenario_rng, noise_rng
            self.channel = WirelessChannel(B * N, self.config.channel, scenario_rng)
            self.capacity = np.zeros((B, N))
            self.share = np.zeros((B, N))
            self.ppl = np.zeros(B)
            self.t = np.zeros(B, dtype=int)
            self.held = np.zeros((B, N), dtype=int)
            self.exchange_count = np.zeros((B, N))
            self.participation = np.zeros((B, N))
        else:
            self.channel.reset_devices(np.repeat(envs, N))
        n = int(envs.sum())
        tiers = np.asarray(self.config.memory_tiers)[self.scenario_rng.integers(0, len(self.config.memory_tiers), (n, N))]
        self.capacity[envs] = tiers * self.costs.full_memory_bytes
        self.share[envs] = self.scenario_rng.dirichlet(np.full(N, 2.0), size=n)
        self.ppl[envs] = self.initial_ppl
        self.t[envs] = 0
        self.held[envs] = 0
        self.exchange_count[envs] = 0
        self.participation[envs] = 0
        self.gain_db = (10.0 * np.log10(self.channel.current().gain)).reshape(B, N)
        self.allowed = self.config.memory_fraction * self.capacity
        self.headroom = np.clip(self.allowed / self.costs.full_memory_bytes, 0.0, 2.0)

    # --- observation and masks -----------------------------------------------------------------------
    def observe(self) -> np.ndarray:
        """(B, 5N + 2) float32: per device [gain, memory headroom, held ε, exchanges/T, participation/T] then
        [perplexity progress, round/T]."""
        T, N = self.config.horizon, self.N
        obs = np.empty((self.batch, 5 * N + 2), dtype=np.float32)
        np.clip((self.gain_db - GAIN_DB_CENTRE) / GAIN_DB_SCALE, -3.0, 3.0, out=obs[:, 0 : 5 * N : 5])
        obs[:, 1 : 5 * N : 5] = self.headroom
        obs[:, 2 : 5 * N : 5] = self.held_eps_table[self.held]
        np.minimum(self.exchange_count / T, 1.0, out=obs[:, 3 : 5 * N : 5])
        np.minimum(self.participation / T, 1.0, out=obs[:, 4 : 5 * N : 5])
        obs[:, 5 * N] = np.clip((self.initial_ppl - self.ppl) / (self.initial_ppl - self.target), -1.0, 2.0)
        obs[:, 5 * N + 1] = self.t / T
        return obs

    def observation_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        low = np.tile([-3.0, 0.0, -1.0, 0.0, 0.0], self.N).tolist() + [-1.0, 0.0]
        high = np.tile([3.0, 2.0, 1.0, 1.0, 1.0], self.N).tolist() + [2.0, 1.0]
        return np.array(low, dtype=np.float32), np.array(high, dtype=np.float32)

    def action_masks(self) -> np.ndarray:
        """(B, N·(K+1) [+ N·R]) bool: level k of device i is allowed if its footprint at the smallest rank fits η·M_i."""
        fits = self.memory_table[None, None, :, 0] <= self.allowed[:, :, None]  # (B, N, K+1); level 0 always fits
        masks = [fits.reshape(self.batch, -1)]
        if self.config.control_rank:
            masks.append(np.ones((self.batch, self.N * self.R), dtype=bool))
        return np.concatenate(masks, axis=1)

    # --- one round -----------------------------------------------------------------------------------
    def transmit(self, levels: np.ndarray, rank_idx: np.ndarray) -> RoundCosts:
        """Advance the channel, apply the decisions (B, N) and price the round (everything but perplexity)."""
        state = self.channel.step()
        B, N = self.batch, self.N
        self.gain_db = (10.0 * np.log10(state.gain)).reshape(B, N)
        selected = levels > 0
        need = self.memory_table[levels, rank_idx]
        violations = selected & (need > self.allowed)
        active = selected & ~violations
        exchanged = active & (self.held != levels)
        self.held = np.where(exchanged, levels, self.held)
        before = self.exchange_count
        self.exchange_count = before + exchanged
        excess = exchanged & (self.exchange_count > self.exchange_budget)
        adapter = self.costs.adapter_bytes[rank_idx]
        down = exchanged * self.emulator_bytes[levels] + active * adapter
        up = active * adapter
        latency = 8.0 * down / state.downlink_rate_bps.reshape(B, N) + 8.0 * up / state.uplink_rate_bps.reshape(B, N)
        n_active = active.sum(axis=1)
        weighted = active * self.share
        share = weighted.sum(axis=1)
        self.participation = self.participation + active
        return RoundCosts(
            active=active, violations=violations, exchanged=exchanged,
            latency_s=np.where(active, latency, 0.0).max(axis=1),
            memory_use=np.where(active, need / self.allowed, 0.0).sum(axis=1) / np.maximum(n_active, 1),
            excess_exchanges=excess.sum(axis=1).astype(float),
            compression=(weighted * self.eps_table[levels]).sum(axis=1) / np.maximum(share, 1e-12),
            share=share,
        )

    def surrogate_perplexity(self, costs: RoundCosts) -> np.ndarray:
        """Next perplexity from the calibrated surrogate; draws one normal per episode every round."""
        z = self.noise_rng.standard_normal(self.batch)
        return self.cal.step(self.ppl, costs.compression, costs.share, z)

    def finish(self, costs: RoundCosts, next_ppl: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Set the new perplexity, advance time; returns (reward, reward terms, terminated, truncated), all (B,)."""
        self.ppl = next_ppl
        self.t = self.t + 1
        w = self.config.reward
        terms = {
            "perplexity": -w.perplexity * np.maximum(next_ppl - self.target, 0.0) / (self.initial_ppl - self.target),
            "latency": -w.latency * np.minimum(costs.latency_s / self.reference_latency_s, LATENCY_CAP),
            "exchanges": -w.exchanges * costs.exchanged.sum(axis=1) / self.N,
            "memory": -w.memory * costs.memory_use,
            "memory_penalty": -w.memory_penalty * costs.violations.sum(axis=1),
            "exchange_penalty": -w.exchange_penalty * costs.excess_exchanges,
        }
        reward = sum(terms.values())
        terminated = next_ppl <= self.target
        truncated = ~terminated & (self.t >= self.config.horizon)
        return reward, terms, terminated, truncated
