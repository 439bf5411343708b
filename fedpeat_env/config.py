"""The environment's configuration: one typed dataclass, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np

from federation.architecture import COST_PROFILES, CostProfile, keep_for_compression, profile_shape
from federation.executor_config import EXECUTORS, ExecutorKind
from federation.system import LATENCY_AGGREGATIONS, ChannelConfig, LatencyAggregation
from fedpeat_env.costs import TRAINABLE, Trainable
from fedpeat_env.reward import RewardWeights

Fidelity = Literal["surrogate", "engine"]
MemoryAggregation = Literal["sum", "mean"]
Partition = Literal["iid", "dirichlet", "domains"]
PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "domains")
Availability = Literal["always", "markov"]
AVAILABILITIES: tuple[str, ...] = ("always", "markov")


@dataclass(frozen=True)
class EnvConfig:
    """FedPEAT environment settings (keyword arguments of ``gymnasium.make``). Defaults define the benchmark
    scenario: heterogeneous memory tiers and distances, time-correlated Rayleigh fading."""

    num_devices: int = 10
    """Devices N (the slots of the observation and action)."""
    episode_devices: tuple[int, ...] | None = None
    """(low, high): each episode has n devices, n drawn uniformly from low..high at reset; the other N − n slots are
    empty (no data, no memory, never available: all zeros in the observation, only action 0 allowed) and the reward's
    per-device normalisations use n. For training one policy across numbers of devices (a device-set policy); None:
    every episode has N."""
    compression_levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    """ε of action levels 1..K (action 0 = device not selected). Each must map to a whole number of kept
    middle blocks of the embedded model (8 middle blocks: multiples of 1/8)."""
    horizon: int = 20
    """Rounds T per episode (truncation)."""
    target_perplexity: float | None = None
    """Episode ends when the full model's perplexity reaches it; None: the calibrated best plug-in perplexity × 1.1."""
    reward: RewardWeights = field(default_factory=RewardWeights)
    """Reward weights and penalties."""
    memory_fraction: float = 0.9
    """η: share of a device's memory capacity that training may use."""
    exchange_fraction: float = 0.25
    """κ: emulator exchanges per device allowed without penalty, as a share of the horizon."""
    memory_tiers: tuple[float, ...] = (0.45, 0.7, 1.2)
    """Device memory capacities as multiples of the full model's training footprint; each device draws one tier
    uniformly at reset (the smallest cannot hold low-compression emulators, the largest holds the full model)."""
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    """Path loss, fading, bandwidth and power of the devices."""
    cost_profile: CostProfile = "gpt2-xl"
    """Architecture whose bytes and memory the env charges: embedded, gpt2, gpt2-medium, gpt2-large, gpt2-xl (the
    FedPEAT paper's setting, the default; the learning dynamics always come from the embedded model's calibration)."""
    control_rank: bool = False
    """Add a per-device LoRA-rank head to the action."""
    rank_levels: tuple[int, ...] = (2, 4, 8)
    """LoRA ranks of the rank head (with control_rank); without it every device uses the largest."""
    fidelity: Fidelity = "surrogate"
    """surrogate: calibrated perplexity model (fast); engine: each step runs a real federated round."""
    calibration: str | None = None
    """Calibration file (None: the committed one for the embedded model)."""
    engine_local_steps: int = 10
    """Local steps per device per round in engine fidelity (10, as in the committed calibration's engine runs)."""
    executor: ExecutorKind = "local"
    """Engine fidelity: where the clients train, "local" (this process) or "ray" (long-lived client actors, the ray
    extra; started once per env and kept across episodes)."""
    ray_address: str | None = None
    """Engine fidelity with executor "ray": the cluster to join (None: a local Ray)."""
    latency_aggregation: LatencyAggregation = "sum"
    """"sum" (FedPEAT's total latency of all devices; the server serves them in turn, each at the whole downlink
    rate) or "max" (the slowest device; devices served at once, the downlink split equally between them)."""
    memory_aggregation: MemoryAggregation = "sum"
    """"sum" (FedPEAT's memory of all devices) or "mean" (over the devices that trained)."""
    partition: Partition = "domains"
    """How the tuning data is split over the devices. "domains" (content skew, the default): the three tuning domains
    (pydocs, licenses, docstrings), each domain's blocks split over the devices in shares ~ Dirichlet(domain_alpha), so
    devices differ in what they hold and how much; the full model is evaluated on the union. "dirichlet" (quantity
    skew, one domain: pydocs): shares ~ Dirichlet(dirichlet_alpha). "iid": pydocs in equal shares."""
    dirichlet_alpha: float = 1.0
    """α of the "dirichlet" split (small: a few devices hold most of the data)."""
    domain_alpha: float = 0.5
    """α of the "domains" split: per domain, the devices' shares of its blocks ~ Dirichlet(α·1_N) (small: each domain
    sits on a few devices)."""
    observe_domains: bool = True
    """Whether the agent sees each device's domain histogram (the share of its data in each tuning domain, a label
    histogram the device reports); False: those entries are 0."""
    availability: Availability = "markov"
    """"markov": each device is available or not, a two-state Markov chain per device stepped every round
    (availability_off_rate, availability_on_rate; the first round from the chain's stationary distribution); an
    unavailable device cannot train (its mask allows only 0; selected anyway, it is dropped and charged
    ``availability_penalty``) and keeps what it holds. "always": every device is available every round."""
    availability_off_rate: float = 0.1
    """P(available → unavailable) per round (Bonawitz et al. 2019 report 6–10% of devices dropping out of a round)."""
    availability_on_rate: float = 0.3
    """P(unavailable → available) per round (mean absence 1/0.3 ≈ 3.3 rounds; stationary availability
    on / (on + off) = 75%)."""
    trainable: Trainable = "adapter"
    """What a device trains, downloads and uploads each round: "adapter" (FedPEAT's LoRA adapter through an emulator)
    or "all" (Fed-FT's cost profile: every weight of the full model; compression_levels must be (0.0,), no rank
    head). The learning dynamics stay the calibrated adapter's at ε = 0: "all" changes the costs only."""
    server_fraction: float = 0.0
    """Share of the tuning data the server holds; it trains the full model every round, at no transmission cost and
    without a memory limit (FedPEAT server–device collaborative tuning). 0: the server only aggregates."""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in fields(self):
            _check_type(f.name, hints[f.name], getattr(self, f.name))
        _require(self.num_devices >= 1, "num_devices", ">= 1", self.num_devices)
        _require(self.horizon >= 1, "horizon", ">= 1", self.horizon)
        span = self.episode_devices
        _require(span is None or (len(span) == 2 and 1 <= span[0] <= span[1] <= self.num_devices), "episode_devices",
                 "None or (low, high) with 1 <= low <= high <= num_devices", span)
        levels = self.compression_levels
        _require(len(levels) >= 1 and all(0.0 <= e < 1.0 for e in levels), "compression_levels", "values in [0, 1)", levels)
        _require(list(levels) == sorted(set(levels)), "compression_levels", "strictly increasing", levels)
        _require(self.target_perplexity is None or self.target_perplexity > 1.0, "target_perplexity", "> 1 or None",
                 self.target_perplexity)
        _require(0.0 < self.memory_fraction <= 1.0, "memory_fraction", "(0, 1]", self.memory_fraction)
        _require(0.0 <= self.exchange_fraction <= 1.0, "exchange_fraction", "[0, 1]", self.exchange_fraction)
        _require(len(self.memory_tiers) >= 1 and all(t > 0 for t in self.memory_tiers), "memory_tiers", "positive values",
                 self.memory_tiers)
        _require(self.cost_profile in COST_PROFILES, "cost_profile", f"one of {COST_PROFILES}", self.cost_profile)
        for profile in dict.fromkeys((self.cost_profile, "embedded" if self.fidelity == "engine" else self.cost_profile)):
            middle = profile_shape(profile).n_layer - 2  # the adapter is one block at each end (costs.level_costs)
            for eps in levels:
                try:
                    keep_for_compression(middle, eps)
                except ValueError as err:
                    raise ValueError(f"compression_levels cannot be realised by the {profile!r} model: {err}") from None
        _require(len(self.rank_levels) >= 1 and all(r >= 1 for r in self.rank_levels), "rank_levels", "ranks >= 1",
                 self.rank_levels)
        _require(list(self.rank_levels) == sorted(set(self.rank_levels)), "rank_levels", "strictly increasing", self.rank_levels)
        _require(self.fidelity in ("surrogate", "engine"), "fidelity", "'surrogate' or 'engine'", self.fidelity)
        _require(self.engine_local_steps >= 1, "engine_local_steps", ">= 1", self.engine_local_steps)
        _require(self.executor in EXECUTORS, "executor", f"one of {EXECUTORS}", self.executor)
        _require(self.ray_address is None or self.executor == "ray", "ray_address", "None unless executor='ray'",
                 self.ray_address)
        _require(self.latency_aggregation in LATENCY_AGGREGATIONS, "latency_aggregation", f"one of {LATENCY_AGGREGATIONS}",
                 self.latency_aggregation)
        _require(self.memory_aggregation in ("sum", "mean"), "memory_aggregation", "one of ('sum', 'mean')",
                 self.memory_aggregation)
        _require(self.partition in PARTITIONS, "partition", f"one of {PARTITIONS}", self.partition)
        _require(self.availability in AVAILABILITIES, "availability", f"one of {AVAILABILITIES}", self.availability)
        for name in ("dirichlet_alpha", "domain_alpha"):
            _require(1e-3 <= getattr(self, name) <= 1e3, name, "in [0.001, 1000]", getattr(self, name))
        for name in ("availability_off_rate", "availability_on_rate"):
            _require(0.0 <= getattr(self, name) <= 1.0, name, "in [0, 1]", getattr(self, name))
        _require(self.availability_on_rate > 0 or self.availability == "always", "availability_on_rate",
                 "> 0 with availability='markov' (else a device that leaves never returns)", self.availability_on_rate)
        _require(0.0 <= self.server_fraction < 1.0, "server_fraction", "in [0, 1)", self.server_fraction)
        _require(self.trainable in TRAINABLE, "trainable", f"one of {TRAINABLE}", self.trainable)
        if self.trainable == "all":
            _require(tuple(levels) == (0.0,), "compression_levels", "(0.0,) with trainable='all' (Fed-FT has no emulator)",
                     levels)
            _require(not self.control_rank, "control_rank", "False with trainable='all' (no LoRA)", self.control_rank)
            _require(self.fidelity == "surrogate", "fidelity", "'surrogate' with trainable='all' (a cost profile only)",
                     self.fidelity)

    @classmethod
    def from_kwargs(cls, **kwargs) -> EnvConfig:
        """Build from keyword arguments; an unknown key raises ``ValueError`` listing the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise EnvOptionError(f"__init__() got an unexpected keyword argument {unknown[0]!r}: unknown FedPEAT env "
                                 f"option(s) {unknown}; valid options: {sorted(names)}")
        for key, settings in (("reward", RewardWeights), ("channel", ChannelConfig)):
            if isinstance(kwargs.get(key), dict):
                valid = {f.name for f in fields(settings)}
                if set(kwargs[key]) - valid:  # a ValueError: gymnasium rewrites a TypeError from the env's creator
                    raise ValueError(f"{key} has no setting(s) {sorted(set(kwargs[key]) - valid)}; valid: {sorted(valid)}")
                try:
                    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs[key].items()}
                    kwargs[key] = settings(**values)
                except ValueError as err:  # named as the option's setting: "channel: max_distance_m must be ..."
                    raise ValueError(str(err) if str(err).startswith(key) else f"{key}: {err}") from None
        for key in ("compression_levels", "memory_tiers", "rank_levels", "episode_devices"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


class EnvOptionError(TypeError, ValueError):
    """An unexpected keyword: a ``TypeError`` worded as Python words one ("__init__() got an unexpected keyword argument
    'x'"), because clients retry without a keyword they added on that error (SB3's ``make_vec_env`` drops
    ``render_mode`` on a ``TypeError``, torchrl's ``GymEnv`` drops ``frameskip`` on that wording), and a ``ValueError``
    like every other bad option; the message goes on to name the valid options."""


def _check_type(name: str, hint, value) -> None:
    """``ValueError`` naming ``name`` unless ``value`` has the field's type (bools are not numbers; ints are floats)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        if value is None and type(None) in args:
            return
        return _check_type(name, next(a for a in args if a is not type(None)), value)
    if origin is Literal:
        ok, allowed = isinstance(value, str), f"one of {args}"
    elif origin is tuple:
        item = args[0]
        ok = isinstance(value, tuple) and all(_is(item, v) for v in value)
        allowed = f"a tuple of {_PLURAL.get(item, item.__name__)}"
    else:
        ok, allowed = _is(hint, value), _type_name(hint)
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")


def _is(hint, value) -> bool:
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if hint is float:  # finite: NaN and inf pass most range checks' negations and poison every number downstream
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and bool(
            np.isfinite(value))
    return isinstance(value, hint)


_PLURAL = {int: "integers", float: "finite numbers"}


def _type_name(hint) -> str:
    return {int: "an integer", float: "a finite number", bool: "True or False", str: "a string"}.get(
        hint, f"a {hint.__name__}")


def _require(ok: bool, name: str, allowed: str, value) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
