"""``fedpeat evaluate`` and ``fedpeat benchmark`` end to end on a small scenario."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from experiments import cli
from experiments.cli import app

runner = CliRunner()
cli.console.width = 200
SMALL = ["--env-option", "num_devices=3", "--env-option", "horizon=4"]


def test_evaluate_baseline_prints_episodes_and_mean():
    result = runner.invoke(app, ["evaluate", "--policy", "fixed-4", "--seeds", "2", *SMALL])
    assert result.exit_code == 0, result.output
    assert "mean return" in result.output and result.output.count("10000") + result.output.count("10001") >= 2
    two = runner.invoke(app, ["evaluate", "--policy", "fixed-4", "--seeds", "1", "--episodes", "2", *SMALL])
    assert two.exit_code == 0 and "over 2 episodes" in two.output
    bad = runner.invoke(app, ["evaluate", "--policy", "fixed-4", "--env-option", "num_device=3"])
    assert bad.exit_code == 2 and "unknown FedPEAT env option" in " ".join(bad.output.split())


def test_benchmark_writes_table_plots_and_summary(tmp_path):
    args = ["benchmark", "--seeds", "3", "--episodes", "1", "--timesteps", "256", "--out", str(tmp_path), *SMALL,
            "--baseline", "fixed-1", "--baseline", "fixed-4", "--baseline", "random", "--baseline", "oracle"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "benchmark.csv")
    assert set(table["policy"]) == {"ppo", "fixed-1", "fixed-4", "random", "oracle"}
    scores = dict(zip(table["policy"], table["normalised score"]))
    assert scores["random"] == 0.0 and scores["oracle"] == 1.0
    assert (table["CI low"] <= table["mean return"]).all() and (table["mean return"] <= table["CI high"]).all()
    episodes = pd.read_csv(tmp_path / "episodes.csv")
    assert len(episodes) == 5 * 3 and set(episodes["seed"]) == {10000, 10001, 10002}
    for name in ("benchmark.md", "returns.png", "learning_curve.png", "ppo/model.zip", "ppo/vecnormalize.pkl"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_fixed"] in {"fixed-1", "fixed-4"} and "oracle_margin_pct" in summary
    assert "oracle margin over the best fixed policy" in result.output
    returns = episodes.pivot(index=["seed", "episode"], columns="policy", values="return")
    diff = summary["agent_minus_best_fixed"]
    assert diff["episodes"] == 3 and diff["CI low"] <= diff["mean"] <= diff["CI high"]
    assert diff["mean"] == pytest.approx((returns["ppo"] - returns[summary["best_fixed"]]).mean())
    assert "ppo − best fixed, paired over 3 episodes" in result.output

    # the trained agent again, more episodes per seed, no training
    model_written = (tmp_path / "ppo" / "model.zip").stat().st_mtime_ns
    again = runner.invoke(app, ["benchmark", "--agent", str(tmp_path / "ppo"), "--seeds", "2", "--episodes", "2",
                                "--out", str(tmp_path / "again"), *SMALL, "--baseline", "fixed-1", "--baseline", "random",
                                "--baseline", "oracle"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "ppo" / "model.zip").stat().st_mtime_ns == model_written
    assert not (tmp_path / "again" / "ppo").exists()
    rerun = pd.read_csv(tmp_path / "again" / "episodes.csv")
    assert len(rerun) == 4 * 4 and set(rerun["episode"]) == {0, 1} and set(rerun["seed"]) == {10000, 10001}
    first = rerun[(rerun["policy"] == "ppo") & (rerun["episode"] == 0)].set_index("seed")["return"]
    seeds_before = episodes[episodes["policy"] == "ppo"].set_index("seed")["return"]
    np.testing.assert_allclose(first, seeds_before.loc[first.index])  # episode 0 of a seed: the same episode
    assert "paired over 4 episodes" in again.output


def test_benchmark_rejects_bad_options_before_training(tmp_path):
    bad_env = runner.invoke(app, ["benchmark", "--timesteps", "256", "--out", str(tmp_path), "--env-option", "horizon=0"])
    assert bad_env.exit_code == 2 and "horizon must be >= 1" in bad_env.output
    bad_baseline = runner.invoke(app, ["benchmark", "--baseline", "clever", "--out", str(tmp_path)])
    assert bad_baseline.exit_code == 2 and "baseline must be one of" in bad_baseline.output
    assert not (tmp_path / "ppo" / "model.zip").exists()
    bad_agent = runner.invoke(app, ["benchmark", "--agent", str(tmp_path / "nothing"), "--out", str(tmp_path)])
    assert bad_agent.exit_code == 2 and "agent_dir must be a trained agent's directory" in bad_agent.output
    bad_episodes = runner.invoke(app, ["benchmark", "--episodes", "0", "--out", str(tmp_path)])
    assert bad_episodes.exit_code == 2 and "episodes_per_seed must be >= 1, got 0" in bad_episodes.output
    bad_demo = runner.invoke(app, ["demo", "--seeds", "0", "--out", str(tmp_path)])
    assert bad_demo.exit_code == 2 and "seeds must be >= 1, got 0" in bad_demo.output
