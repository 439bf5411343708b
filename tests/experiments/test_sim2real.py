"""``fedpeat sim2real``: the same policies on the surrogate and on real engine rounds (tiny agent and engine)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from agents.evaluate import evaluate
from agents.train import TrainConfig, load_policy, train
from experiments import cli
from experiments.benchmark import EVAL_SEED_OFFSET
from experiments.cli import app

runner = CliRunner()
cli.console.width = 200


def test_sim2real_ranks_the_policies_on_both_fidelities(tmp_path):
    agent = tmp_path / "ppo"
    kwargs = {"num_devices": 2, "horizon": 2, "engine_local_steps": 1, "memory_tiers": [2.0]}
    train(TrainConfig(algo="ppo", env_kwargs=kwargs, timesteps=64, seed=0, out_dir=str(agent), check_every=32,
                      check_episodes=2, algo_kwargs={"n_steps": 8, "batch_size": 16, "n_epochs": 1}), progress=False)
    result = runner.invoke(app, ["sim2real", "--agent", str(agent), "--seeds", "1", "--checkpoint", "best",
                                 "--out", str(tmp_path / "s2r")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "s2r" / "sim2real.csv")
    assert list(table["policy"]) == ["ppo", "fixed-1", "fixed-2", "fixed-3", "fixed-4"]
    best = evaluate(load_policy(agent, checkpoint="best"), env_kwargs={**kwargs, "horizon": 2}, seeds=[EVAL_SEED_OFFSET])
    assert table.loc[0, "FedPEAT-v0 return"] == pytest.approx(best["return"].mean())  # the best checkpoint ran
    for fidelity in ("FedPEAT-v0", "FedPEAT-Engine-v0"):
        assert sorted(table[f"{fidelity} rank"]) == sorted(table[f"{fidelity} return"].rank(ascending=False, method="min").astype(int))
        assert (table[f"{fidelity} final perplexity"] > 1).all()
    summary = json.loads((tmp_path / "s2r" / "summary.json").read_text())
    same = bool((table["FedPEAT-v0 rank"] == table["FedPEAT-Engine-v0 rank"]).all())
    assert summary["same_ranking"] == same and summary["horizon"] == 2
    assert ("same ranking on both fidelities: yes" if same else "same ranking on both fidelities: no") in result.output
    bad = runner.invoke(app, ["sim2real", "--agent", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "--agent must be a trained agent's directory" in " ".join(bad.output.split())
