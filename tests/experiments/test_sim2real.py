"""``fedpeat sim2real``: the same policies on the surrogate and on real engine rounds, compared round by round (tiny
agent and engine)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from agents.evaluate import evaluate
from agents.train import TrainConfig, load_policy, train
from experiments import cli
from experiments.benchmark import EVAL_SEED_OFFSET
from experiments.cli import app
from fedpeat_env.calibration import trajectory_from_dict
from tests.helpers import cli_runner

runner = cli_runner()
cli.console.width = 200


def test_sim2real_compares_perplexity_trajectories_and_ranks(tmp_path):
    agent = tmp_path / "ppo"
    kwargs = {"num_devices": 3, "horizon": 2, "engine_local_steps": 1, "memory_tiers": [2.0]}
    train(TrainConfig(algo="ppo", env_kwargs=kwargs, timesteps=64, seed=0, out_dir=str(agent), check_every=32,
                      check_episodes=2, algo_kwargs={"n_steps": 8, "batch_size": 16, "n_epochs": 1}), progress=False)
    out = tmp_path / "s2r"
    args = ["sim2real", "--agent", str(agent), "--seeds", "1", "--checkpoint", "best", "--policy", "largest-1",
            "--policy", "smallest-1", "--workers", "1", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "sim2real.csv")
    assert list(table["policy"]) == ["ppo", "largest-1", "smallest-1"]
    best = evaluate(load_policy(agent, checkpoint="best"), env_kwargs=kwargs, seeds=[EVAL_SEED_OFFSET])
    assert table.loc[0, "FedPEAT-v1 return"] == pytest.approx(best["return"].mean())  # the best checkpoint ran
    # the trajectory error: mean perplexity per round, surrogate against engine, worst round
    trajectories = pd.read_csv(out / "trajectories.csv")
    assert len(trajectories) == 2 * 3 * 1 * 3  # fidelities × policies × seeds × rounds 0..2
    mean = trajectories.groupby(["policy", "fidelity", "round"])["perplexity"].mean().unstack("fidelity")
    error = ((mean["FedPEAT-v1"] - mean["FedPEAT-Engine-v1"]).abs() / mean["FedPEAT-Engine-v1"]).groupby("policy").max()
    for _, row in table.iterrows():
        assert row["ppl error, worst round"] == pytest.approx(error[row["policy"]])
        assert row["tolerance"] == (0.10 if row["policy"] == "smallest-1" else 0.05)
        assert row["within"] == (row["ppl error, worst round"] <= row["tolerance"])
    start = mean.xs(0, level="round")  # both fidelities start at the zero-shot perplexity
    np.testing.assert_allclose(start["FedPEAT-v1"], start["FedPEAT-Engine-v1"], rtol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all_within"] == bool(table["within"].all()) and summary["horizon"] == 2
    same = bool((table["FedPEAT-v1 rank"] == table["FedPEAT-Engine-v1 rank"]).all())
    assert summary["same_ranking"] == same
    assert f"Kendall τ of the returns = {summary['kendall_tau']:.2f}" in result.output
    assert (out / "sim2real.png").stat().st_size > 10_000
    # the engine episodes, as calibration runs: one per policy and seed, with what trained
    runs = [trajectory_from_dict(r) for r in json.loads((out / "engine_runs.json").read_text())]
    assert len(runs) == 3 and {r.spec.condition for r in runs} == {"policy"}
    for held, pick in (("smallest", np.argmin), ("largest", np.argmax)):  # who trained, round by round
        assert any(all(set(np.flatnonzero(~np.isnan(row))) <= {pick(r.device_share)} for row in np.asarray(r.compression))
                   for r in runs), held
    # which policies' engine episodes a calibration was fitted on (none here: the committed calibration has no policy
    # runs); a calibration whose fit runs hold one of these episodes marks exactly that policy's episode
    assert (table["in the fit"] == 0).all()
    from types import SimpleNamespace

    from experiments.sim2real import _fitted_perplexities, _rounded

    stored = json.loads((out / "engine_runs.json").read_text())
    per_policy = {f.stem: json.loads(f.read_text()) for f in (out / "engine_runs").glob("*.json")}
    assert sorted(per_policy) == ["largest-1", "ppo", "smallest-1"] and per_policy["ppo"] == stored[:1]
    assert sorted(json.dumps(r) for runs in per_policy.values() for r in runs) == sorted(json.dumps(r) for r in stored)
    fitted = _fitted_perplexities(SimpleNamespace(meta={"fit_runs": stored[:1]}))
    cached = {p.parent.name: json.loads(p.read_text())["episode"]["trace"] for p in (out / "engine").glob("*/seed-*.json")}
    assert [name for name, trace in cached.items() if _rounded(trace) in fitted] == ["ppo"]
    # fedpeat report's table and README block from these files: every policy's numbers as sim2real wrote them
    from experiments.report import sim2real_headline, sim2real_table

    markdown, block = sim2real_table(out), sim2real_headline(out)
    for _, row in table.iterrows():
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {row['policy']} |"))
        assert f"| {row['FedPEAT-v1 return']:.2f} | {row['FedPEAT-Engine-v1 return']:.2f} |" in line
        assert f"{100 * row['ppl error, worst round']:.1f}% ({int(row['worst round'])})" in line
        line = next(line for line in block.splitlines() if line.startswith(f"| {row['policy']} |"))
        assert line.startswith(f"| {row['policy']} | {row['FedPEAT-Engine-v1 return']:.2f} | ")
    assert f"Kendall τ of the returns over the policies: {summary['kendall_tau']:.2f}" in markdown
    assert all(len(r.perplexity) == len(r.compression) + 1 == 3 for r in runs)
    # a rerun reuses every engine episode
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "reusing 3 engine episodes" in again.output
    assert pd.read_csv(out / "sim2real.csv").equals(table)


def test_sim2real_refuses_bad_input_before_any_work(tmp_path):
    for args, message in [(["--agent", str(tmp_path / "nothing")], "is not a trained agent's directory"),
                          (["--policy", "best-guess"], "--policy: policy name must be one of"),
                          (["--seeds", "0"], "--seeds must be >= 1"),
                          (["--env-option", "partition=topics"], "partition must be one of")]:
        bad = runner.invoke(app, ["sim2real", *args, "--out", str(tmp_path / "never")])
        assert bad.exit_code == 2 and message in " ".join(bad.output.split()), (args, bad.output)
        assert not (tmp_path / "never").exists()
