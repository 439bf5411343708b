"""The calibrated perplexity surrogate: how one federated round moves the full model's plug-in perplexity.

A round's trainers (the selected devices that fit in memory, and the server when it collaborates) hold a share s of
all training data; ε̄ is their data-weighted emulator compression and r̄ their data-weighted LoRA rank. The round
pulls the perplexity towards the plateau P(ε̄) = ppl_inf(ε̄), linear between the calibrated levels. Above the plateau,
progress follows a power law in *effective rounds* τ:

    gap(τ) = ppl − P = gap_0 · (1 + τ)^(−c),  gap_0 = ppl_0 − P,  one round adds  Δτ = a · s^b · (r̄ / r_max)^ρ,

so the next perplexity is P + gap_0 · ((gap_t / gap_0)^(−1/c) + a · s^b)^(−c): fast at first, then slowly, as the
engine's curves are (an exponential approach to a fixed plateau overshoots their tail); a smaller rank learns more
slowly (the engine's rank-2 rounds progress less than rank-8 ones; within the calibrated rounds the rank moved the
speed, not the plateau). Below the plateau (the trainers moved to a coarser emulator than the one that brought the
model there) it drifts up towards it, P + gap_t · exp(−Δτ). Then a log-normal factor exp(σ · s^(−γ) · z), z ~ N(0, 1): rounds on little data are
noisier. No trainer: the perplexity stays. ``fedpeat calibrate`` fits the parameters to engine runs
(``fedpeat_env.fit``) and writes a versioned JSON file with the runs and the fit errors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numba
import numpy as np

FORMAT_VERSION = 2
DEFAULT_CALIBRATION = Path(__file__).parent / "calibrations" / "embedded-v2.json"


class SurrogateParams(NamedTuple):
    """The surrogate's parameters as the compiled round takes them."""

    levels: np.ndarray
    """(K,) calibrated compression ratios ε, increasing."""
    plateaus: np.ndarray
    """(K,) ppl_inf at each level."""
    initial_ppl: float
    """ppl_0: the full model before tuning."""
    rate: float
    """a: effective rounds one round of all data adds."""
    shape: float
    """c: power-law exponent of the gap in effective rounds."""
    share_exponent: float
    """b: how the round's progress grows with the trainers' data share."""
    rank_exponent: float
    """ρ: a round at rank r̄ adds (r̄ / r_max)^ρ of the effective rounds of one at r_max."""
    max_rank: float
    """r_max: the global (largest) rank."""
    noise_std: float
    """σ: std of the log-perplexity noise of a round on all data."""
    noise_exponent: float
    """γ: the noise grows as s^(−γ) on less data."""


@numba.njit(cache=True, error_model="numpy")
def plateau(compression: float, p: SurrogateParams) -> float:
    """P(ε̄): ppl_inf linear between the calibrated levels, constant beyond them."""
    levels, plateaus = p.levels, p.plateaus
    last = len(levels) - 1
    if compression <= levels[0]:
        inf = plateaus[0]
    elif compression >= levels[last]:
        inf = plateaus[last]
    else:
        j = 0
        while compression >= levels[j + 1]:
            j += 1
        inf = plateaus[j] + (plateaus[j + 1] - plateaus[j]) * (compression - levels[j]) / (levels[j + 1] - levels[j])
    return inf


@numba.njit(cache=True, error_model="numpy")
def mean_perplexity(ppl: float, share: float, compression: float, rank: float, p: SurrogateParams) -> float:
    """The next perplexity without noise, after a round of trainers holding ``share`` of the data at ε̄ and r̄."""
    if not share > 0:
        return ppl
    target = plateau(compression, p)
    progress = p.rate * share**p.share_exponent * (rank / p.max_rank) ** p.rank_exponent
    gap = ppl - target
    if gap <= 0:
        return target + gap * np.exp(-progress)
    gap0 = max(p.initial_ppl - target, gap)
    return target + gap0 * ((gap / gap0) ** (-1.0 / p.shape) + progress) ** (-p.shape)


@numba.njit(cache=True, error_model="numpy")
def next_perplexity(ppl: float, round_, p: SurrogateParams) -> float:
    """The surrogate round of one episode, from its ``ROUND_DTYPE`` record (share, compression, rank, noise)."""
    if not round_.share > 0:
        return ppl
    mean = mean_perplexity(ppl, round_.share, round_.compression, round_.rank, p)
    return mean * np.exp(p.noise_std * round_.share ** (-p.noise_exponent) * round_.noise)


@numba.njit(cache=True, error_model="numpy")
def mean_step(ppl, share, compression, rank, p: SurrogateParams, out) -> None:
    """``mean_perplexity`` of B rounds: float64 (B,) arrays, the result into ``out``."""
    for b in range(len(ppl)):
        out[b] = mean_perplexity(ppl[b], share[b], compression[b], rank[b], p)


@dataclass(frozen=True)
class Calibration:
    """A fitted surrogate (``SurrogateParams`` without the arrays) with its fit report and provenance."""

    initial_perplexity: float
    levels: tuple[float, ...]
    plateau_perplexity: tuple[float, ...]
    rate: float
    shape: float
    share_exponent: float
    rank_exponent: float
    noise_std: float
    noise_exponent: float
    max_rank: int
    """The global LoRA rank of the engine runs (the env's largest ``rank_levels`` entry must equal it)."""
    ranks: tuple[int, ...] = ()
    """LoRA ranks the engine runs trained at; ``control_rank`` needs every ``rank_levels`` entry among them."""
    parameters: dict = field(default_factory=dict)
    """Every fitted parameter: {name: {"value", "low", "high", "at_bound"}}."""
    fit_error: dict = field(default_factory=dict)
    """Mean absolute % errors of perplexity, one-step and open-loop rollout, on fit and held-out runs, overall and
    per condition."""
    meta: dict = field(default_factory=dict)
    """How it was made: engine settings, the runs (fit and held-out), command, versions."""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if len(self.levels) != len(self.plateau_perplexity) or len(self.levels) < 1:
            raise ValueError("levels and plateau_perplexity must have the same, non-zero length")
        if list(self.levels) != sorted(self.levels):
            raise ValueError(f"levels must be increasing, got {self.levels}")

    def params(self) -> SurrogateParams:
        """The parameters as the compiled round takes them."""
        return SurrogateParams(np.array(self.levels, dtype=float), np.array(self.plateau_perplexity, dtype=float),
                               float(self.initial_perplexity), float(self.rate), float(self.shape),
                               float(self.share_exponent), float(self.rank_exponent), float(self.max_rank),
                               float(self.noise_std), float(self.noise_exponent))

    def check_controls(self, config) -> None:
        """ValueError if the env ``config`` trains at a LoRA rank this calibration has no engine runs at (every rank of
        ``rank_levels`` with ``control_rank``, else its largest, the rank every device then uses)."""
        used = tuple(config.rank_levels) if config.control_rank else tuple(config.rank_levels[-1:])
        missing = sorted(set(used) - set(self.ranks))
        if missing:
            what = (f"control_rank=True needs a calibration with engine runs at every rank of rank_levels {used}"
                    if config.control_rank else
                    f"rank_levels[-1] = {used[0]} (the rank every device trains at) needs a calibration with runs at it")
            raise ValueError(f"{what}; this calibration has ranks {self.ranks} (missing {missing}): run "
                             f"`fedpeat calibrate --ranks {','.join(str(r) for r in sorted(set(self.ranks) | set(used)))}`")

    def mean_step(self, ppl: np.ndarray, share: np.ndarray, compression: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """The noiseless next perplexity of B rounds, all arguments (B,)."""
        out = np.empty(len(ppl))
        mean_step(*(np.ascontiguousarray(x, dtype=float) for x in (ppl, share, compression, rank)), self.params(), out)
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path | None = None) -> Calibration:
        """The calibration in ``path`` (None: the committed one); ``ValueError`` naming the file if it is missing, not
        JSON or not a calibration of this format (bad input to the env's ``calibration`` option, ``--refit``)."""
        path = Path(path) if path is not None else DEFAULT_CALIBRATION
        if not path.is_file():
            raise ValueError(f"calibration file {path} not found; create one with `fedpeat calibrate`")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"calibration file {path} is not JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            found = data.get("format_version") if isinstance(data, dict) else None
            raise ValueError(f"calibration {path} has format_version {found}, expected "
                             f"{FORMAT_VERSION}; refit it with `fedpeat calibrate`")
        try:
            for key in ("levels", "plateau_perplexity", "ranks"):
                data[key] = tuple(data[key])
            return cls(**data)
        except (KeyError, TypeError) as err:
            raise ValueError(f"calibration file {path} lacks or has unknown fields ({err})") from None
