"""Fit the surrogate (``fedpeat_env.surrogate``) to engine runs (``fedpeat_env.calibration``) and report its errors.

The mean dynamics (plateaus, rate, shape, share and rank exponents) are fitted by least squares on the log
perplexity of one-step predictions (each round from the engine's own previous perplexity) and of open-loop rollouts
(each run from its first perplexity, the surrogate feeding itself), so the fit is judged on what the env does: roll
out. The noise (σ, γ) is then the maximum-likelihood fit of the one-step log residuals, N(0, σ² s^(−2γ)). Every
parameter is reported with its bounds and flagged when it ends on one; errors (mean absolute % error of perplexity)
are reported overall and per condition, on the fit runs and on held-out runs that the fit never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.optimize import least_squares, minimize

from fedpeat_env.calibration import (
    CONDITIONS,
    EngineSettings,
    Trajectory,
    calibration_plan,
    run_plan,
    trajectory_from_dict,
    trajectory_to_dict,
)
from fedpeat_env.surrogate import Calibration


@dataclass(frozen=True)
class RoundInputs:
    """The surrogate's inputs of every round of some runs, flattened run-major: (n,) arrays, plus where runs start."""

    ppl: np.ndarray
    """Perplexity before the round."""
    next_ppl: np.ndarray
    """Perplexity after the round (the engine's)."""
    share: np.ndarray
    compression: np.ndarray
    rank: np.ndarray
    run: np.ndarray
    """Index of each round's run."""


def round_inputs(runs: Sequence[Trajectory], max_rank: int) -> RoundInputs:
    """Share, data-weighted ε and rank of each round's trainers (the server's share at ε = 0 and ``max_rank``)."""
    cols: dict[str, list] = {k: [] for k in ("ppl", "next_ppl", "share", "compression", "rank", "run")}
    for k, run in enumerate(runs):
        shares = np.asarray(run.device_share)
        for t, (eps, ranks) in enumerate(zip(run.compression, run.rank)):
            eps, ranks = np.asarray(eps, dtype=float), np.asarray(ranks, dtype=float)
            trained = ~np.isnan(eps)
            data = run.server_share + shares[trained].sum()
            cols["ppl"].append(run.perplexity[t])
            cols["next_ppl"].append(run.perplexity[t + 1])
            cols["share"].append(data)
            cols["compression"].append((shares[trained] * eps[trained]).sum() / data if data > 0 else 0.0)
            cols["rank"].append((run.server_share * max_rank + (shares[trained] * ranks[trained]).sum()) / data
                                if data > 0 else float(max_rank))
            cols["run"].append(k)
    return RoundInputs(**{k: np.array(v, dtype=int if k == "run" else float) for k, v in cols.items()})


def rollout(calibration: Calibration, inputs: RoundInputs) -> np.ndarray:
    """Open-loop noiseless predictions of every round (n,): each run from its first perplexity."""
    pred = np.empty_like(inputs.ppl)
    starts = np.flatnonzero(np.r_[True, inputs.run[1:] != inputs.run[:-1]])
    ends = np.r_[starts[1:], len(inputs.run)]
    current = inputs.ppl[starts].copy()
    for t in range(int((ends - starts).max())):
        alive = starts + t < ends
        idx = starts[alive] + t
        current[alive] = calibration.mean_step(current[alive], inputs.share[idx], inputs.compression[idx], inputs.rank[idx])
        pred[idx] = current[alive]
    return pred


def _mape(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - truth) / truth)) if len(truth) else float("nan")


def errors(calibration: Calibration, runs: Sequence[Trajectory]) -> dict:
    """{"one_step", "rollout", "by_condition": {condition: {"one_step", "rollout", "runs"}}} mean absolute % errors."""
    if not runs:
        return {}
    inputs = round_inputs(runs, calibration.max_rank)
    one_step = calibration.mean_step(inputs.ppl, inputs.share, inputs.compression, inputs.rank)
    rolled = rollout(calibration, inputs)
    conditions = np.array([runs[k].spec.condition for k in inputs.run])
    report = {"one_step": _mape(one_step, inputs.next_ppl), "rollout": _mape(rolled, inputs.next_ppl), "by_condition": {}}
    for condition in CONDITIONS:
        mask = conditions == condition
        if mask.any():
            report["by_condition"][condition] = {"one_step": _mape(one_step[mask], inputs.next_ppl[mask]),
                                                 "rollout": _mape(rolled[mask], inputs.next_ppl[mask]),
                                                 "runs": sum(r.spec.condition == condition for r in runs)}
    return report


# (name, low, high, fitted as its log) of the mean-dynamics parameters after the plateaus (logs)
_MEAN_PARAMETERS = (("rate", 1e-3, 100.0, True), ("shape", 0.05, 20.0, True), ("share_exponent", 0.0, 3.0, False),
                    ("rank_exponent", 0.0, 3.0, False))
_NOISE_PARAMETERS = (("noise_std", 1e-4, 1.0), ("noise_exponent", 0.0, 2.0))


def fit_calibration(fit_runs: Sequence[Trajectory], heldout_runs: Sequence[Trajectory], levels: Sequence[float],
                    max_rank: int, meta: dict | None = None) -> Calibration:
    """Least-squares fit of the surrogate to ``fit_runs`` (see the module docstring); errors on both sets of runs.
    Without runs at another rank than ``max_rank`` the rank exponent is not identifiable: it is fixed at 0."""
    levels = tuple(float(e) for e in levels)
    inputs = round_inputs(fit_runs, max_rank)
    initial = float(np.mean([r.perplexity[0] for r in fit_runs]))
    ranks = tuple(sorted({int(r) for run in fit_runs for row in run.rank for r in row if r} | {max_rank}))
    fit_rank = len(ranks) > 1
    K = len(levels)
    mean_parameters = _MEAN_PARAMETERS if fit_rank else _MEAN_PARAMETERS[:-1]  # else the rank exponent stays 0
    lower = [0.0] * K + [np.log(lo) if log else lo for _, lo, _, log in mean_parameters]
    upper = [np.log(initial)] * K + [np.log(hi) if log else hi for _, _, hi, log in mean_parameters]

    def calibration(theta: np.ndarray, noise: tuple[float, float] = (0.0, 0.0)) -> Calibration:
        rank_exponent = float(theta[K + 3]) if fit_rank else 0.0
        return Calibration(initial, levels, tuple(float(x) for x in np.exp(theta[:K])), float(np.exp(theta[K])),
                           float(np.exp(theta[K + 1])), float(theta[K + 2]), rank_exponent, noise[0], noise[1],
                           max_rank, ranks)

    def residual(theta: np.ndarray) -> np.ndarray:
        cal = calibration(theta)
        one_step = cal.mean_step(inputs.ppl, inputs.share, inputs.compression, inputs.rank)
        return np.concatenate([np.log(one_step / inputs.next_ppl), np.log(rollout(cal, inputs) / inputs.next_ppl)])

    lowest = float(inputs.next_ppl.min())
    theta0 = np.array([np.log(lowest * 0.95)] * K + [np.log(1.0), np.log(1.0), 0.2, 0.1][: len(mean_parameters)])
    theta0 = np.clip(theta0, np.array(lower) + 1e-6, np.array(upper) - 1e-6)
    solution = least_squares(residual, theta0, bounds=(lower, upper))
    mean_fit = calibration(solution.x)

    # noise: maximum likelihood of the one-step log residuals r ~ N(0, σ² s^(−2γ))
    r = np.log(inputs.next_ppl / mean_fit.mean_step(inputs.ppl, inputs.share, inputs.compression, inputs.rank))
    log_s = np.log(inputs.share)

    def nll(x: np.ndarray) -> float:
        log_sd = x[0] - x[1] * log_s
        return float(np.sum(log_sd + 0.5 * r**2 * np.exp(-2 * log_sd)))

    (noise_lo, noise_hi), (gamma_lo, gamma_hi) = ((lo, hi) for _, lo, hi in _NOISE_PARAMETERS)
    noise = minimize(nll, np.array([np.log(max(r.std(), 1e-3)), 0.5]), method="L-BFGS-B",
                     bounds=[(np.log(noise_lo), np.log(noise_hi)), (gamma_lo, gamma_hi)]).x
    fitted = calibration(solution.x, (float(np.exp(noise[0])), float(noise[1])))

    values = {f"plateau[ε={e:g}]": (p, 1.0, initial) for e, p in zip(levels, fitted.plateau_perplexity)}
    values |= {name: (getattr(fitted, name), lo, hi) for name, lo, hi, _ in _MEAN_PARAMETERS}
    values |= {name: (getattr(fitted, name), lo, hi) for name, lo, hi in _NOISE_PARAMETERS}
    parameters = {}
    for name, (value, lo, hi) in values.items():
        fixed = name == "rank_exponent" and not fit_rank
        tolerance = 1e-3 * (np.log(hi / lo) if lo > 0 else hi - lo)  # a thousandth of the range (in logs if > 0)
        distance = min(abs(np.log(value / lo)), abs(np.log(hi / value))) if lo > 0 else min(value - lo, hi - value)
        at_bound = not fixed and distance <= tolerance
        parameters[name] = {"value": float(value), "low": float(lo), "high": float(hi), "at_bound": bool(at_bound),
                            **({"fixed": "no runs at another rank"} if fixed else {})}
    fit_error = {"fit": errors(fitted, fit_runs), "heldout": errors(fitted, heldout_runs)}
    return replace(fitted, parameters=parameters, fit_error=fit_error, meta=meta or {})


def calibrate(settings: EngineSettings = EngineSettings(), levels: Sequence[float] = (0.0, 0.25, 0.5, 0.75),
              ranks: Sequence[int] = (2, 4, 8), workers: int = 2, fit_seed: int = 0, heldout_seed: int = 1,
              on_run: Callable[[Trajectory], None] | None = None, executor=None) -> Calibration:
    """Run the calibration plan on the engine (``calibration_plan``, ``workers`` processes, or one after another
    with their clients on ``executor``) and fit the surrogate; ``on_run`` after each engine run. The runs are stored
    in the calibration's ``meta``."""
    if max(ranks) != settings.max_rank:
        raise ValueError(f"ranks must end at the engine's global rank {settings.max_rank}, got {tuple(ranks)}")
    fit_plan, heldout_plan = calibration_plan(levels, ranks, fit_seed, heldout_seed)
    runs = run_plan(fit_plan + heldout_plan, settings, workers, on_run, executor)
    return fit_runs(runs[: len(fit_plan)], runs[len(fit_plan) :], levels, settings)


def fit_runs(fit: Sequence[Trajectory], heldout: Sequence[Trajectory], levels: Sequence[float],
             settings: EngineSettings) -> Calibration:
    """``fit_calibration`` with the provenance a calibration file records (settings, every run, versions)."""
    import platform

    import torch

    meta = {"engine": asdict(settings), "levels": list(levels), "torch": torch.__version__,
            "python": platform.python_version(), "engine_wall_time_s": round(sum(r.wall_time_s for r in (*fit, *heldout)), 1),
            "fit_runs": [trajectory_to_dict(r) for r in fit], "heldout_runs": [trajectory_to_dict(r) for r in heldout]}
    return fit_calibration(fit, heldout, levels, settings.max_rank, meta)


def stored_runs(calibration: Calibration) -> tuple[list[Trajectory], list[Trajectory], EngineSettings]:
    """The (fit, held-out) runs and engine settings a calibration file was fitted on (to refit without the engine)."""
    meta = calibration.meta
    if "fit_runs" not in meta or "engine" not in meta:
        raise ValueError("this calibration stores no engine runs to refit from")
    return ([trajectory_from_dict(r) for r in meta["fit_runs"]], [trajectory_from_dict(r) for r in meta["heldout_runs"]],
            EngineSettings(**meta["engine"]))
