"""The calibrated perplexity surrogate (the FedPEAT paper's perplexity–layer-drop retention fit, made dynamic).

One round moves the full model's plug-in perplexity towards the plateau of the participants' emulators:

    ppl_{t+1} = ppl_inf(ε̄) + (ppl_t − ppl_inf(ε̄)) · exp(−rate · s_t^exponent) · exp(noise_std · z),  z ~ N(0, 1)

ε̄ is the data-weighted compression of the participating devices, s_t ∈ (0, 1] their share of all device data,
ppl_inf(ε) the plug-in perplexity reached with emulators of ratio ε (linear interpolation between calibrated
levels). No participant: ppl stays. ``fedpeat calibrate`` fits (ppl_inf, rate, exponent, noise_std) to engine runs
and writes a versioned JSON file; the fit error on held-out engine runs is stored in it. The formula is compiled
with the rest of the env's round in ``fedpeat_env.dynamics`` (``surrogate_step``), which ``Calibration.step`` runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from fedpeat_env.dynamics import surrogate_step

FORMAT_VERSION = 1
DEFAULT_CALIBRATION = Path(__file__).parent / "calibrations" / "embedded-v1.json"


@dataclass(frozen=True)
class Calibration:
    initial_perplexity: float
    """Full-model perplexity before tuning (the engine's round-0 evaluation)."""
    levels: tuple[float, ...]
    """Calibrated compression ratios ε (increasing)."""
    plateau_perplexity: tuple[float, ...]
    """ppl_inf at each calibrated level."""
    rate: float
    exponent: float
    noise_std: float
    """Std of the log-perplexity residual of one-step predictions on the fit runs."""
    fit_error: dict = field(default_factory=dict)
    """Mean absolute percentage errors (one-step and rollout) on fit and held-out engine runs."""
    meta: dict = field(default_factory=dict)
    """How it was made: engine settings, seeds, command, versions."""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if len(self.levels) != len(self.plateau_perplexity) or len(self.levels) < 1:
            raise ValueError("levels and plateau_perplexity must have the same, non-zero length")
        if list(self.levels) != sorted(self.levels):
            raise ValueError(f"levels must be increasing, got {self.levels}")

    @cached_property
    def step_arguments(self) -> tuple:
        """(levels, plateaus, rate, exponent, noise_std) as the compiled round takes them."""
        return (np.array(self.levels, dtype=float), np.array(self.plateau_perplexity, dtype=float), float(self.rate),
                float(self.exponent), float(self.noise_std))

    def step(self, ppl: np.ndarray, compression: np.ndarray, share: np.ndarray, z: np.ndarray) -> np.ndarray:
        """One round for a batch: ``ppl``, ``compression`` (ε̄), ``share`` (s_t) and standard normals ``z``, all (B,);
        returns the next perplexity (B,). The formula is ``fedpeat_env.dynamics``'s, which the env runs."""
        out = np.empty(len(ppl))
        surrogate_step(*(np.ascontiguousarray(x, dtype=float) for x in (ppl, compression, share, z)),
                       *self.step_arguments, out)
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path | None = None) -> Calibration:
        path = Path(path) if path is not None else DEFAULT_CALIBRATION
        if not path.is_file():
            raise FileNotFoundError(f"calibration file {path} not found; create one with `fedpeat calibrate`")
        data = json.loads(path.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"calibration {path} has format_version {data.get('format_version')}, expected {FORMAT_VERSION}")
        data["levels"] = tuple(data["levels"])
        data["plateau_perplexity"] = tuple(data["plateau_perplexity"])
        return cls(**data)


@dataclass(frozen=True)
class Trajectory:
    """One engine run: perplexity before round 1 and after each round, with the round's ε̄ and data share."""

    perplexity: tuple[float, ...]
    """(R + 1,) values."""
    compression: tuple[float, ...]
    """(R,) data-weighted ε of the participants per round."""
    share: tuple[float, ...]
    """(R,) participants' share of device data per round."""


def _transitions(runs: list[Trajectory]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ppl, nxt, eps, share = [], [], [], []
    for run in runs:
        ppl += run.perplexity[:-1]
        nxt += run.perplexity[1:]
        eps += run.compression
        share += run.share
    return np.array(ppl), np.array(nxt), np.array(eps), np.array(share)


def fit_calibration(fit_runs: list[Trajectory], heldout_runs: list[Trajectory], levels: tuple[float, ...],
                    meta: dict | None = None) -> Calibration:
    """Least-squares fit of (log ppl_inf per level, log rate, exponent) on one-step log-perplexity predictions."""
    ppl, nxt, eps, share = _transitions(fit_runs)
    init_ppl = float(np.mean([r.perplexity[0] for r in fit_runs]))
    lowest = float(np.min(nxt))

    def unpack(theta: np.ndarray) -> Calibration:
        plateaus = tuple(float(x) for x in np.exp(theta[: len(levels)]))
        return Calibration(init_ppl, tuple(levels), plateaus, float(np.exp(theta[-2])), float(theta[-1]), 0.0)

    def residual(theta: np.ndarray) -> np.ndarray:
        return np.log(unpack(theta).step(ppl, eps, share, np.zeros_like(ppl))) - np.log(nxt)

    theta0 = np.concatenate([np.full(len(levels), np.log(lowest)), [np.log(0.5), 1.0]])
    lower = np.concatenate([np.full(len(levels), 0.0), [np.log(1e-3), 0.1]])
    upper = np.concatenate([np.full(len(levels), np.log(init_ppl) + 1.0), [np.log(50.0), 3.0]])
    solution = least_squares(residual, theta0, bounds=(lower, upper))
    fitted = unpack(solution.x)
    noise = float(np.std(residual(solution.x)))
    errors = {"fit_one_step_mape": _one_step_mape(fitted, fit_runs), "fit_rollout_mape": _rollout_mape(fitted, fit_runs)}
    if heldout_runs:
        errors |= {"heldout_one_step_mape": _one_step_mape(fitted, heldout_runs),
                   "heldout_rollout_mape": _rollout_mape(fitted, heldout_runs)}
    return Calibration(init_ppl, tuple(levels), fitted.plateau_perplexity, fitted.rate, fitted.exponent, noise,
                       errors, meta or {})


def _one_step_mape(cal: Calibration, runs: list[Trajectory]) -> float:
    ppl, nxt, eps, share = _transitions(runs)
    pred = cal.step(ppl, eps, share, np.zeros_like(ppl))
    return float(np.mean(np.abs(pred - nxt) / nxt))


def _rollout_mape(cal: Calibration, runs: list[Trajectory]) -> float:
    """Mean |error| / truth of open-loop rollouts from each run's first perplexity (no noise)."""
    errors = []
    for run in runs:
        ppl = np.array([run.perplexity[0]])
        for t in range(len(run.share)):
            ppl = cal.step(ppl, np.array([run.compression[t]]), np.array([run.share[t]]), np.zeros(1))
            errors.append(abs(ppl[0] - run.perplexity[t + 1]) / run.perplexity[t + 1])
    return float(np.mean(errors))
