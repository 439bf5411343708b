"""``fedpeat evaluate`` and ``fedpeat benchmark`` end to end on a small scenario."""

from __future__ import annotations

import json

import pandas as pd
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
    bad = runner.invoke(app, ["evaluate", "--policy", "fixed-4", "--env-option", "num_device=3"])
    assert bad.exit_code == 2 and "unknown FedPEAT env option" in " ".join(bad.output.split())


def test_benchmark_writes_table_plots_and_summary(tmp_path):
    args = ["benchmark", "--seeds", "3", "--timesteps", "256", "--out", str(tmp_path), *SMALL,
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


def test_benchmark_rejects_bad_options_before_training(tmp_path):
    bad_env = runner.invoke(app, ["benchmark", "--timesteps", "256", "--out", str(tmp_path), "--env-option", "horizon=0"])
    assert bad_env.exit_code == 2 and "horizon must be >= 1" in bad_env.output
    bad_baseline = runner.invoke(app, ["benchmark", "--baseline", "clever", "--out", str(tmp_path)])
    assert bad_baseline.exit_code == 2 and "baseline must be one of" in bad_baseline.output
    assert not (tmp_path / "ppo" / "model.zip").exists()
