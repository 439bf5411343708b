"""``fedpeat evaluate`` and ``fedpeat benchmark`` end to end on a small scenario."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from experiments import cli
from experiments.cli import app
from experiments.report import benchmark_tables, headline
from tests.helpers import cli_runner

runner = cli_runner()
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
            "--baseline", "fixed-1", "--baseline", "fixed-4", "--baseline", "best-static", "--baseline", "mpc",
            "--baseline", "random", "--baseline", "oracle", "--train-env-option", "episode_devices=[2,3]"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    trained = json.loads((tmp_path / "ppo" / "config.json").read_text())["env_kwargs"]  # 2-3 devices in training only
    assert trained == {"num_devices": 3, "horizon": 4, "episode_devices": [2, 3]}
    table = pd.read_csv(tmp_path / "benchmark.csv")
    assert set(table["policy"]) == {"ppo", "fixed-1", "fixed-4", "best-static", "mpc", "random", "oracle"}
    assert dict(zip(table["policy"], table["knows the future"]))["oracle"] == "yes"
    assert set(table.loc[table["policy"] != "oracle", "knows the future"]) == {"no"}
    scores = dict(zip(table["policy"], table["normalised score"]))
    assert scores["random"] == 0.0 and scores["oracle"] == 1.0
    assert (table["CI low"] <= table["mean return"]).all() and (table["mean return"] <= table["CI high"]).all()
    episodes = pd.read_csv(tmp_path / "episodes.csv")
    assert len(episodes) == 7 * 3 and set(episodes["seed"]) == {10000, 10001, 10002}
    for name in ("benchmark.md", "returns.png", "learning_curve.png", "episode.png", "ppo/model.zip", "ppo/vecnormalize.pkl"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_fixed"] in {"fixed-1", "fixed-4"} and "oracle_margin_pct" in summary
    assert "oracle* margin over the best fixed policy" in result.output
    returns = episodes.pivot(index=["seed", "episode"], columns="policy", values="return")
    diff = summary["agent_minus_best_fixed"]
    assert diff["episodes"] == 3 and diff["CI low"] <= diff["mean"] <= diff["CI high"]
    assert diff["mean"] == pytest.approx((returns["ppo"] - returns[summary["best_fixed"]]).mean())
    assert "ppo − best fixed, paired over 3 episodes" in result.output
    # the verdict is against the best static policy; the headroom over it, paired, for the oracle and mpc
    static = summary["agent_minus_best_static"]
    assert static["mean"] == pytest.approx((returns["ppo"] - returns["best-static"]).mean())
    text = " ".join(result.output.split())
    assert f"ppo beats the best static policy on the paired test: {'yes' if static['CI low'] > 0 else 'no'}" in text
    for name in ("oracle", "mpc"):
        room = summary["headroom"][f"{name} − best-static"]
        assert room["mean"] == pytest.approx((returns[name] - returns["best-static"]).mean())
        assert f"{name} − best-static, paired over 3 episodes: {room['mean']:+.3f}" in text
    assert "(an upper bound: the oracle knows the future)" in text

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


@pytest.mark.slow  # end to end: trains agents and evaluates every baseline
def test_benchmark_over_training_seeds_and_algorithms_resumes_finished_runs(tmp_path):
    from agents.stats import iqm, probability_of_improvement

    args = ["benchmark", "--train-seeds", "2", "--algo", "ppo", "--algo", "a2c", "--timesteps", "256", "--seeds", "2",
            "--episodes", "1", "--out", str(tmp_path), *SMALL, "--baseline", "fixed-1", "--baseline", "fixed-4",
            "--baseline", "best-static", "--baseline", "oracle"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    table, per_seed = pd.read_csv(tmp_path / "seeds.csv"), pd.read_csv(tmp_path / "per_seed.csv")
    baselines = pd.read_csv(tmp_path / "baselines.csv").set_index("policy")
    best = baselines.loc[["fixed-1", "fixed-4"], "mean return"].idxmax()
    room = pd.read_csv(tmp_path / "headroom.csv").set_index("difference")  # mpc is not in this run: the oracle only
    assert list(room.index) == ["oracle − best-static"] and room.loc["oracle − best-static", "episodes"] == 2
    assert room.loc["oracle − best-static", "mean"] == pytest.approx(
        baselines.loc["oracle", "mean return"] - baselines.loc["best-static", "mean return"])
    assert len(per_seed) == 4 and set(per_seed["algo"]) == {"ppo", "a2c"}
    for _, row in table.iterrows():
        runs = per_seed.loc[per_seed["algo"] == row["algo"], "mean return"]
        assert row["best fixed"] == best and row["IQM"] == pytest.approx(iqm(runs))
        assert row["P(improvement)"] == pytest.approx(probability_of_improvement(runs, [baselines.loc[best, "mean return"]]))
        assert row["CI low"] <= row["IQM"] <= row["CI high"]
        static = baselines.loc["best-static", "mean return"]
        assert row["P(improvement) over best static"] == pytest.approx(probability_of_improvement(runs, [static]))
        beats = per_seed.loc[per_seed["algo"] == row["algo"], "beats best static"].sum()
        assert row["seeds beating best static (paired CI > 0)"] == beats
    for algo, seed in [("ppo", 0), ("ppo", 1), ("a2c", 0), ("a2c", 1)]:
        episodes = pd.read_csv(tmp_path / algo / f"seed-{seed}" / "evaluation-final.csv")
        assert episodes["return"].mean() == pytest.approx(
            per_seed.loc[(per_seed["algo"] == algo) & (per_seed["train seed"] == seed), "mean return"].item())
    assert (tmp_path / "learning_curves.png").stat().st_size > 0 and (tmp_path / "seeds.md").is_file()
    assert (tmp_path / "episode_ppo.png").stat().st_size > 0 and (tmp_path / "episode_a2c.png").stat().st_size > 0
    # the command as typed (for `fedpeat report`), and the report's tables from these files
    command = (tmp_path / "command.txt").read_text().strip()
    assert command.startswith("fedpeat benchmark --seeds 2 --episodes 1 --timesteps 256 --algo ppo --algo a2c "
                              "--train-seeds 2 ")
    assert f"--out {tmp_path}" in command and "--baseline fixed-1 --baseline fixed-4" in command
    tables = benchmark_tables(tmp_path)
    for _, row in per_seed.iterrows():
        line = next(line for line in tables["benchmark_per_seed.md"].splitlines()
                    if line.startswith(f"| {row['algo']} | {row['train seed']} |"))
        assert f"| {row['mean return']:.2f} | {row['− best-static']:+.2f} [" in line
    block = headline(tmp_path)
    assert f"IQM {table.loc[0, 'IQM']:.2f}" in block and command in block
    assert block.count("| yes |") == 1  # the oracle, the only clairvoyant baseline of this run

    written = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/seed-*/model.zip")}
    again = runner.invoke(app, args)  # a second run reuses every finished training and evaluation
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/seed-*/model.zip")} == written
    assert " ".join(again.output.split()).count("reusing") == 4 + 4 + 4
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "per_seed.csv"), per_seed)

    a2c_only = args[:3] + args[5:]  # without --algo ppo
    retrained = runner.invoke(app, [*a2c_only, "--hyperparams", "learning_rate:0.01"])  # other settings: trained again
    assert retrained.exit_code == 0, retrained.output
    text = " ".join(retrained.output.split())
    assert text.count("training a2c seed") == 2 and text.count(f"evaluating {tmp_path}") == 2  # not the stale episodes



def test_statistics_over_runs_by_hand():
    from agents.stats import probability_of_improvement, runs_summary

    summary = runs_summary([1.0, 2.0, 3.0, 4.0, 100.0])
    assert summary["IQM"] == pytest.approx(3.0) and summary["mean"] == pytest.approx(22.0) and summary["runs"] == 5
    assert probability_of_improvement([1.0, 2.0, 3.0], [2.0]) == pytest.approx(0.5)  # one above, one tie, one below
    assert probability_of_improvement([5.0, 6.0], [1.0, 7.0]) == pytest.approx(0.5)


@pytest.mark.slow  # end to end: trains agents and evaluates every baseline
def test_demo_trains_evaluates_and_gives_the_paired_verdict(tmp_path):
    result = runner.invoke(app, ["demo", "--timesteps", "4096", "--check-every", "2048", "--check-episodes", "4",
                                 "--seeds", "1", "--episodes", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    diff, static = summary["agent_minus_best_fixed"], summary["agent_minus_best_static"]
    text = " ".join(result.output.split())
    assert f"maskable-ppo − best fixed, paired over {diff['episodes']} episodes" in text  # fixed-k keeps its rows
    assert f"maskable-ppo − best static, paired over {static['episodes']} episodes" in text
    assert f"beats the best static policy on the paired test: {'yes' if static['CI low'] > 0 else 'no'}" in text
    assert (tmp_path / "maskable-ppo" / "best" / "model.zip").is_file()  # the best validation checkpoint is evaluated


@pytest.mark.slow
def test_training_runs_in_worker_processes_and_on_ray_give_the_same_agents(tmp_path):
    args = ["benchmark", "--train-seeds", "2", "--algo", "ppo", "--algo", "a2c", "--timesteps", "256", "--seeds", "2",
            "--episodes", "1", *SMALL, "--baseline", "fixed-1", "--baseline", "fixed-4"]
    one_by_one, parallel = tmp_path / "one-by-one", tmp_path / "parallel"
    assert runner.invoke(app, [*args, "--out", str(one_by_one)]).exit_code == 0
    assert runner.invoke(app, [*args, "--out", str(parallel), "--workers", "2"]).exit_code == 0  # two at a time
    on_ray = tmp_path / "ray"
    assert runner.invoke(app, [*args, "--out", str(on_ray), "--executor", "ray"]).exit_code == 0  # Ray tasks
    timing = ["train time (min)", "env steps/s"]
    for other in (parallel, on_ray):
        pd.testing.assert_frame_equal(pd.read_csv(other / "per_seed.csv").drop(columns=timing),
                                      pd.read_csv(one_by_one / "per_seed.csv").drop(columns=timing))
    # the baselines were evaluated two at a time in worker processes there: the same episodes
    pd.testing.assert_frame_equal(pd.read_csv(parallel / "baselines.csv"), pd.read_csv(one_by_one / "baselines.csv"))
