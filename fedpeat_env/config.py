"""The environment's configuration: one typed dataclass, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from federation.foundation import COST_PROFILES
from federation.system import ChannelConfig

Fidelity = Literal["surrogate", "engine"]


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the normalised reward terms (FedPEAT: perplexity gap, latency Q, exchanges, memory)."""

    perplexity: float = 1.0
    """w_p · (ppl_t − target) / (ppl_0 − target)."""
    latency: float = 0.5
    """w_q · round latency / reference latency (full-model download at the median rate)."""
    exchanges: float = 0.3
    """w_x · emulator exchanges this round / N."""
    memory: float = 0.2
    """w_m · mean memory use / allowed memory over the selected devices."""
    memory_penalty: float = 1.0
    """Per device whose footprint exceeds η·capacity (that device is dropped from the round)."""
    exchange_penalty: float = 0.5
    """Per exchange beyond κ·T on a device."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) >= 0:
                raise ValueError(f"reward weight {f.name} must be >= 0, got {getattr(self, f.name)}")


@dataclass(frozen=True)
class EnvConfig:
    """FedPEAT environment settings (keyword arguments of ``gymnasium.make``). Defaults define the benchmark
    scenario: heterogeneous memory tiers and distances, time-correlated Rayleigh fading."""

    num_devices: int = 10
    """Devices N."""
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
    cost_profile: str = "gpt2-xl"
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

    def __post_init__(self) -> None:
        _require(self.num_devices >= 1, "num_devices", ">= 1", self.num_devices)
        _require(self.horizon >= 1, "horizon", ">= 1", self.horizon)
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
        _require(len(self.rank_levels) >= 1 and all(r >= 1 for r in self.rank_levels), "rank_levels", "ranks >= 1",
                 self.rank_levels)
        _require(list(self.rank_levels) == sorted(set(self.rank_levels)), "rank_levels", "strictly increasing", self.rank_levels)
        _require(self.fidelity in ("surrogate", "engine"), "fidelity", "'surrogate' or 'engine'", self.fidelity)
        _require(self.engine_local_steps >= 1, "engine_local_steps", ">= 1", self.engine_local_steps)

    @classmethod
    def from_kwargs(cls, **kwargs) -> EnvConfig:
        """Build from keyword arguments; an unknown key raises ``ValueError`` listing the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown FedPEAT env option(s) {unknown}; valid options: {sorted(names)}")
        if isinstance(kwargs.get("reward"), dict):
            kwargs["reward"] = RewardWeights(**kwargs["reward"])
        if isinstance(kwargs.get("channel"), dict):
            kwargs["channel"] = ChannelConfig(**kwargs["channel"])
        for key in ("compression_levels", "memory_tiers", "rank_levels"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def _require(ok: bool, name: str, allowed: str, value) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
