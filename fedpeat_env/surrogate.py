"""The calibrated perplexity surrogate: how one federated round moves the full model's plug-in perplexity on each
tuning domain.

A round's trainers (the selected devices that are available and fit in memory, and the server when it collaborates)
hold a share s of all training data; ε̄ is their data-weighted emulator compression, r̄ their data-weighted LoRA rank,
m_d the share of their data in domain d, and ē the data-weighted number of epochs the global model has been trained
on their data so far (this round's included: a round trains ``local_sequences`` sequences per trainer, FedAvg-weighted
by data, so sequences / (blocks the trainers hold) epochs on each of their blocks; ``trainer_epochs``). Each domain d
the scenario holds moves towards its plateau

    P_d = π_d · λ(ε̄) · exp(κ · (1 − m_d)^β + G · (1 − exp(−max(ē − e₀, 0) / E)))

(π_d: the domain's plateau when all the round's data is its own, at the first calibrated ε; λ(ε): the emulator ladder,
λ = 1 at the first level, linear between the calibrated levels; κ, β: the *coverage* term, how much less a domain
gains when the trainers hold little of it; G, e₀, E: the *data-reuse* term, the over-fitting of data trained on for
many epochs: none before e₀ epochs, then rising over E epochs towards G in log-perplexity, a model that memorised its
few blocks gets no worse). Above the plateau, progress follows a power law in *effective rounds* τ:

    gap_d(τ) = ppl_d − P_d = gap0_d · (1 + τ)^(−c),  gap0_d = ppl0_d − P_d,
    one round adds  Δτ_d = a · s^b · (r̄ / r_max)^ρ · (m_d + η · (1 − m_d))

(η: how much a round on other domains' data advances domain d), so ppl_d' = P_d + gap0_d · ((gap_d / gap0_d)^(−1/c)
+ Δτ_d)^(−c); below it (a coarser emulator, another data mix or over-fitting raised the plateau) it drifts up,
P_d + gap_d · exp(−Δτ_d). Then one log-normal factor exp(σ·s^(−γ)·z), z ~ N(0, 1), common to the domains: rounds on
little data are noisier. The full model's perplexity is exp(Σ_d w_d log ppl_d), w_d the domains' shares of the
held-out tokens. No trainer: nothing moves. ``fedpeat calibrate`` fits the parameters to engine runs
(``fedpeat_env.fit``) and writes a versioned JSON file with the runs, the fit errors and the conditions the runs
covered.
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numba
import numpy as np

FORMAT_VERSION = 3
DEFAULT_CALIBRATION = Path(__file__).parent / "calibrations" / "embedded-v3.json"
DOMAINS: tuple[str, ...] = ("pydocs", "licenses", "docstrings")
"""The tuning domains, in the order of every per-domain array (the corpus's domains held out of pretraining; the
single-domain scenarios hold pydocs only)."""
TARGET_FACTOR = 1.05
"""The default target: this × the lowest perplexity an engine run of the calibration reached at ε = 0 and rank r_max
(``Calibration.target_perplexity``)."""


class SurrogateParams(NamedTuple):
    """The surrogate's parameters as the compiled round takes them (per-domain arrays in ``DOMAINS`` order)."""

    levels: np.ndarray
    """(K,) calibrated compression ratios ε, increasing."""
    ladder: np.ndarray
    """(K,) λ(ε) at each level (1 at the first)."""
    initial_domain_ppl: np.ndarray
    """(D,) ppl0_d: each domain before tuning."""
    domain_plateau: np.ndarray
    """(D,) π_d."""
    coverage: float
    """κ: log-plateau rise of a domain the trainers hold none of."""
    coverage_exponent: float
    """β: the rise is κ · (1 − m_d)^β."""
    transfer: float
    """η: a round advances domain d by (m_d + η · (1 − m_d)) of its effective rounds."""
    reuse: float
    """G: the log-plateau rise of data trained on for ever."""
    reuse_onset: float
    """e₀: epochs on the trainers' data before over-fitting shows."""
    reuse_scale: float
    """E: epochs beyond e₀ over which the rise approaches G (1 − 1/e of it after E)."""
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
def ladder(compression: float, p: SurrogateParams) -> float:
    """λ(ε̄): linear between the calibrated levels, constant beyond them."""
    levels, values = p.levels, p.ladder
    last = len(levels) - 1
    if compression <= levels[0]:
        return values[0]
    if compression >= levels[last]:
        return values[last]
    j = 0
    while compression >= levels[j + 1]:
        j += 1
    return values[j] + (values[j + 1] - values[j]) * (compression - levels[j]) / (levels[j + 1] - levels[j])


@numba.njit(cache=True, error_model="numpy")
def domain_plateau(d: int, compression: float, mix: float, reuse: float, p: SurrogateParams) -> float:
    """P_d: domain d's plateau for trainers at ε̄ = ``compression`` holding ``mix`` of their data in it, trained on
    for ``reuse`` epochs."""
    uncovered = 1.0 - min(max(mix, 0.0), 1.0)
    over = 1.0 - np.exp(-max(reuse - p.reuse_onset, 0.0) / p.reuse_scale)
    log_rise = p.coverage * uncovered**p.coverage_exponent + p.reuse * over
    return p.domain_plateau[d] * ladder(compression, p) * np.exp(log_rise)


@numba.njit(cache=True, error_model="numpy")
def domain_step(d: int, ppl: float, share: float, compression: float, rank: float, mix: float, reuse: float,
                p: SurrogateParams) -> float:
    """Domain d's next perplexity without noise, after a round (share s, ε̄, r̄, m_d, ē)."""
    if not share > 0:
        return ppl
    target = domain_plateau(d, compression, mix, reuse, p)
    covered = min(max(mix, 0.0), 1.0)
    progress = (p.rate * share**p.share_exponent * (rank / p.max_rank) ** p.rank_exponent
                * (covered + p.transfer * (1.0 - covered)))
    gap = ppl - target
    if gap <= 0:
        return target + gap * np.exp(-progress)
    gap0 = max(p.initial_domain_ppl[d] - target, gap)
    return target + gap0 * ((gap / gap0) ** (-1.0 / p.shape) + progress) ** (-p.shape)


@numba.njit(cache=True, error_model="numpy")
def surrogate_round(domain_ppl, round_, eval_weight, p: SurrogateParams) -> float:
    """One episode's round from its ``ROUND_DTYPE`` record (share, compression, rank, mix_<domain>, reuse, noise):
    moves ``domain_ppl`` (D,) in place (domains with ``eval_weight`` 0 stay) and returns the full model's perplexity
    exp(Σ_d w_d log ppl_d)."""
    share = round_.share
    mixes = (round_.mix_pydocs, round_.mix_licenses, round_.mix_docstrings)
    noise = np.exp(p.noise_std * share ** (-p.noise_exponent) * round_.noise) if share > 0 else 1.0
    log_ppl = 0.0
    for d in range(len(eval_weight)):
        if eval_weight[d] > 0:
            if share > 0:
                domain_ppl[d] = noise * domain_step(d, domain_ppl[d], share, round_.compression, round_.rank,
                                                    mixes[d], round_.reuse, p)
            log_ppl += eval_weight[d] * np.log(domain_ppl[d])
    return np.exp(log_ppl)


@numba.njit(cache=True, error_model="numpy")
def trainer_epochs(shares, trained, exposure, server_share: float, server_exposure: float, sequences: float,
                   blocks: float) -> tuple[float, float]:
    """A round's data reuse. The trainers (``trained`` (N,) bool, their data ``shares`` (N,), and the server's
    ``server_share`` when > 0) hold s·``blocks`` training blocks; FedAvg of ``sequences`` sequences per trainer,
    weighted by data, trains e = sequences / max(s·blocks, 1) epochs on each of their blocks. Adds e to the trainers'
    ``exposure`` (N,) in place and returns (the server's new exposure, ē: the trainers' data-weighted exposure)."""
    data = server_share
    for i in range(len(shares)):
        if trained[i]:
            data += shares[i]
    if not data > 0:
        return server_exposure, 0.0
    epochs = sequences / max(data * blocks, 1.0)
    total = 0.0
    if server_share > 0:
        server_exposure += epochs
        total += server_share * server_exposure
    for i in range(len(shares)):
        if trained[i]:
            exposure[i] += epochs
            total += shares[i] * exposure[i]
    return server_exposure, total / data


@numba.njit(cache=True, error_model="numpy")
def run_reuse(shares, trained, server_share: float, sequences: float, blocks: float, out) -> None:
    """ē of every round of one run (``trainer_epochs`` round after round from no exposure): ``trained`` (R, N) bool,
    the result into ``out`` (R,)."""
    exposure = np.zeros(len(shares))
    server_exposure = 0.0
    for t in range(trained.shape[0]):
        server_exposure, out[t] = trainer_epochs(shares, trained[t], exposure, server_share, server_exposure, sequences,
                                                 blocks)


@numba.njit(cache=True, error_model="numpy")
def mean_steps(domain_ppl, share, compression, rank, mix, reuse, p: SurrogateParams, out) -> None:
    """``domain_step`` of B rounds of every domain: ``domain_ppl`` and ``mix`` (B, D), the rest (B,); the noiseless
    next perplexities into ``out`` (B, D) (NaN entries stay NaN: domains a run does not evaluate)."""
    for b in range(domain_ppl.shape[0]):
        for d in range(domain_ppl.shape[1]):
            out[b, d] = domain_step(d, domain_ppl[b, d], share[b], compression[b], rank[b], mix[b, d], reuse[b], p)


@dataclass(frozen=True)
class Coverage:
    """What the calibration's engine runs covered: the env warns outside it (``Calibration.warn_outside``)."""

    num_devices: tuple[int, int] = (10, 10)
    rounds: int = 20
    server_fraction: tuple[float, float] = (0.0, 0.0)
    dirichlet_alpha: tuple[float, float] = (1.0, 1.0)
    domain_alpha: tuple[float, float] = (0.5, 0.5)
    partitions: tuple[str, ...] = ("iid", "dirichlet", "domains")

    def __post_init__(self) -> None:
        for name in ("num_devices", "server_fraction", "dirichlet_alpha", "domain_alpha"):
            span, check = getattr(self, name), _integer if name == "num_devices" else _finite
            if not (isinstance(span, tuple) and len(span) == 2 and all(check(v) for v in span) and span[0] <= span[1]):
                raise ValueError(f"calibration field covered.{name} must be a [low, high] pair of "
                                 f"{'integers' if name == 'num_devices' else 'finite numbers'}, got {span!r}")
        if not _integer(self.rounds):
            raise ValueError(f"calibration field covered.rounds must be an integer, got {self.rounds!r}")
        if not isinstance(self.partitions, tuple) or not all(isinstance(p, str) for p in self.partitions):
            raise ValueError(f"calibration field covered.partitions must be a list of names, got {self.partitions!r}")


def _finite(value) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    """An integer (not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_NUMBER_LISTS = ("levels", "ladder", "initial_domain_perplexity", "domain_plateau")
_INTEGER_LISTS = ("domain_train_blocks", "domain_eval_blocks", "ranks")
_NUMBERS = ("coverage", "coverage_exponent", "transfer", "reuse", "reuse_onset", "reuse_scale", "rate", "shape",
            "share_exponent", "rank_exponent", "noise_std", "noise_exponent")
_INTEGERS = ("max_rank", "local_sequences")


@dataclass(frozen=True)
class Calibration:
    """A fitted surrogate (``SurrogateParams`` as plain values) with its data, coverage, fit report and provenance."""

    levels: tuple[float, ...]
    ladder: tuple[float, ...]
    domains: tuple[str, ...]
    """The tuning domains the runs held (in ``DOMAINS`` order)."""
    initial_domain_perplexity: tuple[float, ...]
    domain_plateau: tuple[float, ...]
    domain_train_blocks: tuple[int, ...]
    """Training blocks of each domain (the engine's block size)."""
    domain_eval_blocks: tuple[int, ...]
    """Held-out blocks of each domain the full model is evaluated on."""
    coverage: float
    coverage_exponent: float
    transfer: float
    reuse: float
    reuse_onset: float
    reuse_scale: float
    rate: float
    shape: float
    share_exponent: float
    rank_exponent: float
    noise_std: float
    noise_exponent: float
    max_rank: int
    """The global LoRA rank of the engine runs (the env's largest ``rank_levels`` entry must equal it)."""
    local_sequences: int
    """Sequences a trainer trains on per round in the engine runs (local steps × batch)."""
    ranks: tuple[int, ...] = ()
    """LoRA ranks the engine runs trained at; ``control_rank`` needs every ``rank_levels`` entry among them."""
    best_perplexity: dict = field(default_factory=dict)
    """{scenario key ("pydocs" or "pydocs+licenses+docstrings"): the lowest perplexity an engine run reached at the
    first level and r_max}: where the default target comes from."""
    covered: Coverage = field(default_factory=Coverage)
    parameters: dict = field(default_factory=dict)
    """Every fitted parameter: {name: {"value", "low", "high", "at_bound"}}."""
    fit_error: dict = field(default_factory=dict)
    """Mean absolute % errors of perplexity, one-step and open-loop rollout, on fit and held-out runs, overall and
    per condition."""
    meta: dict = field(default_factory=dict)
    """How it was made: engine settings, the runs (fit and held-out), command, versions."""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        for name in _NUMBER_LISTS + _INTEGER_LISTS:  # the type of every number first: NaN, inf, "oops", 1.5 blocks
            value, integer = getattr(self, name), name in _INTEGER_LISTS
            if not isinstance(value, tuple) or not all((_integer if integer else _finite)(v) for v in value):
                raise ValueError(f"calibration field {name} must be a list of {'integers' if integer else 'finite numbers'}"
                                 f", got {value!r}")
        for name in _NUMBERS + _INTEGERS:
            value, integer = getattr(self, name), name in _INTEGERS
            if not (_integer if integer else _finite)(value):
                raise ValueError(f"calibration field {name} must be {'an integer' if integer else 'finite numbers'}, got "
                                 f"{value!r}")
        if not isinstance(self.best_perplexity, dict) or not all(
                isinstance(k, str) and _finite(v) and v > 1 for k, v in self.best_perplexity.items()):
            raise ValueError(f"calibration field best_perplexity must map scenarios to finite perplexities > 1, got "
                             f"{self.best_perplexity!r}")
        if not isinstance(self.covered, Coverage):
            raise ValueError(f"calibration field covered must be a Coverage, got {self.covered!r}")
        if len(self.levels) != len(self.ladder) or len(self.levels) < 1:
            raise ValueError("levels and ladder must have the same, non-zero length")
        if list(self.levels) != sorted(self.levels):
            raise ValueError(f"levels must be increasing, got {self.levels}")
        if not self.domains or any(d not in DOMAINS for d in self.domains) or list(self.domains) != [
                d for d in DOMAINS if d in self.domains]:
            raise ValueError(f"domains must be tuning domains in the order {DOMAINS}, got {self.domains}")
        for name in ("initial_domain_perplexity", "domain_plateau", "domain_train_blocks", "domain_eval_blocks"):
            if len(getattr(self, name)) != len(self.domains):
                raise ValueError(f"{name} must have one entry per domain {self.domains}")
        positive = ("initial_domain_perplexity", "domain_plateau", "ladder", "rate", "shape", "max_rank", "reuse_scale",
                    "local_sequences", "domain_train_blocks", "domain_eval_blocks", "ranks")
        for name in positive:
            values = getattr(self, name) if isinstance(getattr(self, name), tuple) else (getattr(self, name),)
            if not all(v > 0 for v in values):
                raise ValueError(f"calibration field {name} must be > 0, got {getattr(self, name)!r}")
        for name in ("coverage_exponent", "transfer", "reuse", "reuse_onset", "share_exponent",
                     "rank_exponent", "noise_std", "noise_exponent"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"calibration field {name} must be >= 0, got {getattr(self, name)!r}")

    def _full(self, values: tuple[float, ...], fill: float) -> np.ndarray:
        """A per-domain tuple as a (D,) array in ``DOMAINS`` order (``fill`` for domains the runs did not hold)."""
        out = np.full(len(DOMAINS), fill, dtype=float)
        out[[DOMAINS.index(d) for d in self.domains]] = values
        return out

    def params(self) -> SurrogateParams:
        """The parameters as the compiled round takes them."""
        return SurrogateParams(np.array(self.levels, dtype=float), np.array(self.ladder, dtype=float),
                               self._full(self.initial_domain_perplexity, 1.0), self._full(self.domain_plateau, 1.0),
                               float(self.coverage), float(self.coverage_exponent), float(self.transfer),
                               float(self.reuse), float(self.reuse_onset), float(self.reuse_scale), float(self.rate),
                               float(self.shape), float(self.share_exponent), float(self.rank_exponent),
                               float(self.max_rank), float(self.noise_std), float(self.noise_exponent))

    def scenario_domains(self, partition: str) -> tuple[str, ...]:
        """The domains a scenario holds: all of this calibration's for "domains" (content skew), else pydocs."""
        domains = self.domains if partition == "domains" else ("pydocs",)
        if partition == "domains" and len(self.domains) < 2:
            raise ValueError(f"partition 'domains' needs a calibration with engine runs on several domains; this one "
                             f"has {self.domains}")
        if "pydocs" not in self.domains:
            raise ValueError(f"partition {partition!r} needs a calibration with pydocs runs; this one has {self.domains}")
        return domains

    def domain_weights(self, domains: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(D,) arrays of a scenario holding ``domains``: each domain's share of the training blocks, and of the
        held-out blocks the full model is evaluated on (0 for the other domains)."""
        train, held_out = np.zeros(len(DOMAINS)), np.zeros(len(DOMAINS))
        for d in domains:
            k = self.domains.index(d)
            train[DOMAINS.index(d)] = self.domain_train_blocks[k]
            held_out[DOMAINS.index(d)] = self.domain_eval_blocks[k]
        return train / train.sum(), held_out / held_out.sum()

    def training_blocks(self, domains: tuple[str, ...]) -> int:
        """Training blocks of a scenario holding ``domains``."""
        return int(sum(self.domain_train_blocks[self.domains.index(d)] for d in domains))

    def target_perplexity(self, domains: tuple[str, ...]) -> float:
        """The default target of a scenario holding ``domains``: ``TARGET_FACTOR`` × the lowest perplexity an engine
        run of this calibration reached on that data (at the first level and r_max)."""
        key = "+".join(domains)
        if key not in self.best_perplexity:
            raise ValueError(f"this calibration has no engine run on {key}; give target_perplexity")
        return TARGET_FACTOR * float(self.best_perplexity[key])

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

    def warn_outside(self, config) -> None:
        """One ``UserWarning`` naming each env option outside what the engine runs covered (the surrogate
        extrapolates there)."""
        c = self.covered
        checks = [("num_devices", config.num_devices, c.num_devices),
                  ("horizon", config.horizon, (1, c.rounds)),
                  ("server_fraction", config.server_fraction, c.server_fraction)]
        if config.partition == "dirichlet":
            checks.append(("dirichlet_alpha", config.dirichlet_alpha, c.dirichlet_alpha))
        if config.partition == "domains":
            checks.append(("domain_alpha", config.domain_alpha, c.domain_alpha))
        outside = [f"{name}={value!r} (calibrated: {low:g}–{high:g})" for name, value, (low, high) in checks
                   if not low <= value <= high]
        if config.partition not in c.partitions:
            outside.append(f"partition={config.partition!r} (calibrated: {', '.join(c.partitions)})")
        if outside:
            warnings.warn(f"FedPEAT surrogate outside its calibration: {'; '.join(outside)}; the surrogate "
                          f"extrapolates there (fedpeat calibrate covers more)", UserWarning, stacklevel=3)

    def mean_step(self, domain_ppl: np.ndarray, share: np.ndarray, compression: np.ndarray, rank: np.ndarray,
                  mix: np.ndarray, reuse: np.ndarray) -> np.ndarray:
        """The noiseless next per-domain perplexities (B, D) of B rounds: ``domain_ppl`` and ``mix`` (B, D) in
        ``DOMAINS`` order, the rest (B,)."""
        out = np.empty(np.shape(domain_ppl))
        ppl, shares, eps, ranks, mixes, reuses = (np.ascontiguousarray(x, dtype=float)
                                                  for x in (domain_ppl, share, compression, rank, mix, reuse))
        mean_steps(ppl, shares, eps, ranks, mixes, reuses, self.params(), out)
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path | None = None) -> Calibration:
        """The calibration in ``path`` (None: the committed one); ``ValueError`` naming the file if it is missing, not
        JSON or not a calibration of this format, or naming the field that is missing or not a finite number (bad
        input to the env's ``calibration`` option, ``--refit``)."""
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
            for key in ("levels", "ladder", "domains", "initial_domain_perplexity", "domain_plateau",
                        "domain_train_blocks", "domain_eval_blocks", "ranks"):
                data[key] = tuple(data[key]) if isinstance(data[key], list) else data[key]
            covered = data.get("covered", {})
            if not isinstance(covered, dict):
                raise ValueError(f"calibration field covered must be a mapping, got {covered!r}")
            bounds: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in covered.items()}
            data["covered"] = Coverage(**bounds)
            return cls(**data)
        except (KeyError, TypeError) as err:
            raise ValueError(f"calibration file {path} lacks or has unknown fields ({err})") from None
        except ValueError as err:
            raise ValueError(f"calibration file {path}: {err}") from None
