"""Fit the surrogate (``fedpeat_env.surrogate``) to engine runs (``fedpeat_env.calibration``) and report its errors.

The mean dynamics (domain plateaus, emulator ladder, coverage and data-reuse terms, rate, shape, share and rank
exponents) are fitted by robust least squares (soft-L1, ``ROBUST_SCALE``) on the log perplexity of every domain a run
holds, for one-step predictions
(each round from the engine's own previous perplexities) and for open-loop rollouts (each run from its first
perplexities, the surrogate feeding itself for all its rounds), so the fit is judged on what the env does: roll out.
The noise (σ, γ) is then the maximum-likelihood fit of the one-step log residuals of the full model's perplexity,
N(0, σ² s^(−2γ)). Every parameter is reported with its bounds and flagged when it ends on one; errors (mean absolute
% error of the full model's perplexity) are reported overall and per condition, on the fit runs and on held-out runs
that the fit never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

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
from fedpeat_env.surrogate import DOMAINS, Calibration, Coverage, run_reuse

_Number = TypeVar("_Number", int, float)


@dataclass(frozen=True)
class RoundInputs:
    """The surrogate's inputs of every round of some runs, flattened run-major: (n,) or (n, D) arrays."""

    domain_ppl: np.ndarray
    """(n, D) per-domain perplexity before the round (NaN: a domain the run does not hold)."""
    next_domain_ppl: np.ndarray
    """(n, D) after the round (the engine's)."""
    next_ppl: np.ndarray
    """(n,) the full model's perplexity after the round (the engine's)."""
    eval_weight: np.ndarray
    """(n, D) the domains' shares of the run's held-out tokens."""
    share: np.ndarray
    compression: np.ndarray
    rank: np.ndarray
    mix: np.ndarray
    """(n, D) the trainers' domain mix."""
    reuse: np.ndarray
    """(n,) the trainers' data-weighted epochs so far (``surrogate.trainer_epochs``)."""
    run: np.ndarray
    """Index of each round's run."""


def reuse_inputs(runs: Sequence[Trajectory], local_sequences: int) -> np.ndarray:
    """ē of every round of ``runs`` (run-major, as ``RoundInputs``)."""
    out = []
    for run in runs:
        trained = ~np.isnan(np.asarray(run.compression, dtype=float))
        reuse = np.empty(len(trained))
        run_reuse(np.asarray(run.device_share, dtype=float), trained, float(run.server_share), float(local_sequences),
                  float(run.blocks), reuse)
        out.append(reuse)
    return np.concatenate(out) if out else np.zeros(0)


def round_inputs(runs: Sequence[Trajectory], max_rank: int, local_sequences: int,
                 eval_blocks: dict[str, int]) -> RoundInputs:
    """Share, data-weighted ε, rank and domain mix of each round's trainers (the server's share at ε = 0, ``max_rank``
    and the run's domain weights), and their data reuse; ``eval_blocks`` gives each domain's held-out blocks."""
    cols: dict[str, list] = {k: [] for k in RoundInputs.__dataclass_fields__ if k != "reuse"}
    for k, run in enumerate(runs):
        shares, mix = np.asarray(run.device_share), np.asarray(run.device_mix)
        server_mix = mix.T @ shares / shares.sum() if run.server_share > 0 else np.zeros(len(DOMAINS))
        weight = np.array([eval_blocks.get(d, 0) if d in run.spec.domains else 0 for d in DOMAINS], dtype=float)
        for t, (round_eps, round_ranks) in enumerate(zip(run.compression, run.rank)):
            eps, ranks = np.asarray(round_eps, dtype=float), np.asarray(round_ranks, dtype=float)
            trained = ~np.isnan(eps)
            data = run.server_share + shares[trained].sum()
            cols["domain_ppl"].append(run.domain_perplexity[t])
            cols["next_domain_ppl"].append(run.domain_perplexity[t + 1])
            cols["next_ppl"].append(run.perplexity[t + 1])
            cols["eval_weight"].append(weight / weight.sum())
            cols["share"].append(data)
            cols["compression"].append((shares[trained] * eps[trained]).sum() / data if data > 0 else 0.0)
            cols["rank"].append((run.server_share * max_rank + (shares[trained] * ranks[trained]).sum()) / data
                                if data > 0 else float(max_rank))
            held = run.server_share * server_mix + shares[trained] @ mix[trained]
            cols["mix"].append(held / data if data > 0 else np.zeros(len(DOMAINS)))
            cols["run"].append(k)
    arrays = {k: np.array(v, dtype=int if k == "run" else float) for k, v in cols.items()}
    return RoundInputs(**arrays, reuse=reuse_inputs(runs, local_sequences))


def _step(calibration: Calibration, inputs: RoundInputs, domain_ppl: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The noiseless next per-domain perplexities of rounds ``idx`` from ``domain_ppl`` (len(idx), D)."""
    return calibration.mean_step(np.nan_to_num(domain_ppl, nan=1.0), inputs.share[idx], inputs.compression[idx],
                                 inputs.rank[idx], inputs.mix[idx], inputs.reuse[idx])


def one_step(calibration: Calibration, inputs: RoundInputs) -> np.ndarray:
    """One-step noiseless predictions (n, D): each round from the engine's own previous perplexities."""
    return _step(calibration, inputs, inputs.domain_ppl, np.arange(len(inputs.run)))


def rollout(calibration: Calibration, inputs: RoundInputs) -> np.ndarray:
    """Open-loop noiseless predictions (n, D): each run from its first perplexities, the surrogate feeding itself."""
    pred = np.empty_like(inputs.domain_ppl)
    starts = np.flatnonzero(np.r_[True, inputs.run[1:] != inputs.run[:-1]])
    ends = np.r_[starts[1:], len(inputs.run)]
    current = inputs.domain_ppl[starts].copy()
    for t in range(int((ends - starts).max())):
        alive = starts + t < ends
        idx = starts[alive] + t
        current[alive] = _step(calibration, inputs, current[alive], idx)
        pred[idx] = current[alive]
    return pred


def union(domain_ppl: np.ndarray, eval_weight: np.ndarray) -> np.ndarray:
    """The full model's perplexity exp(Σ_d w_d log ppl_d) of per-domain rows (n, D) (NaN domains have weight 0)."""
    return np.exp(np.nansum(eval_weight * np.log(np.where(eval_weight > 0, domain_ppl, 1.0)), axis=1))


def _mape(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - truth) / truth)) if len(truth) else float("nan")


def errors(calibration: Calibration, runs: Sequence[Trajectory], local_sequences: int) -> dict:
    """{"one_step", "rollout", "rollout_max_round", "by_condition": {condition: {"one_step", "rollout", "runs"}},
    "by_domain": {domain: {"one_step", "rollout"}}}: mean absolute % errors of perplexity (the full model's, and each
    domain's); "rollout_max_round" is the largest rollout error of any run at any round."""
    if not runs:
        return {}
    inputs = round_inputs(runs, calibration.max_rank, local_sequences, _eval_blocks(calibration))
    step_d, roll_d = one_step(calibration, inputs), rollout(calibration, inputs)
    step, roll = union(step_d, inputs.eval_weight), union(roll_d, inputs.eval_weight)
    conditions = np.array([runs[k].spec.condition for k in inputs.run])
    report: dict[str, Any] = {"one_step": _mape(step, inputs.next_ppl), "rollout": _mape(roll, inputs.next_ppl),
                              "rollout_max_round": float(np.max(np.abs(roll - inputs.next_ppl) / inputs.next_ppl)),
                              "by_condition": {}, "by_domain": {}}
    for condition in CONDITIONS:
        mask = conditions == condition
        if mask.any():
            report["by_condition"][condition] = {"one_step": _mape(step[mask], inputs.next_ppl[mask]),
                                                 "rollout": _mape(roll[mask], inputs.next_ppl[mask]),
                                                 "runs": sum(r.spec.condition == condition for r in runs)}
    for d, name in enumerate(DOMAINS):
        held = ~np.isnan(inputs.next_domain_ppl[:, d])
        if held.any():
            truth = inputs.next_domain_ppl[held, d]
            report["by_domain"][name] = {"one_step": _mape(step_d[held, d], truth), "rollout": _mape(roll_d[held, d], truth)}
    return report


def _eval_blocks(calibration: Calibration) -> dict[str, int]:
    return dict(zip(calibration.domains, calibration.domain_eval_blocks))


# (name, low, high, fitted as its log) of the mean-dynamics parameters after the domain plateaus and the ladder (logs)
_MEAN_PARAMETERS = (("coverage", 0.0, 3.0, False), ("coverage_exponent", 0.1, 10.0, True), ("transfer", 0.0, 1.0, False),
                    ("reuse", 0.0, 5.0, False), ("reuse_onset", 0.0, 100.0, False), ("reuse_scale", 1.0, 1000.0, True),
                    ("rate", 1e-3, 100.0, True), ("shape", 0.05, 20.0, True), ("share_exponent", 0.0, 3.0, False),
                    ("rank_exponent", 0.0, 3.0, False))
ROBUST_SCALE = 0.05
"""Residuals (log-perplexity) beyond about this size weigh linearly, not quadratically (soft-L1): the few runs on one
or a few blocks, whose perplexity over-fits to 1,000 and more and jumps by tens of percent between rounds, must not
decide the fit of every other run."""
_NOISE_PARAMETERS = (("noise_std", 1e-4, 1.0), ("noise_exponent", 0.0, 2.0))
_START = {"coverage": 0.3, "coverage_exponent": 2.0, "transfer": 0.5, "reuse": 1.0, "reuse_onset": 10.0,
          "reuse_scale": 100.0,
          "rate": 1.0, "shape": 1.0, "share_exponent": 0.2, "rank_exponent": 0.1}


@dataclass(frozen=True)
class DataFacts:
    """What the engine runs measured of the data: per domain (``Calibration.domains`` order) the training and held-out
    blocks and the zero-shot perplexity; sequences per trainer and round."""

    domains: tuple[str, ...]
    train_blocks: tuple[int, ...]
    eval_blocks: tuple[int, ...]
    initial_perplexity: tuple[float, ...]
    local_sequences: int


def fit_calibration(fit_runs: Sequence[Trajectory], heldout_runs: Sequence[Trajectory], levels: Sequence[float],
                    max_rank: int, data: DataFacts, meta: dict | None = None) -> Calibration:
    """Least-squares fit of the surrogate to ``fit_runs`` (see the module docstring); errors on both sets of runs.
    Without runs at another rank than ``max_rank`` the rank exponent is not identifiable: it is fixed at 0."""
    levels = tuple(float(e) for e in levels)
    K, Dn = len(levels), len(data.domains)
    eval_blocks = dict(zip(data.domains, data.eval_blocks))
    inputs = round_inputs(fit_runs, max_rank, data.local_sequences, eval_blocks)
    ranks = tuple(sorted({int(r) for run in fit_runs for row in run.rank for r in row if r} | {max_rank}))
    fit_rank = len(ranks) > 1
    names = [p for p in _MEAN_PARAMETERS if fit_rank or p[0] != "rank_exponent"]
    columns = [DOMAINS.index(d) for d in data.domains]
    lowest = np.nanmin(inputs.next_domain_ppl[:, columns], axis=0)
    lower = [0.0] * Dn + [0.0] * (K - 1) + [np.log(lo) if log else lo for _, lo, _, log in names]
    upper = [np.log(p) for p in data.initial_perplexity] + [np.log(3.0)] * (K - 1) + [
        np.log(hi) if log else hi for _, _, hi, log in names]
    start = [np.log(0.95 * x) for x in lowest] + [np.log(1.0 + 0.1 * k) for k in range(1, K)] + [
        np.log(_START[n]) if log else _START[n] for n, _, _, log in names]

    def calibration(theta: np.ndarray, noise: tuple[float, float] = (0.0, 0.0)) -> Calibration:
        values = dict(zip((n for n, *_ in names), theta[Dn + K - 1:]))
        values = {n: float(np.exp(values[n]) if log else values[n]) for n, _, _, log in names}
        values.setdefault("rank_exponent", 0.0)
        return Calibration(levels, (1.0, *(float(x) for x in np.exp(theta[Dn:Dn + K - 1]))), data.domains,
                           data.initial_perplexity, tuple(float(x) for x in np.exp(theta[:Dn])), data.train_blocks,
                           data.eval_blocks, noise_std=noise[0], noise_exponent=noise[1], max_rank=max_rank,
                           local_sequences=data.local_sequences, ranks=ranks, **values)

    held = ~np.isnan(inputs.next_domain_ppl)

    def residual(theta: np.ndarray) -> np.ndarray:
        cal = calibration(theta)
        return np.concatenate([np.log(one_step(cal, inputs)[held] / inputs.next_domain_ppl[held]),
                               np.log(rollout(cal, inputs)[held] / inputs.next_domain_ppl[held])])

    start = np.clip(start, np.array(lower) + 1e-6, np.array(upper) - 1e-6)
    solution = least_squares(residual, start, bounds=(lower, upper), loss="soft_l1", f_scale=ROBUST_SCALE)
    mean_fit = calibration(solution.x)

    # noise: maximum likelihood of the one-step log residuals of the full model's perplexity, r ~ N(0, σ² s^(−2γ))
    trained = inputs.share > 0
    r = np.log(inputs.next_ppl / union(one_step(mean_fit, inputs), inputs.eval_weight))[trained]
    log_s = np.log(inputs.share[trained])

    def nll(x: np.ndarray) -> float:
        log_sd = x[0] - x[1] * log_s
        return float(np.sum(log_sd + 0.5 * r**2 * np.exp(-2 * log_sd)))

    (noise_lo, noise_hi), (gamma_lo, gamma_hi) = ((lo, hi) for _, lo, hi in _NOISE_PARAMETERS)
    noise = minimize(nll, np.array([np.log(max(r.std(), 1e-3)), 0.5]), method="L-BFGS-B",
                     bounds=[(np.log(noise_lo), np.log(noise_hi)), (gamma_lo, gamma_hi)]).x
    fitted = calibration(solution.x, (float(np.exp(noise[0])), float(noise[1])))

    values = {f"plateau[{d}]": (p, 1.0, p0) for d, p, p0 in zip(data.domains, fitted.domain_plateau,
                                                                 data.initial_perplexity)}
    values |= {f"ladder[ε={e:g}]": (x, 1.0, 3.0) for e, x in zip(levels[1:], fitted.ladder[1:])}
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
    all_runs = (*fit_runs, *heldout_runs)
    fit_error = {"fit": errors(fitted, fit_runs, data.local_sequences),
                 "heldout": errors(fitted, heldout_runs, data.local_sequences)}
    return replace(fitted, parameters=parameters, fit_error=fit_error, meta=meta or {},
                   best_perplexity=best_perplexities(all_runs, levels[0], max_rank), covered=coverage(all_runs))


def best_perplexities(runs: Sequence[Trajectory], first_level: float, max_rank: int) -> dict[str, float]:
    """{"+".join(domains): the lowest perplexity any run of the calibration plan on those domains reached with every
    trainer at ``first_level`` and ``max_rank``}: the default target's reference (``Calibration.target_perplexity``).
    A policy's episodes added to the fit (condition "policy") do not move it, so adding them leaves the env's target
    and reward as they were."""
    best: dict[str, float] = {}
    for run in runs:
        if run.spec.condition != "policy" and set(run.spec.compression) == {first_level} and set(run.spec.ranks) == {max_rank}:
            key = "+".join(run.spec.domains)
            best[key] = min(best.get(key, np.inf), float(np.min(run.perplexity[1:])))
    return best


def coverage(runs: Sequence[Trajectory]) -> Coverage:
    """The ranges of N, rounds, server share and α the runs covered (α of the Dirichlet and content-skewed runs)."""
    def span(values: list[_Number], default: tuple[_Number, _Number]) -> tuple[_Number, _Number]:
        return (min(values), max(values)) if values else default

    specs = [r.spec for r in runs]
    return Coverage(num_devices=span([s.num_devices for s in specs], (0, 0)),
                    rounds=min(len(r.perplexity) - 1 for r in runs),
                    server_fraction=span([s.server_fraction for s in specs], (0.0, 0.0)),
                    dirichlet_alpha=span([s.alpha for s in specs if s.partition == "dirichlet"], (1.0, 1.0)),
                    domain_alpha=span([s.alpha for s in specs if s.partition == "domains"], (0.5, 0.5)),
                    partitions=tuple(p for p in ("iid", "dirichlet", "domains") if p in {s.partition for s in specs}))


def calibrate(settings: EngineSettings = EngineSettings(), levels: Sequence[float] = (0.0, 0.25, 0.5, 0.75),
              ranks: Sequence[int] = (2, 4, 8), workers: int = 2, fit_seed: int = 0, heldout_seed: int = 1,
              on_run: Callable[[Trajectory], None] | None = None, executor=None,
              extra_runs: Sequence[Trajectory] = ()) -> Calibration:
    """Run the calibration plan on the engine (``calibration_plan``, ``workers`` processes, or one after another
    with their clients on ``executor``) and fit the surrogate, with ``extra_runs`` (e.g. a policy's engine episodes
    from ``fedpeat sim2real``) added to the fit runs; ``on_run`` after each engine run. The runs are stored in the
    calibration's ``meta``."""
    if max(ranks) != settings.max_rank:
        raise ValueError(f"ranks must end at the engine's global rank {settings.max_rank}, got {tuple(ranks)}")
    fit_plan, heldout_plan = calibration_plan(levels, ranks, fit_seed, heldout_seed)
    runs = run_plan(fit_plan + heldout_plan, settings, workers, on_run, executor)
    return fit_runs([*runs[: len(fit_plan)], *extra_runs], runs[len(fit_plan):], levels, settings)


def data_facts(settings: EngineSettings, domains: Sequence[str] = DOMAINS) -> DataFacts:
    """The data's block counts (tokenizer only) and zero-shot perplexities (the full model, no training) per domain."""
    from federation.data import _cached_blocks
    from federation.engine import RoundRunner
    from federation.foundation import load_tokenizer
    from fedpeat_env.calibration import EVAL_BLOCKS_PER_DOMAIN, domain_perplexities, fedpeat_engine

    engine = fedpeat_engine(len(domains), 0, settings.local_steps, settings.max_rank, domains=tuple(domains),
                            foundation=settings.foundation)
    tokenizer = load_tokenizer(settings.foundation)
    train = tuple(len(_cached_blocks(tokenizer, d, "train", engine.block_size)) for d in domains)
    held_out = tuple(min(len(_cached_blocks(tokenizer, d, "valid", engine.block_size)), EVAL_BLOCKS_PER_DOMAIN)
                     for d in domains)
    runner = RoundRunner(engine)
    zero_shot = domain_perplexities(runner)[[DOMAINS.index(d) for d in domains]]
    runner.close()
    return DataFacts(tuple(domains), train, held_out, tuple(float(x) for x in zero_shot), settings.local_sequences)


def fit_runs(fit: Sequence[Trajectory], heldout: Sequence[Trajectory], levels: Sequence[float],
             settings: EngineSettings, data: DataFacts | None = None) -> Calibration:
    """``fit_calibration`` with the provenance a calibration file records (settings, the data, every run,
    versions)."""
    import platform

    import torch

    data = data or data_facts(settings)
    meta = {"engine": asdict(settings), "levels": list(levels), "data": asdict(data), "torch": torch.__version__,
            "python": platform.python_version(), "engine_wall_time_s": round(sum(r.wall_time_s for r in (*fit, *heldout)), 1),
            "fit_runs": [trajectory_to_dict(r) for r in fit], "heldout_runs": [trajectory_to_dict(r) for r in heldout]}
    return fit_calibration(fit, heldout, levels, settings.max_rank, data, meta)


def run_summaries(calibration: Calibration) -> list[dict]:
    """One row per engine run a calibration stores: {"set" (fit / held-out), "condition", "run" (its label), "rounds",
    "engine" (the full model's last perplexity), "surrogate" (the open-loop rollout's), "error" (relative), and the
    engine's last perplexity on each domain the run holds}."""
    fit, heldout, settings, data = stored_runs(calibration)
    rows = []
    for label, runs in (("fit", fit), ("held-out", heldout)):
        if not runs:
            continue
        inputs = round_inputs(runs, calibration.max_rank, data.local_sequences, _eval_blocks(calibration))
        rolled = union(rollout(calibration, inputs), inputs.eval_weight)
        for k, run in enumerate(runs):
            last = np.flatnonzero(inputs.run == k)[-1]
            row = {"set": label, "condition": run.spec.condition, "run": run.spec.label, "rounds": len(run.perplexity) - 1,
                   "engine": run.perplexity[-1], "surrogate": float(rolled[last]),
                   "error": float(rolled[last] / run.perplexity[-1] - 1)}
            rows.append(row | {d: p for d, p in zip(DOMAINS, run.domain_perplexity[-1]) if not np.isnan(p)})
    return rows


def stored_runs(calibration: Calibration) -> tuple[list[Trajectory], list[Trajectory], EngineSettings, DataFacts]:
    """The (fit, held-out) runs, engine settings and data facts a calibration file was fitted on (to refit without the
    engine)."""
    meta = calibration.meta
    if "fit_runs" not in meta or "engine" not in meta or "data" not in meta:
        raise ValueError("this calibration stores no engine runs to refit from")
    data: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["data"].items()}
    return ([trajectory_from_dict(r) for r in meta["fit_runs"]], [trajectory_from_dict(r) for r in meta["heldout_runs"]],
            EngineSettings(**meta["engine"]), DataFacts(**data))
