"""The FedPEAT round model for B parallel episodes. The single env runs it with B = 1, the vector env with
B = num_envs: one implementation of the observation, the costs and the reward, in compiled kernels (numba,
``cache=True``: the first use on a machine compiles for a few seconds, later processes load the cache).

The kernels take named structures: ``State`` (the episodes' arrays), ``Tables`` (per action level and rank, and the
cost model's settings), the surrogate's ``SurrogateParams``, the reward's ``RewardParams``, and write a round into
``Output``: ``round_`` records (``ROUND_DTYPE``: the priced quantities, perplexity, reward), ``terms`` records
(``reward.TERMS_DTYPE``), episode ends and observations.

Randomness: one PCG64 stream per seed. At reset, each episode draws its scenario (memory tiers, data shares,
distances, bandwidths, fading); every step draws one fading vector for all devices and one surrogate noise value per
episode, whatever the action, so every policy sees the same channel and noise on the same seed (common random
numbers). ``next_episodes`` starts the next episodes 2^80 draws further: they do not depend on what earlier episodes
drew.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numba
import numpy as np
from numba.core import types
from numba.experimental import structref

from federation.system import (
    WirelessChannel,
    _latency_s,
    dbm_to_w,
    downlink_share,
    noise_psd_w_per_hz,
    path_loss_db,
    shannon_rate,
)
from fedpeat_env.config import EnvConfig
from fedpeat_env.costs import LevelCosts, level_costs
from fedpeat_env.reward import LATENCY_CAP, REWARD_TERMS, TERMS_DTYPE, RewardParams, settle_terms
from fedpeat_env.surrogate import DOMAINS, surrogate_round, trainer_epochs

if TYPE_CHECKING:
    from fedpeat_env.surrogate import Calibration, SurrogateParams

GAIN_DB_CENTRE, GAIN_DB_SCALE = -100.0, 20.0  # gain normalisation: (g_dB + 100) / 20, clipped to [-3, 3]
D = len(DOMAINS)
"""Tuning domains (``fedpeat_env.surrogate.DOMAINS``): every per-domain array (observation, state) has D entries."""
DEVICE_FEATURES = 7 + D
"""Observation entries per device (``Dynamics.observe``)."""
ROUND_FEATURES = 2 + D
"""Observation entries of the round, after the devices'."""
EPISODE_STRIDE = 2**80
"""Draws between the starts of consecutive ``next_episodes`` (PCG64's period is 2^128)."""

ROUND_FIELDS: tuple[tuple[str, str], ...] = (
    ("reward", "sum of the reward terms"),
    ("perplexity", "full-model perplexity after the round"),
    ("round", "rounds played in the episode"),
    ("round_latency_s", "Σ_i Q_i (latency_aggregation 'sum') or max_i Q_i ('max') over the active devices, s"),
    ("latency_cost", "the latency term's input: Σ_i min(Q_i/Q_ref, cap)/N or min(max_i Q_i/Q_ref, cap)"),
    ("exchanges", "devices that downloaded a new emulator"),
    ("memory_violations", "devices selected over η·capacity (dropped)"),
    ("participants", "devices that trained (selected and within memory)"),
    ("memory_use", "Σ_i m_i/(η M_i)/N over the active devices (memory_aggregation 'sum') or their mean ('mean')"),
    ("excess_exchanges", "exchanges beyond a device's κ·T budget"),
    ("unavailable", "devices selected while unavailable (dropped)"),
    ("share", "the trainers' share of all training data (devices and server)"),
    ("compression", "data-weighted ε of the trainers (the server trains the full model: ε = 0)"),
    ("rank", "data-weighted LoRA rank of the trainers (the server: the largest rank)"),
    ("reuse", "data-weighted epochs the trainers' data has been trained on so far, this round's included"),
    *((f"mix_{d}", f"share of the trainers' data in domain {d}") for d in DOMAINS),
    ("noise", "the round's standard normal of the surrogate"),
)
"""Fields of ``ROUND_DTYPE``: what one round of one episode reports."""
ROUND_DTYPE = np.dtype([(name, np.float64) for name, _ in ROUND_FIELDS])
_MIX = cast(tuple[str, ...], ROUND_DTYPE.names).index(f"mix_{DOMAINS[0]}")  # numpy: names of a structured dtype
"""Index of the first domain-mix field in a round's float64 view."""
INFO_KEYS: tuple[tuple[str, type], ...] = (("perplexity", float), ("round_latency_s", float), ("exchanges", int),
                                           ("memory_violations", int), ("unavailable", int), ("participants", int),
                                           ("round", int), ("share", float), ("compression", float), ("reuse", float))
"""(``ROUND_DTYPE`` field, type) of the round numbers both envs report in ``info`` besides the reward terms."""


class State(NamedTuple):
    """The B episodes' arrays, updated in place: per episode (B,), per device (B, N)."""

    t: np.ndarray
    """(B,) int64 rounds played."""
    ppl: np.ndarray
    """(B,) full-model perplexity."""
    noise: np.ndarray
    """(B,) the round's surrogate normals."""
    held: np.ndarray
    """(B, N) int64 action level of the emulator each device holds (0: none)."""
    exchanges: np.ndarray
    """(B, N) int64 emulator downloads so far."""
    participation: np.ndarray
    """(B, N) int64 rounds trained so far."""
    active: np.ndarray
    """(B, N) bool: trained in the last round."""
    gain_db: np.ndarray
    """(B, N) channel gain of the current round, dB."""
    allowed: np.ndarray
    """(B, N) η·capacity, bytes (scenario, drawn at reset)."""
    share: np.ndarray
    """(B, N) share of all training data (scenario; devices sum to 1 − server share)."""
    headroom: np.ndarray
    """(B, N) allowed / full-model footprint, clipped to [0, 2] (scenario)."""
    mix: np.ndarray
    """(B, N, D) share of each device's data in each domain (``DOMAINS``; scenario)."""
    fits: np.ndarray
    """(B, N, K+1) bool: level k fits the device's memory at the smallest rank (scenario)."""
    available: np.ndarray
    """(B, N) bool: the device can train in the coming round (``EnvConfig.availability``)."""
    flips: np.ndarray
    """(B, N) the round's uniform draws of the availability chains (used after the round)."""
    exposure: np.ndarray
    """(B, N) epochs the global model has been trained on each device's data so far (``_price``)."""
    server_exposure: np.ndarray
    """(B,) the same for the collaborating server's data."""
    domain_ppl: np.ndarray
    """(B, D) full-model perplexity on each domain's held-out blocks (1 for domains the scenario does not hold)."""
    present: np.ndarray
    """(B,) int64 devices n of the episode (``EnvConfig.episode_devices``): slots n..N−1 are empty (scenario)."""


class Tables(NamedTuple):
    """Per action level k = 0..K (0: not selected) and rank level j, and the cost model's settings."""

    eps: np.ndarray
    """(K+1,) ε of a level (0 at level 0)."""
    held_eps: np.ndarray
    """(K+1,) what the observation shows for a held level (−1: none)."""
    emulator_bytes: np.ndarray
    """(K+1,) frozen weights sent on an exchange."""
    memory_bytes: np.ndarray
    """(K+1, R) training footprint."""
    adapter_bytes: np.ndarray
    """(R,) LoRA bytes, down and up every round."""
    rank_values: np.ndarray
    """(R,) float LoRA rank of each rank level."""
    exchange_budget: float
    """κ·T exchanges per device without penalty."""
    reference_latency_s: float
    """Q_ref: the full model's download at the cell edge."""
    latency_max: bool
    """latency_aggregation 'max' (else 'sum')."""
    memory_sum: bool
    """memory_aggregation 'sum' (else 'mean')."""
    server_share: float
    """Share of the training data the server holds and trains on every round (0: no server)."""
    num_devices: int
    domain_weight: np.ndarray
    """(D,) each domain's share of the scenario's training blocks (0 for domains it does not hold)."""
    eval_weight: np.ndarray
    """(D,) each domain's share of the held-out tokens the full model is evaluated on (its perplexity is
    exp(Σ_d eval_weight_d · log ppl_d))."""
    content_skew: bool
    """partition "domains": each domain split over the devices by its own Dirichlet draw."""
    observe_domains: bool
    """Whether the observation shows the devices' domain histograms."""
    markov: bool
    """availability "markov" (else every device is always available)."""
    off_rate: float
    """P(available → unavailable) per round."""
    on_rate: float
    """P(unavailable → available) per round."""
    initial_domain_ppl: np.ndarray
    """(D,) each domain's perplexity before tuning (1 for domains the scenario does not hold)."""
    blocks: float
    """Training blocks of the scenario's data (devices and server)."""
    sequences_per_round: float
    """Sequences a trainer trains on per round (local steps × batch of the calibrated engine)."""


class Output(NamedTuple):
    """Where a round is written, for B episodes."""

    round_: np.ndarray
    """(B,) ``ROUND_DTYPE`` records."""
    round_values: np.ndarray
    """(B, len(ROUND_FIELDS)) float64 view of ``round_``."""
    terms: np.ndarray
    """(B,) ``TERMS_DTYPE`` records."""
    term_values: np.ndarray
    """(B, len(REWARD_TERMS)) float64 view of ``terms`` (the reward is its row sum)."""
    ended: np.ndarray
    """(2, B) bool: terminated, truncated."""
    obs: np.ndarray
    """(B, DEVICE_FEATURES·N + 2) float32."""

    @classmethod
    def empty(cls, batch: int, obs_dim: int) -> Output:
        rounds, terms = np.zeros(batch, dtype=ROUND_DTYPE), np.zeros(batch, dtype=TERMS_DTYPE)
        return cls(rounds, rounds.view(np.float64).reshape(batch, -1), terms, terms.view(np.float64).reshape(batch, -1),
                   np.zeros((2, batch), dtype=bool), np.empty((batch, obs_dim), dtype=np.float32))

    def __deepcopy__(self, memo: dict) -> Output:
        """A copy whose float views view its own records (``copy.deepcopy`` would give them separate arrays)."""
        out = Output.empty(*self.obs.shape)
        for mine, theirs in zip(self, out):
            theirs[...] = mine
        return out

    def __reduce__(self):
        """Pickled as its records, the float views rebuilt over them (pickle and cloudpickle, e.g. SuperSuit's copies
        of an env, would otherwise restore separate arrays: the kernels would write where the env does not read)."""
        return _output_from, (self.round_, self.terms, self.ended, self.obs)


def _output_from(round_: np.ndarray, terms: np.ndarray, ended: np.ndarray, obs: np.ndarray) -> Output:
    """An ``Output`` over these records, with the float views of ``Output.empty``."""
    batch = len(round_)
    return Output(round_, round_.view(np.float64).reshape(batch, -1), terms, terms.view(np.float64).reshape(batch, -1),
                  ended, obs)


@structref.register
class ModelType(types.StructRef):
    """numba type of ``Model``."""

    def preprocess_fields(self, fields):
        return tuple((name, types.unliteral(kind)) for name, kind in fields)


class Model(structref.StructRefProxy):
    """What the compiled kernels share, passed as one reference: ``state`` (``State``), ``tables`` (``Tables``),
    ``surrogate`` (``SurrogateParams``), ``reward`` (``RewardParams``), ``masks`` (the action masks, (B, mask length)). One reference instead of dozens of arrays:
    numba checks and unboxes the arguments of every call, which cost more than a single episode's round."""

    state: State
    tables: Tables
    surrogate: SurrogateParams
    reward: RewardParams
    masks: np.ndarray

    def __new__(cls, state: State, tables: Tables, surrogate, reward: RewardParams, masks: np.ndarray) -> Model:
        return structref.StructRefProxy.__new__(cls, state, tables, surrogate, reward, masks)


structref.define_proxy(Model, ModelType, ["state", "tables", "surrogate", "reward", "masks"])


class Dynamics:
    """State and transition of B FedPEAT episodes (N devices, horizon T).

    Scenario, drawn at reset: ``allowed`` η·capacity (bytes), ``share`` data shares, ``mix`` domain histograms,
    ``headroom`` allowed / full-model footprint clipped to [0, 2] (B, N); ``fits`` the memory masks, ``masks``
    (B, mask length) those and availability. Each round: ``noise`` (B,) the surrogate's standard normals, ``flips``
    (B, N) the availability chains' uniforms. Channel: ``channel``, a ``WirelessChannel`` of B·N devices
    (episode-major); ``gain_db`` (B, N) its current gains in dB. State: ``ppl``, ``t`` (B,), ``domain_ppl`` (B, D);
    ``held`` emulator level, ``exchanges`` and ``participation`` counts, ``exposure`` epochs on each device's data,
    ``available`` (B, N); ``active`` (B, N) the devices that trained in the last round. ``state`` holds them all.
    """

    def __init__(self, config: EnvConfig, batch: int, calibration: Calibration) -> None:
        self.config, self.batch = config, batch
        self.N, self.K = config.num_devices, len(config.compression_levels)
        self.ranks = config.rank_levels if config.control_rank else config.rank_levels[-1:]
        self.R = len(self.ranks)
        calibration.check_controls(config)
        self.costs: LevelCosts = level_costs(config.cost_profile, config.compression_levels, self.ranks,
                                             trainable=config.trainable)
        self.domains = calibration.scenario_domains(config.partition)
        domain_weight, eval_weight = calibration.domain_weights(self.domains)
        self.surrogate = calibration.params()
        self.initial_domain_ppl = np.where(eval_weight > 0, self.surrogate.initial_domain_ppl, 1.0)
        self.initial_ppl = float(np.exp(eval_weight @ np.log(self.initial_domain_ppl)))
        self.target = float(config.target_perplexity or calibration.target_perplexity(self.domains))
        if not self.initial_ppl > self.target:
            raise ValueError(f"target_perplexity must be below the initial perplexity {self.initial_ppl:.1f}, got {self.target}")
        self.reference_latency_s = self._reference_latency()
        self.obs_dim = DEVICE_FEATURES * self.N + ROUND_FEATURES
        self.nvec = np.array([self.K + 1] * self.N + ([self.R] * self.N if config.control_rank else []))
        self.tables = Tables(
            eps=np.concatenate([[0.0], self.costs.compression]),
            held_eps=np.concatenate([[-1.0], self.costs.compression]),
            emulator_bytes=np.concatenate([[0.0], self.costs.emulator_bytes]),
            memory_bytes=np.vstack([np.zeros((1, self.R)), self.costs.memory_bytes]),
            adapter_bytes=self.costs.adapter_bytes,
            rank_values=np.asarray(self.ranks, dtype=float),
            exchange_budget=config.exchange_fraction * config.horizon,
            reference_latency_s=self.reference_latency_s,
            latency_max=config.latency_aggregation == "max",
            memory_sum=config.memory_aggregation == "sum",
            server_share=float(config.server_fraction),
            num_devices=self.N,
            domain_weight=domain_weight,
            eval_weight=eval_weight,
            content_skew=config.partition == "domains",
            observe_domains=config.observe_domains,
            markov=config.availability == "markov",
            off_rate=float(config.availability_off_rate),
            on_rate=float(config.availability_on_rate),
            initial_domain_ppl=self.initial_domain_ppl,
            blocks=float(calibration.training_blocks(self.domains)),
            sequences_per_round=float(calibration.local_sequences),
        )
        self.eps_table = self.tables.eps
        self.reward = RewardParams(config.reward.record(), self.target, self.initial_ppl, config.horizon)
        B, N = batch, self.N
        self.state = State(t=np.zeros(B, dtype=np.int64), ppl=np.zeros(B), noise=np.zeros(B),
                           held=np.zeros((B, N), dtype=np.int64), exchanges=np.zeros((B, N), dtype=np.int64),
                           participation=np.zeros((B, N), dtype=np.int64), active=np.zeros((B, N), dtype=bool),
                           gain_db=np.zeros((B, N)), allowed=np.zeros((B, N)), share=np.zeros((B, N)),
                           headroom=np.zeros((B, N)), mix=np.zeros((B, N, D)),
                           fits=np.zeros((B, N, self.K + 1), dtype=bool), available=np.ones((B, N), dtype=bool),
                           flips=np.zeros((B, N)), exposure=np.zeros((B, N)), server_exposure=np.zeros(B),
                           domain_ppl=np.ones((B, D)), present=np.full(B, N, dtype=np.int64))
        self.masks = np.ones((B, int(self.nvec.sum())), dtype=bool)
        self._all = np.ones(batch, dtype=bool)
        self._tiers = np.asarray(config.memory_tiers, dtype=float)
        self.model = Model(self.state, self.tables, self.surrogate, self.reward, self.masks)
        self.rng = np.random.Generator(np.random.PCG64(0))  # its state is set by ``reset``
        self.channel = WirelessChannel(B * N, config.channel, self.rng)
        self._link = np.empty((3, B * N))  # the round's [gain, uplink rate, downlink rate] (``WirelessChannel.step_into``)

    def fork(self, stream: Mapping[str, Any] | None = None) -> Dynamics:
        """A copy for simulating ahead: it shares this one's constant tables and parameters and owns its state, masks,
        channel and random stream, which continues from ``stream`` (a PCG64 state: a *sampled* future) or, None, from
        this one's (the realised future). Much cheaper than ``copy.deepcopy``."""
        twin = copy.copy(self)
        twin.state = State(*(array.copy() for array in self.state))
        twin.masks = self.masks.copy()
        twin.rng = np.random.Generator(np.random.PCG64())
        twin.rng.bit_generator.state = self.rng.bit_generator.state if stream is None else stream
        twin.channel = self.channel.fork(twin.rng)
        twin._link = np.empty_like(self._link)
        twin.model = Model(twin.state, twin.tables, twin.surrogate, twin.reward, twin.masks)
        return twin

    def __getstate__(self) -> dict:
        """For ``copy.deepcopy`` (the search baselines copy envs) and pickling: everything but the ``Model`` reference,
        which ``__setstate__`` rebuilds over the copied arrays."""
        return {k: v for k, v in self.__dict__.items() if k != "model"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.model = Model(self.state, self.tables, self.surrogate, self.reward, self.masks)

    def __getattr__(self, name: str):
        """The state's arrays by name (``ppl``, ``gain_db``, ``active``, …)."""
        if name != "state" and name in State._fields:
            return getattr(self.state, name)
        raise AttributeError(name)

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
        cast(np.random.PCG64, self.rng.bit_generator).advance(self._episode * EPISODE_STRIDE)
        self.reset_episodes(self._all)

    def reset_episodes(self, envs: np.ndarray) -> None:
        """Start new episodes for the sub-envs in the bool mask ``envs`` (B,)."""
        idx = np.flatnonzero(envs)
        devices = (idx[:, None] * self.N + np.arange(self.N)).ravel()
        self.state.gain_db.reshape(-1)[devices] = self.channel.reset_devices(devices)
        self._start(idx)

    def _start(self, idx: np.ndarray) -> None:
        """Draw the number of devices (``EnvConfig.episode_devices``, if set), memory tiers, data
        (``EnvConfig.partition``) and availability of the sub-envs ``idx`` (in that order); zero their state."""
        cfg, n = self.config, len(idx)
        span = cfg.episode_devices
        present = self.rng.integers(span[0], span[1] + 1, size=n) if span else np.full(n, self.N, dtype=np.int64)
        tier_draws = self.rng.random((n, self.N))
        if cfg.partition == "domains":  # per domain, Dirichlet(α) shares of its blocks: normalised Gamma(α) draws
            share_draws = self.rng.standard_gamma(cfg.domain_alpha, (n, D, self.N))
        elif cfg.partition == "dirichlet":
            share_draws = self.rng.standard_gamma(cfg.dirichlet_alpha, (n, 1, self.N))
        else:
            share_draws = np.ones((n, 1, self.N))
        available_draws = self.rng.random((n, self.N)) if self.tables.markov else np.zeros((n, self.N))
        _start_episodes(idx, present, tier_draws, share_draws, available_draws, self._tiers, cfg.memory_fraction,
                        self.costs.full_memory_bytes, self.model)

    def set_data(self, shares: np.ndarray, mix: np.ndarray) -> None:
        """Replace the data shares (B, N) and domain histograms (B, N, D) of the current episodes, e.g. by the engine's
        real partition."""
        self.state.share[:] = shares
        self.state.mix[:] = mix

    # --- observation and masks -----------------------------------------------------------------------
    def observe(self) -> np.ndarray:
        """(B, DEVICE_FEATURES·N + ROUND_FEATURES) float32: per device [gain, memory headroom, held ε, exchanges/T,
        participation/T, data share·N, available, its data's share in each domain], then [perplexity progress,
        round/T, progress on each domain]."""
        obs = np.empty((self.batch, self.obs_dim), dtype=np.float32)
        _observe_all(obs, self.model)
        return obs

    def observation_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        low = np.tile([-3.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0] + [0.0] * D, self.N).tolist() + [-1.0, 0.0] + [-1.0] * D
        high = np.tile([3.0, 2.0, 1.0, 1.0, 1.0, float(self.N), 1.0] + [1.0] * D, self.N).tolist() + [2.0, 1.0] + [2.0] * D
        return np.array(low, dtype=np.float32), np.array(high, dtype=np.float32)

    def action_masks(self) -> np.ndarray:
        """(B, N·(K+1) [+ N·R]) bool: level k > 0 of device i is allowed if the device is available and its footprint
        at the smallest rank fits η·M_i; level 0 always."""
        return self.masks.copy()

    # --- one round -----------------------------------------------------------------------------------
    def valid(self, actions: np.ndarray) -> bool:
        """Whether int64 ``actions`` (B, N [+ N]) are all within the action space's ``nvec``."""
        return _in_range(actions, self.nvec)

    def _draw_round(self) -> tuple[np.ndarray, np.ndarray]:
        """Advance every episode's channel one round, draw its surrogate noise and (availability "markov") its
        availability uniforms (``gain_db``, ``noise``, ``flips``); returns the uplink and downlink rates (B·N,) in
        bit/s (rows of a buffer the next round overwrites)."""
        link, gain_db = self._link, self.state.gain_db
        self.channel.step_into(link)
        np.log10(link[0].reshape(self.batch, self.N), out=gain_db)
        gain_db *= 10.0
        self.rng.standard_normal(out=self.state.noise)
        if self.tables.markov:
            self.rng.random(out=self.state.flips)
        return link[1], link[2]

    def new_output(self) -> Output:
        """Fresh buffers for a round of the B episodes (``step``/``transmit`` write into them)."""
        return Output.empty(self.batch, self.obs_dim)

    def step(self, actions: np.ndarray, live: np.ndarray | None = None, out: Output | None = None) -> Output:
        """A surrogate round: advance the channel, apply valid, C-contiguous int64 decisions (B, N [+ N ranks]) of the
        ``live`` episodes (bool (B,), None: all), price the round, move the perplexity by the calibrated surrogate,
        reward, step the availability chains, observe, into ``out`` (None: ``new_output()``; every field is written,
        so a reused one is overwritten). Episodes not live keep their state (their records zero, not ended)."""
        uplink_bps, downlink_bps = self._draw_round()
        out = self.new_output() if out is None else out
        _round(actions, self._all if live is None else live, uplink_bps, downlink_bps, out, self.model)
        return out

    def transmit(self, actions: np.ndarray, out: Output | None = None) -> Output:
        """``step`` up to the perplexity, for another perplexity model (engine fidelity): the round's records priced
        (not yet the perplexity, reward and terms); updates ``active``."""
        uplink_bps, downlink_bps = self._draw_round()
        out = self.new_output() if out is None else out
        _transmit(actions, uplink_bps, downlink_bps, out, self.model)
        return out

    def finish(self, out: Output, next_ppl: np.ndarray, next_domain_ppl: np.ndarray) -> Output:
        """The rest of ``step`` after ``transmit``, given the next perplexity (B,) and per-domain perplexities (B, D)
        (1 for the domains the scenario does not hold)."""
        _finish(next_ppl, next_domain_ppl, out, self.model)
        return out


# --- compiled kernels: B episodes, N devices -------------------------------------------------------------------
@numba.njit(cache=True, error_model="numpy")
def _in_range(actions, nvec) -> bool:
    ok = True
    for b in range(actions.shape[0]):
        for i in range(actions.shape[1]):
            ok &= (actions[b, i] >= 0) & (actions[b, i] < nvec[i])
    return ok


@numba.njit(cache=True, error_model="numpy")
def _start_episodes(idx, present, tier_draws, share_draws, available_draws, tiers, memory_fraction, full_memory_bytes,
                    model: Model) -> None:
    """New episodes for the sub-envs ``idx`` (n,) with ``present`` (n,) devices each (slots beyond are empty: no data,
    no memory, never available): each device the memory tier where its ``tier_draws`` (n, N) ~ U(0, 1) falls; its
    data from ``share_draws`` (n, G, N): with content skew (G = D) device i holds the share draws[d, i] / Σ_j draws[d, j]
    of domain d's blocks, else (G = 1) a share ∝ draws[0, i] of the one domain (the devices together hold 1 − server
    share); it starts available if ``available_draws`` (n, N) < the chain's stationary availability. Masks follow from
    the footprint at the smallest rank (the rank head, if any, allows every rank); the state is zeroed."""
    s, tables, reward = model.state, model.tables, model.reward
    N = s.allowed.shape[1]
    levels = tables.memory_bytes.shape[0]
    device_data = 1.0 - tables.server_share
    stationary = tables.on_rate / (tables.on_rate + tables.off_rate) if tables.markov else 1.0
    groups = share_draws.shape[1]
    for j in range(len(idx)):
        b, n = idx[j], present[j]
        s.present[b] = n
        for i in range(N):
            s.share[b, i] = 0.0
            for d in range(D):
                s.mix[b, i, d] = 0.0
        for g in range(groups):
            total = 0.0
            for i in range(n):
                total += share_draws[j, g, i]
            weight = tables.domain_weight[g] if tables.content_skew else 1.0
            for i in range(n):  # an all-zero draw (tiny α underflows) splits equally
                part = weight * (share_draws[j, g, i] / total if total > 0 else 1.0 / n)
                s.share[b, i] += part
                s.mix[b, i, g] = part
        for i in range(N):
            held = s.share[b, i]
            for d in range(D):
                s.mix[b, i, d] = s.mix[b, i, d] / held if held > 0 else (tables.domain_weight[d] if i < n else 0.0)
            s.share[b, i] = device_data * held
            capacity = tiers[int(tier_draws[j, i] * len(tiers))] * full_memory_bytes if i < n else 0.0
            s.allowed[b, i] = memory_fraction * capacity
            s.headroom[b, i] = min(max(s.allowed[b, i] / full_memory_bytes, 0.0), 2.0)
            for k in range(levels):
                s.fits[b, i, k] = i < n and tables.memory_bytes[k, 0] <= s.allowed[b, i]
            s.available[b, i] = i < n and available_draws[j, i] < stationary
            s.held[b, i] = s.exchanges[b, i] = s.participation[b, i] = 0
            s.exposure[b, i] = 0.0
            s.active[b, i] = False
        s.server_exposure[b] = 0.0
        _mask(b, s, model.masks)
        for d in range(D):
            s.domain_ppl[b, d] = tables.initial_domain_ppl[d]
        s.ppl[b] = reward.initial_ppl
        s.t[b] = 0


@numba.njit(cache=True, error_model="numpy")
def _mask(b, s: State, masks) -> None:
    """Episode b's action masks: level 0 always; level k > 0 where it fits the device's memory and the device is
    available (rank entries, if any, stay allowed)."""
    N, levels = s.fits.shape[1], s.fits.shape[2]
    for i in range(N):
        masks[b, i * levels] = True
        for k in range(1, levels):
            masks[b, i * levels + k] = s.fits[b, i, k] and s.available[b, i]


@numba.njit(cache=True, error_model="numpy")
def _fits(level, rank, memory_bytes, allowed) -> bool:
    """Whether a device selected at ``level`` (0: not selected) and rank level ``rank`` fits its ``allowed`` memory.
    (Scalars and one table: a call that passes the named structures would pay their reference counting per device.)"""
    return level > 0 and memory_bytes[level, rank] <= allowed


@numba.njit(cache=True, error_model="numpy")
def _price(b, actions, uplink_bps, downlink_bps, r, rv, s: State, tables: Tables) -> None:
    """Costs of episode b's round into its ``ROUND_DTYPE`` record ``r`` (``rv``: its float64 view; rates (B·N,) in bit/s, episode-major). A
    selected device that is unavailable or over its allowed memory is dropped; an active device whose held emulator
    differs downloads the new one (an exchange); every active device downloads and uploads its adapter. The trainers'
    data share, ε, rank and domain mix include the server's (full model, largest rank, the domains' own weights) when
    it collaborates. The trainers' data (and the server's) gains the round's epochs (``trainer_epochs``)."""
    N = tables.num_devices
    ranked = actions.shape[1] > N
    memory_bytes, allowed = tables.memory_bytes, s.allowed
    n_active = 0
    for i in range(N):
        n_active += s.available[b, i] and _fits(actions[b, i], actions[b, N + i] if ranked else 0, memory_bytes,
                                                allowed[b, i])
    downlink = downlink_share(tables.latency_max, n_active)  # every active device downloads (at least its adapter)
    n_exchanges = n_violations = n_unavailable = n_excess = 0
    memory = latency = cost = weighted_eps = 0.0
    data = tables.server_share
    weighted_rank = tables.server_share * tables.rank_values[len(tables.rank_values) - 1]
    for d in range(D):
        rv[_MIX + d] = tables.server_share * tables.domain_weight[d]
    for i in range(N):
        level, rank = actions[b, i], actions[b, N + i] if ranked else 0
        s.active[b, i] = s.available[b, i] and _fits(level, rank, memory_bytes, allowed[b, i])
        if not s.active[b, i]:
            if level > 0:
                if s.available[b, i]:
                    n_violations += 1
                else:
                    n_unavailable += 1
            continue
        adapter = tables.adapter_bytes[rank]
        down = adapter
        if s.held[b, i] != level:
            s.held[b, i] = level
            if tables.emulator_bytes[level] > 0:  # trainable="all" has no frozen part to exchange
                s.exchanges[b, i] += 1
                n_exchanges += 1
                n_excess += s.exchanges[b, i] > tables.exchange_budget
                down += tables.emulator_bytes[level]
        s.participation[b, i] += 1
        q = _latency_s(down, adapter, downlink * downlink_bps[b * N + i], uplink_bps[b * N + i])
        latency = max(latency, q) if tables.latency_max else latency + q
        cost += min(q / tables.reference_latency_s, LATENCY_CAP)
        memory += tables.memory_bytes[level, rank] / s.allowed[b, i]
        data += s.share[b, i]
        weighted_eps += s.share[b, i] * tables.eps[level]
        weighted_rank += s.share[b, i] * tables.rank_values[rank]
        for d in range(D):
            rv[_MIX + d] += s.share[b, i] * s.mix[b, i, d]
    s.server_exposure[b], reuse = trainer_epochs(s.share[b], s.active[b], s.exposure[b], tables.server_share,
                                                 s.server_exposure[b], tables.sequences_per_round, tables.blocks)
    r.round_latency_s = latency
    n = s.present[b]
    r.latency_cost = min(latency / tables.reference_latency_s, LATENCY_CAP) if tables.latency_max else cost / n
    r.exchanges = n_exchanges
    r.memory_violations = n_violations
    r.unavailable = n_unavailable
    r.participants = n_active
    r.memory_use = memory / n if tables.memory_sum else memory / max(n_active, 1)
    r.excess_exchanges = n_excess
    r.share = max(data, 1.0 / tables.blocks) if data > 0 else 0.0  # trainers hold whole blocks, at least one (a
    # Dirichlet draw of tiny α gives shares of 1e-300, whose noise term σ·s^(−γ) overflowed to an infinite perplexity)
    r.compression = weighted_eps / data if data > 0 else 0.0
    r.rank = weighted_rank / data if data > 0 else 0.0
    r.reuse = reuse
    for d in range(D):
        rv[_MIX + d] = rv[_MIX + d] / data if data > 0 else 0.0
    r.noise = s.noise[b]


@numba.njit(cache=True, error_model="numpy")
def _settle(b, next_ppl, out: Output, s: State, tables: Tables, reward: RewardParams, masks) -> None:
    """Episode b after its round: new perplexity and time, the reward terms and the reward, the episode's end; then
    the availability chains step (the observation shows who can train next round) and the masks follow."""
    r = out.round_[b]
    s.ppl[b] = next_ppl
    s.t[b] += 1
    settle_terms(next_ppl, r, out.terms[b], reward, s.present[b])
    r.reward = out.term_values[b].sum()
    out.ended[0, b] = next_ppl <= reward.target
    out.ended[1, b] = (next_ppl > reward.target) & (s.t[b] >= reward.horizon)
    if tables.markov:
        for i in range(s.present[b]):  # empty slots stay unavailable
            s.available[b, i] = s.flips[b, i] >= tables.off_rate if s.available[b, i] else s.flips[b, i] < tables.on_rate
        _mask(b, s, masks)


@numba.njit(cache=True, error_model="numpy")
def _round(actions, live, uplink_bps, downlink_bps, out: Output, model: Model) -> None:
    """A surrogate round of the live episodes (``Dynamics.step``) and every episode's observation, episode by episode
    (its state is still in L1 cache when it is observed)."""
    s, tables, surrogate, reward = model.state, model.tables, model.surrogate, model.reward
    for b in range(s.held.shape[0]):
        r = out.round_[b]
        if live[b]:
            _price(b, actions, uplink_bps, downlink_bps, r, out.round_values[b], s, tables)
            next_ppl = surrogate_round(s.domain_ppl[b], r, tables.eval_weight, surrogate)
            _settle(b, next_ppl, out, s, tables, reward, model.masks)
        else:  # idle this step: nothing trains, its records say so
            for i in range(tables.num_devices):
                s.active[b, i] = False
            out.round_values[b, :] = 0.0
            out.term_values[b, :] = 0.0
            out.ended[0, b] = out.ended[1, b] = False
        _report(b, out, s, tables, reward)


@numba.njit(cache=True, error_model="numpy")
def _transmit(actions, uplink_bps, downlink_bps, out: Output, model: Model) -> None:
    """``_price`` of every episode (``Dynamics.transmit``)."""
    s, tables = model.state, model.tables
    for b in range(s.held.shape[0]):
        _price(b, actions, uplink_bps, downlink_bps, out.round_[b], out.round_values[b], s, tables)


@numba.njit(cache=True, error_model="numpy")
def _finish(next_ppl, next_domain_ppl, out: Output, model: Model) -> None:
    """``_settle`` and the observation of every episode (``Dynamics.finish``)."""
    s, tables, reward = model.state, model.tables, model.reward
    for b in range(s.held.shape[0]):
        for d in range(D):
            s.domain_ppl[b, d] = next_domain_ppl[b, d]
        _settle(b, next_ppl[b], out, s, tables, reward, model.masks)
        _report(b, out, s, tables, reward)


@numba.njit(cache=True, error_model="numpy")
def _report(b, out: Output, s: State, tables: Tables, reward: RewardParams) -> None:
    """Episode b after its round (or its idle step): perplexity and round into its record, its observation."""
    r = out.round_[b]
    r.perplexity = s.ppl[b]
    r.round = s.t[b]
    _observe(b, out.obs, s, tables, reward)


@numba.njit(cache=True, error_model="numpy")
def _observe(b, obs, s: State, tables: Tables, reward: RewardParams) -> None:
    """Write episode b's observation into ``obs[b]`` (layout: ``Dynamics.observe``; reciprocals instead of divisions
    in the per-device loop)."""
    N = s.held.shape[1]
    per_db, per_round = 1.0 / GAIN_DB_SCALE, 1.0 / reward.horizon
    for i in range(N):
        o = DEVICE_FEATURES * i
        obs[b, o] = min(max((s.gain_db[b, i] - GAIN_DB_CENTRE) * per_db, -3.0), 3.0)
        obs[b, o + 1] = s.headroom[b, i]
        obs[b, o + 2] = tables.held_eps[s.held[b, i]]
        obs[b, o + 3] = min(s.exchanges[b, i] * per_round, 1.0)
        obs[b, o + 4] = min(s.participation[b, i] * per_round, 1.0)
        obs[b, o + 5] = min(s.share[b, i] * s.present[b], N)
        obs[b, o + 6] = 1.0 if s.available[b, i] else 0.0
        for d in range(D):
            obs[b, o + 7 + d] = s.mix[b, i, d] if tables.observe_domains else 0.0
    o = DEVICE_FEATURES * N
    log_span = np.log(reward.initial_ppl / reward.target)
    progress = (reward.initial_ppl - s.ppl[b]) / (reward.initial_ppl - reward.target)
    obs[b, o] = min(max(progress, -1.0), 2.0)
    obs[b, o + 1] = s.t[b] * per_round
    for d in range(D):  # log-perplexity progress on each domain, in units of the whole target's (0: not held)
        gained = np.log(tables.initial_domain_ppl[d] / s.domain_ppl[b, d]) / log_span if tables.eval_weight[d] > 0 else 0.0
        obs[b, o + 2 + d] = min(max(gained, -1.0), 2.0)


@numba.njit(cache=True, error_model="numpy")
def _observe_all(obs, model: Model) -> None:
    """Every episode's observation into ``obs`` (B, DEVICE_FEATURES·N + ROUND_FEATURES)."""
    s, tables, reward = model.state, model.tables, model.reward
    for b in range(s.held.shape[0]):
        _observe(b, obs, s, tables, reward)


__all__ = ["D", "DEVICE_FEATURES", "DOMAINS", "INFO_KEYS", "REWARD_TERMS", "ROUND_DTYPE", "ROUND_FEATURES",
           "Dynamics", "Output", "State", "Tables"]
