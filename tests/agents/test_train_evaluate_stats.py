"""Statistics, the benchmark table, SB3 training / loading and plots (own calibration file, small env)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from agents.baselines import make_policy
from agents.evaluate import evaluate
from agents.plots import learning_curve, read_episodes, returns_bar
from agents.stats import (
    TABLE_COLUMNS,
    benchmark_table,
    bootstrap_ci,
    iqm,
    normalised_score,
    oracle_margin,
    paired_difference,
    to_markdown,
)
from agents.train import TrainConfig, load_policy, train

FAST = {"ppo": {"n_steps": 32, "batch_size": 64, "n_epochs": 2}, "a2c": {"n_steps": 8},
        "maskable-ppo": {"n_steps": 32, "batch_size": 64, "n_epochs": 2}}


@pytest.fixture(scope="module")
def runs(env_kwargs, tmp_path_factory) -> dict:
    """One tiny training run per algorithm (256 steps)."""
    root = tmp_path_factory.mktemp("runs")
    return {algo: train(TrainConfig(algo=algo, env_kwargs=env_kwargs, timesteps=256, seed=1, out_dir=str(root / algo),
                                    algo_kwargs=kwargs), progress=False)
            for algo, kwargs in FAST.items()}


# --- statistics --------------------------------------------------------------------------------------------------
def test_iqm_by_hand():
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100]) == pytest.approx(np.mean([3, 4, 5, 6, 7, 8]))
    assert iqm([7.0]) == 7.0


def test_bootstrap_ci():
    x = np.random.default_rng(0).normal(3.0, 1.0, 40)
    low, high = bootstrap_ci(x)
    assert low < x.mean() < high
    assert bootstrap_ci(x, seed=1) != (low, high) and bootstrap_ci(x) == (low, high)
    low_iqm, high_iqm = bootstrap_ci(x, fn=iqm, n=500, level=0.5)
    assert low_iqm < high_iqm and high_iqm - low_iqm < high - low
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(x, level=1.5)


def test_normalised_score():
    assert normalised_score(-10.0, -10.0, -2.0) == 0.0
    assert normalised_score(-2.0, -10.0, -2.0) == 1.0
    assert normalised_score(-6.0, -10.0, -2.0) == pytest.approx(0.5)
    np.testing.assert_allclose(normalised_score(np.array([-10.0, -2.0]), -10.0, -2.0), [0.0, 1.0])
    with pytest.raises(ValueError, match="R_oracle"):
        normalised_score(1.0, 3.0, 3.0)


def _frame(returns) -> pd.DataFrame:
    n = len(returns)
    return pd.DataFrame({"seed": range(n), "return": returns, "final_perplexity": np.full(n, 200.0),
                         "total_latency_s": np.full(n, 1.5), "exchanges": np.full(n, 3), "memory_violations": 0})


def test_paired_difference_matches_episodes_on_seed_and_episode():
    a = pd.DataFrame({"seed": [1, 1, 2], "episode": [0, 1, 0], "return": [-1.0, -2.0, -3.0]})
    b = pd.DataFrame({"seed": [2, 1, 1], "episode": [0, 1, 0], "return": [-3.5, -2.5, -1.0]})  # other row order
    diff = paired_difference(a, b)
    assert diff["mean"] == pytest.approx(1.0 / 3.0) and diff["episodes"] == 3  # differences 0, 0.5, 0.5
    assert diff["CI low"] == pytest.approx(0.0) and diff["CI high"] == pytest.approx(0.5)
    same = paired_difference(a, a)
    assert same["mean"] == same["CI low"] == same["CI high"] == 0.0
    with pytest.raises(ValueError, match="same \\(seed, episode\\) pairs"):
        paired_difference(a, b.iloc[:2])


def test_benchmark_table_columns_order_and_scores():
    results = {"random": _frame([-10.0, -12.0, -8.0]), "oracle": _frame([-2.0, -3.0, -1.0]),
               "fixed-4": _frame([-6.0, -7.0, -5.0]), "fixed-1": _frame([-9.0, -9.0, -9.0])}
    table = benchmark_table(results)
    assert tuple(table.columns) == TABLE_COLUMNS
    assert table["policy"].tolist() == ["oracle", "fixed-4", "fixed-1", "random"]
    scores = dict(zip(table["policy"], table["normalised score"]))
    assert scores["random"] == 0.0 and scores["oracle"] == 1.0 and scores["fixed-4"] == pytest.approx(0.5)
    assert (table["CI low"] <= table["mean return"]).all() and (table["mean return"] <= table["CI high"]).all()
    assert oracle_margin(table) == pytest.approx(100.0 * (-2.0 + 6.0) / 6.0)
    assert benchmark_table({"fixed-1": _frame([-1.0])})["normalised score"].isna().all()


def test_to_markdown():
    df = pd.DataFrame({"policy": ["a|b", "c"], "mean return": [-1.23456, 2.0], "exchanges": [3, 4]})
    lines = to_markdown(df, digits=2).splitlines()
    assert lines[0] == "| policy | mean return | exchanges |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| a\\|b | -1.23 | 3 |"
    assert len(lines) == 4


# --- training, loading, evaluation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", list(FAST))
def test_train_saves_and_loads(algo, runs, env_kwargs):
    out = runs[algo]
    for name in ("model.zip", "vecnormalize.pkl", "config.json", "metrics.json"):
        assert (out / name).is_file()
    assert json.loads((out / "config.json").read_text())["algo"] == algo
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["env_steps"] >= 256 and 0.0 < metrics["env_time_share"] < 1.0
    assert list((out / "tb").glob("events.out.tfevents*")) and (out / "tb" / "progress.csv").is_file()
    policy = load_policy(out)
    assert not policy.vecnormalize.training and not policy.vecnormalize.norm_reward
    df = evaluate(policy, "FedPEAT-v1", env_kwargs, [0, 1])
    assert len(df) == 2 and df["rounds"].between(1, env_kwargs["horizon"]).all()
    if algo == "maskable-ppo":
        assert df["memory_violations"].sum() == 0


def test_train_config_validation():
    with pytest.raises(ValueError, match="algo must be one of"):
        TrainConfig(algo="dqn")
    with pytest.raises(ValueError, match="n_envs"):
        TrainConfig(n_envs=0)
    with pytest.raises(ValueError, match=r"check_every must be >= 0 \(0: no checks\), got -1"):
        TrainConfig(check_every=-1)


def test_plots(runs, tmp_path, env_kwargs):
    episodes = read_episodes(runs["ppo"])
    assert len(episodes) >= 256 // env_kwargs["horizon"] // 2 and episodes["timesteps"].is_monotonic_increasing
    assert learning_curve(runs["ppo"], tmp_path / "curve.png").stat().st_size > 0
    assert learning_curve(runs["ppo"] / "tb" / "progress.csv", tmp_path / "progress.png").is_file()
    results = {name: evaluate(make_policy(name), "FedPEAT-v1", env_kwargs, [0, 1]) for name in ("random", "fixed-4")}
    assert returns_bar(benchmark_table(results), tmp_path / "bar.png").stat().st_size > 0


# --- the default scenario ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_oracle_margin_on_default_scenario():
    """DESIGN 10a: on the default scenario (committed calibration) the oracle beats the best fixed policy by >= 10% of
    its return."""
    names = ["fixed-1", "fixed-2", "fixed-3", "fixed-4", "random", "oracle"]
    table = benchmark_table({name: evaluate(make_policy(name), "FedPEAT-v1", {}, range(5)) for name in names})
    assert oracle_margin(table) >= 10.0


def test_training_checks_report_the_time_to_beat_the_best_static_policy(tmp_path, env_kwargs):
    out = tmp_path / "checked"
    train(TrainConfig(env_kwargs=env_kwargs, timesteps=256, n_envs=4, out_dir=str(out), check_every=64, check_episodes=4,
                      algo_kwargs={"n_steps": 16, "batch_size": 32, "n_epochs": 1}), progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    checks = metrics["checks"]
    assert metrics["reference"] == "best-static" and len(checks) >= 3
    assert [c["steps"] for c in checks] == sorted(c["steps"] for c in checks)
    first = next((c for c in checks if c["CI low"] > 0), None)  # the first check whose paired CI is above 0
    assert metrics["steps_to_beat"] == (None if first is None else first["steps"])
    assert metrics["time_to_beat_s"] == (None if first is None else first["train_time_s"])
    best = metrics["best_check"]  # the best check's policy is kept: evaluated again it gives the same difference
    assert best["mean"] == max(c["mean"] for c in checks) and (out / "best" / "model.zip").is_file()
    from agents.evaluate import VALIDATION_SEED

    seeds = [VALIDATION_SEED + s for s in range(4)]
    again = paired_difference(evaluate(load_policy(out, checkpoint="best"), "FedPEAT-v1", env_kwargs, seeds),
                              evaluate(make_policy("best-static"), "FedPEAT-v1", env_kwargs, seeds))
    assert again["mean"] == pytest.approx(best["mean"], rel=1e-9)
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        load_policy(out, checkpoint="last")
    progress = pd.read_csv(out / "tb" / "progress.csv")
    assert "eval/paired_diff_mean" in progress.columns
    logged = progress["env/final_perplexity"].dropna()  # the env's episode metrics, grouped under env/
    assert len(logged) >= 2 and (logged > 0).all() and progress["env/reward/perplexity"].notna().any()
    train(TrainConfig(env_kwargs=env_kwargs, timesteps=64, n_envs=4, out_dir=str(out),  # again, without checks
                      algo_kwargs={"n_steps": 16, "batch_size": 32, "n_epochs": 1}), progress=False)
    with pytest.raises(ValueError, match="checkpoint 'best' needs a run trained with check_every > 0"):
        load_policy(out, checkpoint="best")  # the earlier run's best checkpoint is gone with it
