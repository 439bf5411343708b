"""The surrogate's formula and its data-reuse term by hand, and its fit: on data generated from known parameters the
fit recovers them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedpeat_env.calibration import RunSpec, Trajectory, trajectory_from_dict, trajectory_to_dict
from fedpeat_env.fit import DataFacts, errors, fit_calibration, round_inputs
from fedpeat_env.surrogate import DOMAINS, Calibration, run_reuse, trainer_epochs
from tests.helpers import hand_calibration

TRUE = dict(initial_domain_perplexity=(300.0, 400.0, 220.0), domain_plateau=(150.0, 170.0, 130.0),
            ladder=(1.0, 1.05, 1.15, 1.35), coverage=0.4, coverage_exponent=2.0, transfer=0.6, reuse=1.5,
            reuse_onset=2.0, reuse_scale=40.0, rate=1.5, shape=0.8, share_exponent=0.2, rank_exponent=0.3,
            noise_std=0.0, noise_exponent=0.3)
DATA = DataFacts(DOMAINS, (778, 447, 359), (41, 19, 16), TRUE["initial_domain_perplexity"], 80)


def test_formula_by_hand():
    cal = hand_calibration(**TRUE)
    # domain 1 (licences) at ε̄ = 0.375 (halfway between λ = 1.05 and 1.15), the trainers' data 20% licences, 6
    # epochs of reuse: P = π·λ·exp(κ(1 − m)^β + G·(1 − exp(−(ē − e₀)/E))); the round advances it by
    # Δτ = a·s^b·(r/r_max)^ρ·(m + η(1 − m)) effective rounds
    plateau = 170.0 * 1.10 * math.exp(0.4 * 0.8**2.0 + 1.5 * (1 - math.exp(-(6.0 - 2.0) / 40.0)))
    assert plateau < 330.0
    gap0, gap = 400.0 - plateau, 330.0 - plateau
    progress = 1.5 * 0.5**0.2 * (4 / 8) ** 0.3 * (0.2 + 0.6 * 0.8)
    expected = plateau + gap0 * ((gap / gap0) ** (-1 / 0.8) + progress) ** (-0.8)
    mix = np.array([[0.5, 0.2, 0.3]])
    got = cal.mean_step(np.array([[250.0, 330.0, 200.0]]), np.array([0.5]), np.array([0.375]), np.array([4.0]), mix,
                        np.array([6.0]))
    assert got[0, 1] == pytest.approx(expected)
    # below its plateau a domain drifts up: P + gap·exp(−Δτ): pydocs, all data its own, no reuse beyond e₀
    plateau = 150.0 * 1.35
    below = cal.mean_step(np.array([[180.0, 300.0, 200.0]]), np.array([1.0]), np.array([0.75]), np.array([8.0]),
                          np.array([[1.0, 0.0, 0.0]]), np.array([1.0]))
    assert below[0, 0] == pytest.approx(plateau + (180.0 - plateau) * math.exp(-1.5))
    # over-fitting saturates: a thousand epochs raise the plateau by G at most
    memorised = cal.mean_step(np.array([[180.0, 300.0, 200.0]]), np.array([1.0]), np.array([0.0]), np.array([8.0]),
                              np.array([[1.0, 0.0, 0.0]]), np.array([1e3]))
    assert memorised[0, 0] == pytest.approx(150.0 * math.exp(1.5) + (180.0 - 150.0 * math.exp(1.5)) * math.exp(-1.5))
    # no trainer: nothing moves
    idle = cal.mean_step(np.array([[250.0, 330.0, 200.0]]), np.array([0.0]), np.array([0.5]), np.array([8.0]), mix,
                         np.array([0.0]))
    np.testing.assert_array_equal(idle, [[250.0, 330.0, 200.0]])


def test_data_reuse_by_hand():
    shares, exposure = np.array([0.1, 0.3, 0.6]), np.zeros(3)
    # round 1: devices 0 and 2 hold 0.7 of 1000 blocks; 80 sequences each, FedAvg-weighted: 80 / 700 epochs
    server, reuse = trainer_epochs(shares, np.array([True, False, True]), exposure, 0.0, 0.0, 80.0, 1000.0)
    e1 = 80 / 700
    np.testing.assert_allclose(exposure, [e1, 0.0, e1])
    assert (server, reuse) == (0.0, pytest.approx(e1))
    # round 2: device 0 alone (100 blocks): 0.8 epochs; ē is its exposure
    _, reuse = trainer_epochs(shares, np.array([True, False, False]), exposure, 0.0, 0.0, 80.0, 1000.0)
    assert reuse == pytest.approx(e1 + 0.8) and exposure[0] == pytest.approx(e1 + 0.8)
    # round 3: devices 0 and 1 (400 blocks): 0.2 epochs each; ē weighs their exposures by data
    _, reuse = trainer_epochs(shares, np.array([True, True, False]), exposure, 0.0, 0.0, 80.0, 1000.0)
    assert reuse == pytest.approx((0.1 * (e1 + 1.0) + 0.3 * 0.2) / 0.4)
    # a collaborating server (share 0.2) trains every round: 80 / ((0.2 + 0.3) · 1000) epochs on its data too
    exposure = np.zeros(3)
    server, reuse = trainer_epochs(shares, np.array([False, True, False]), exposure, 0.2, 0.0, 80.0, 1000.0)
    assert server == pytest.approx(0.16) and reuse == pytest.approx(0.16) and exposure[1] == pytest.approx(0.16)
    # fewer than one block of data: one block (the engine gives every device a block)
    assert trainer_epochs(np.array([1e-6]), np.array([True]), np.zeros(1), 0.0, 0.0, 80.0, 1000.0)[1] == 80.0
    # run_reuse: the same, round after round
    out = np.empty(2)
    run_reuse(shares, np.array([[True, False, True], [True, False, False]]), 0.0, 80.0, 1000.0, out)
    np.testing.assert_allclose(out, [e1, e1 + 0.8])


def _synthetic_runs(cal: Calibration, seed: int, noise: float, runs: int = 18, rounds: int = 12) -> list[Trajectory]:
    """Runs whose per-domain perplexities follow ``cal`` (plus log-normal noise common to the domains): content-skewed
    devices (some held for the whole run, some random each round), random ε and ranks."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(runs):
        n = 10
        per_domain = rng.dirichlet(np.ones(n) * (0.3 if k % 3 == 0 else 2.0), size=3).T * np.array([778, 447, 359])
        blocks = per_domain.sum(axis=1)
        share, mix = blocks / blocks.sum(), per_domain / blocks[:, None]
        levels = cal.levels if k % 2 else (cal.levels[(k // 2) % 4],)
        ranks = (2, 4, 8) if k % 5 == 0 else (8,)
        held = np.argsort(share)[: 1 + k % 3] if k % 4 == 0 else None
        domain_ppl = [np.array(cal.initial_domain_perplexity)]
        eps_rows, rank_rows, exposure = [], [], np.zeros(n)
        for _ in range(rounds):
            trained = np.zeros(n, dtype=bool)
            if held is not None:
                trained[held] = True
            else:
                trained = rng.random(n) < rng.uniform(0.1, 1.0)
                trained[rng.integers(n)] = True
            eps = np.where(trained, rng.choice(levels, n), np.nan)
            rank = np.where(trained, rng.choice(ranks, n), 0)
            s = share[trained].sum()
            _, reuse = trainer_epochs(share, trained, exposure, 0.0, 0.0, 80.0, 1584.0)
            mean = cal.mean_step(domain_ppl[-1][None, :], np.array([s]), np.array([np.nansum(share * eps) / s]),
                                 np.array([(share[trained] * rank[trained]).sum() / s]),
                                 (share[trained] @ mix[trained] / s)[None, :], np.array([reuse]))[0]
            domain_ppl.append(mean * math.exp(noise * rng.standard_normal()))
            eps_rows.append(tuple(eps.tolist()))
            rank_rows.append(tuple(int(r) for r in rank))
        weight = np.array(DATA.eval_blocks) / sum(DATA.eval_blocks)
        ppl = tuple(float(np.exp(weight @ np.log(p))) for p in domain_ppl)
        spec = RunSpec("held" if held is not None else "domains", seed, tuple(levels), fraction=0.5, ranks=tuple(ranks),
                       partition="domains", alpha=0.5)
        out.append(Trajectory(spec, ppl, tuple(tuple(p.tolist()) for p in domain_ppl), tuple(share.tolist()),
                              tuple(map(tuple, mix.tolist())), 0.0, 1584, tuple(eps_rows), tuple(rank_rows)))
    return out


@pytest.fixture(scope="module")
def noiseless_fit():
    truth = hand_calibration(**TRUE)
    return truth, fit_calibration(_synthetic_runs(truth, 0, 0.0), _synthetic_runs(truth, 1, 0.0), truth.levels, 8, DATA)


def test_fit_recovers_known_parameters(noiseless_fit):
    truth, fitted = noiseless_fit
    assert fitted.domain_plateau == pytest.approx(truth.domain_plateau, rel=1e-2)
    assert fitted.ladder == pytest.approx(truth.ladder, rel=1e-2)
    for name in ("rate", "shape", "share_exponent", "rank_exponent", "coverage", "transfer"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=5e-2, abs=1e-2), name
    assert fitted.fit_error["heldout"]["rollout"] < 2e-3
    assert fitted.fit_error["heldout"]["rollout_max_round"] < 2e-2
    assert set(fitted.fit_error["heldout"]["by_condition"]) == {"held", "domains"}
    assert fitted.parameters["noise_std"]["at_bound"]  # no noise in the data: σ on its lower bound, flagged
    assert fitted.ranks == (2, 4, 8)


def test_fit_recovers_the_noise_and_reports_errors():
    truth = hand_calibration(**(TRUE | {"noise_std": 0.01, "noise_exponent": 0.0}))
    fitted = fit_calibration(_synthetic_runs(truth, 0, 0.01), _synthetic_runs(truth, 1, 0.01), truth.levels, 8, DATA)
    assert fitted.noise_std == pytest.approx(0.01, rel=0.25)
    assert fitted.fit_error["heldout"]["rollout"] < 0.03
    report = fitted.fit_error["heldout"]
    assert 0.002 < report["one_step"] < 0.02 and set(report["by_domain"]) == set(DOMAINS)


def test_without_rank_runs_the_rank_exponent_is_fixed_and_control_rank_refused():
    truth = hand_calibration(**(TRUE | {"rank_exponent": 0.0, "ranks": (8,)}))
    runs = [r for r in _synthetic_runs(truth, 0, 0.0, runs=8, rounds=6) if set(r.spec.ranks) == {8}]
    fitted = fit_calibration(runs, [], truth.levels, 8, DATA)
    assert fitted.ranks == (8,) and fitted.rank_exponent == pytest.approx(0.0, abs=1e-9)
    assert "fixed" in fitted.parameters["rank_exponent"]
    from fedpeat_env.config import EnvConfig

    with pytest.raises(ValueError, match=r"control_rank=True needs a calibration with engine runs at every rank"):
        fitted.check_controls(EnvConfig(control_rank=True, rank_levels=(2, 4, 8)))
    fitted.check_controls(EnvConfig(control_rank=False, rank_levels=(2, 4, 8)))


def test_default_target_and_coverage_come_from_the_runs(noiseless_fit):
    truth, fitted = noiseless_fit
    runs = _synthetic_runs(truth, 0, 0.0) + _synthetic_runs(truth, 1, 0.0)
    at_zero = [min(r.perplexity[1:]) for r in runs if set(r.spec.compression) == {0.0} and set(r.spec.ranks) == {8}]
    assert fitted.best_perplexity == {"+".join(DOMAINS): pytest.approx(min(at_zero))}
    assert fitted.target_perplexity(DOMAINS) == pytest.approx(1.05 * min(at_zero))
    assert fitted.covered.num_devices == (10, 10) and fitted.covered.rounds == 12
    with pytest.raises(ValueError, match="no engine run on pydocs; give target_perplexity"):
        fitted.target_perplexity(("pydocs",))


def test_round_inputs_and_trajectory_round_trip():
    run = Trajectory(RunSpec("server", 0, (0.0, 0.5), fraction=0.5, ranks=(4, 8), server_fraction=0.2),
                     (300.0, 250.0), ((300.0, math.nan, math.nan), (250.0, math.nan, math.nan)), (0.2, 0.4, 0.2),
                     ((1.0, 0.0, 0.0),) * 3, 0.2, 778, ((0.5, math.nan, 0.0),), ((4, 0, 8),))
    x = round_inputs([run], 8, 80, {"pydocs": 41})
    s = 0.2 + 0.2 + 0.2  # server + devices 0 and 2
    assert x.share[0] == pytest.approx(s)
    assert x.compression[0] == pytest.approx(0.2 * 0.5 / s)
    assert x.rank[0] == pytest.approx((0.2 * 8 + 0.2 * 4 + 0.2 * 8) / s)
    np.testing.assert_allclose(x.mix[0], [1.0, 0.0, 0.0])
    assert x.reuse[0] == pytest.approx(80 / (s * 778))  # the server's and the two devices' first epochs
    np.testing.assert_allclose(x.eval_weight[0], [1.0, 0.0, 0.0])
    again = trajectory_from_dict(trajectory_to_dict(run))
    assert again.spec == run.spec and again.perplexity == run.perplexity and math.isnan(again.compression[0][1])
    assert math.isnan(again.domain_perplexity[1][2]) and again.blocks == 778
    assert errors(hand_calibration(**TRUE), [run], 80)["by_condition"]["server"]["runs"] == 1
