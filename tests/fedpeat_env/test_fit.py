"""The surrogate's formula by hand, and its fit: on data generated from known parameters the fit recovers them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedpeat_env.calibration import RunSpec, Trajectory, trajectory_from_dict, trajectory_to_dict
from fedpeat_env.fit import errors, fit_calibration, round_inputs
from fedpeat_env.surrogate import Calibration

TRUE = dict(initial_perplexity=300.0, levels=(0.0, 0.25, 0.5, 0.75), plateau_perplexity=(150.0, 160.0, 175.0, 200.0),
            rate=1.5, shape=0.6, share_exponent=0.3, rank_exponent=0.1, noise_std=0.0, noise_exponent=0.5, max_rank=8,
            ranks=(2, 4, 8))


def test_formula_by_hand():
    cal = Calibration(**TRUE)
    # above the plateau: P + gap0·((gap/gap0)^(−1/c) + a·s^b·(r/r_max)^ρ)^(−c); ε̄ = 0.375: halfway between 160 and 175
    plateau = (160.0 + 175.0) / 2
    gap0, gap = 300.0 - plateau, 250.0 - plateau
    expected = plateau + gap0 * ((gap / gap0) ** (-1 / 0.6) + 1.5 * 0.5**0.3 * (4 / 8) ** 0.1) ** (-0.6)
    got = cal.mean_step(np.array([250.0]), np.array([0.5]), np.array([0.375]), np.array([4.0]))[0]
    assert got == pytest.approx(expected)
    # below the plateau it drifts up: P + gap·exp(−a·s^b); no data: unchanged
    below = cal.mean_step(np.array([180.0]), np.array([1.0]), np.array([0.75]), np.array([8.0]))[0]
    assert below == pytest.approx(200.0 + (180.0 - 200.0) * math.exp(-1.5))
    assert cal.mean_step(np.array([250.0]), np.array([0.0]), np.array([0.5]), np.array([8.0]))[0] == 250.0


def _synthetic_runs(cal: Calibration, seed: int, noise: float) -> list[Trajectory]:
    """Runs whose perplexity follows ``cal`` (plus log-normal noise): random trainers, ε and ranks per round."""
    rng = np.random.default_rng(seed)
    runs = []
    for k in range(24):
        n, rounds = 10, 12
        share = rng.dirichlet(np.ones(n) * (0.3 if k % 3 == 0 else 5.0))
        levels = cal.levels if k % 2 else (cal.levels[(k // 2) % 4],)
        ranks = (2, 4, 8) if k % 5 == 0 else (8,)
        ppl, eps_rows, rank_rows = [cal.initial_perplexity], [], []
        for _ in range(rounds):
            trained = rng.random(n) < rng.uniform(0.1, 1.0)
            trained[rng.integers(n)] = True
            eps = np.where(trained, rng.choice(levels, n), np.nan)
            rank = np.where(trained, rng.choice(ranks, n), 0)
            s = share[trained].sum()
            mean = cal.mean_step(np.array([ppl[-1]]), np.array([s]), np.array([np.nansum(share * eps) / s]),
                                 np.array([(share[trained] * rank[trained]).sum() / s]))[0]
            ppl.append(mean * math.exp(noise * rng.standard_normal()))
            eps_rows.append(tuple(eps.tolist()))
            rank_rows.append(tuple(int(r) for r in rank))
        spec = RunSpec("mixed", seed, 0.5, tuple(levels), tuple(ranks))
        runs.append(Trajectory(spec, tuple(ppl), tuple(share.tolist()), 0.0, tuple(eps_rows), tuple(rank_rows)))
    return runs


def test_fit_recovers_known_parameters():
    truth = Calibration(**TRUE)
    fitted = fit_calibration(_synthetic_runs(truth, 0, noise=0.0), _synthetic_runs(truth, 1, noise=0.0), truth.levels, 8)
    assert fitted.plateau_perplexity == pytest.approx(truth.plateau_perplexity, rel=1e-3)
    for name in ("rate", "shape", "share_exponent", "rank_exponent"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-2, abs=1e-3), name
    assert fitted.fit_error["heldout"]["rollout"] < 1e-3
    assert not any(p["at_bound"] for name, p in fitted.parameters.items() if not name.startswith("noise"))
    assert fitted.parameters["noise_std"]["at_bound"]  # no noise in the data: σ on its lower bound, flagged
    assert fitted.ranks == (2, 4, 8)


def test_fit_recovers_the_noise_and_reports_errors():
    truth = Calibration(**(TRUE | {"noise_std": 0.01, "noise_exponent": 0.0}))
    fitted = fit_calibration(_synthetic_runs(truth, 0, noise=0.01), _synthetic_runs(truth, 1, noise=0.01), truth.levels, 8)
    assert fitted.noise_std == pytest.approx(0.01, rel=0.2)
    # noise blurs the trade-off of plateau and shape within 12 rounds, not the predictions
    assert fitted.plateau_perplexity == pytest.approx(truth.plateau_perplexity, rel=0.1)
    assert fitted.fit_error["heldout"]["rollout"] < 0.02
    report = fitted.fit_error["heldout"]
    assert 0.002 < report["one_step"] < 0.02 and set(report["by_condition"]) == {"mixed"}


def test_without_rank_runs_the_rank_exponent_is_fixed_and_control_rank_refused():
    truth = Calibration(**(TRUE | {"rank_exponent": 0.0, "ranks": (8,)}))
    runs = [r for r in _synthetic_runs(truth, 0, noise=0.0) if set(r.spec.ranks) == {8}]
    fitted = fit_calibration(runs, [], truth.levels, 8)
    assert fitted.ranks == (8,) and fitted.rank_exponent == pytest.approx(0.0, abs=1e-9)
    assert "fixed" in fitted.parameters["rank_exponent"]
    from fedpeat_env.config import EnvConfig

    with pytest.raises(ValueError, match=r"control_rank=True needs a calibration with engine runs at every rank"):
        fitted.check_controls(EnvConfig(control_rank=True, rank_levels=(2, 4, 8)))
    fitted.check_controls(EnvConfig(control_rank=False, rank_levels=(2, 4, 8)))


def test_bounds_are_flagged():
    truth = Calibration(**(TRUE | {"share_exponent": 0.0}))
    fitted = fit_calibration(_synthetic_runs(truth, 0, noise=0.0), [], truth.levels, 8)
    assert fitted.parameters["share_exponent"]["at_bound"]
    assert not fitted.parameters["rate"]["at_bound"]


def test_round_inputs_and_trajectory_round_trip():
    run = Trajectory(RunSpec("server", 0, 0.5, (0.0, 0.5), (4, 8), server_fraction=0.2), (300.0, 250.0),
                     (0.2, 0.4, 0.2), 0.2, ((0.5, math.nan, 0.0),), ((4, 0, 8),))
    x = round_inputs([run], 8)
    s = 0.2 + 0.2 + 0.2  # server + devices 0 and 2
    assert x.share[0] == pytest.approx(s)
    assert x.compression[0] == pytest.approx(0.2 * 0.5 / s)
    assert x.rank[0] == pytest.approx((0.2 * 8 + 0.2 * 4 + 0.2 * 8) / s)
    again = trajectory_from_dict(trajectory_to_dict(run))
    assert again.spec == run.spec and again.perplexity == run.perplexity and math.isnan(again.compression[0][1])
    assert errors(Calibration(**TRUE), [run])["by_condition"]["server"]["runs"] == 1
