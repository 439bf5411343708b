"""The multi-agent recipe: parameter-shared PPO on ``fedpeat_env.parallel_env`` through ``fedpeat marl``, and its
comparison with the single-agent device-set policy on the same episodes (tiny budgets)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import fedpeat_env
from agents.marl import MARLConfig, MARLPolicy, make_marl_env
from experiments import cli
from experiments.cli import app
from tests.helpers import cli_runner, cli_text

runner = cli_runner()
cli.console.width = 200
TINY_PPO = ["--hyperparams", "n_steps:16", "batch_size:48", "n_epochs:1"]


def _env_options(env_kwargs) -> list[str]:
    return [item for key, value in env_kwargs.items() for item in ("--env-option", f"{key}={value}")]


def test_the_agents_of_every_episode_copy_are_sub_envs_with_their_own_episodes(env_kwargs):
    venv = make_marl_env(2, seed=7, **env_kwargs)
    obs = venv.reset()
    assert venv.num_envs == 2 * 3 and obs.shape == (6, venv.observation_space.shape[0])
    assert not np.array_equal(obs[:3], obs[3:])  # copy i seeded with 7 + i, not two identical episodes
    obs, rewards, dones, infos = venv.step(np.array([1, 2, 0, 1, 2, 0]))
    assert rewards[0] == rewards[1] == rewards[2] != 0 and rewards[3] == rewards[4] == rewards[5]  # shared per episode
    venv.close()


def test_marl_trains_and_is_compared_with_the_device_set_policy_on_the_same_episodes(tmp_path, env_kwargs):
    marl_dir, agent_dir = tmp_path / "marl", tmp_path / "agent"
    trained = runner.invoke(app, ["marl", "train", "--timesteps", "96", "--n-envs", "2", *TINY_PPO,
                                  *_env_options(env_kwargs), "--out", str(marl_dir)])
    assert trained.exit_code == 0, trained.output
    assert json.loads((marl_dir / "metrics.json").read_text())["agent_steps"] >= 96
    assert json.loads((marl_dir / "config.json").read_text())["algo_kwargs"]["n_steps"] == 16
    single = runner.invoke(app, ["train", "--policy", "device-set", "--timesteps", "64", "--n-envs", "2",
                                 "--hyperparams", "n_steps:16", "batch_size:32", "n_epochs:1",
                                 *_env_options(env_kwargs), "--out", str(agent_dir)])
    assert single.exit_code == 0, single.output

    compared = runner.invoke(app, ["marl", "compare", "--marl", str(marl_dir), "--agent", str(agent_dir), "--seeds", "2",
                                   "--episodes", "2", "--out", str(tmp_path / "cmp")])
    assert compared.exit_code == 0, compared.output
    text = cli_text(compared.output)
    assert "marl (shared PPO)" in text and "single-agent ppo (device-set)" in text and "fixed-1" in text
    assert "marl − single-agent ppo (device-set), paired over 4 episodes" in text
    import pandas as pd

    from agents import evaluate, make_policy
    from experiments.benchmark import EVAL_SEED_OFFSET

    table = pd.read_csv(tmp_path / "cmp" / "marl_compare.csv")
    assert list(table["policy"]) == ["marl (shared PPO)", "single-agent ppo (device-set)", "fixed-1"]
    assert (table["episodes"] == 4).all() and np.isfinite(table["mean return"]).all()
    # the same episodes for every row: the benchmark's test seeds, 2 episodes each, at the MARL run's env options
    fixed = evaluate(make_policy("fixed-1"), "FedPEAT-v1", env_kwargs, [EVAL_SEED_OFFSET, EVAL_SEED_OFFSET + 1], 2)
    assert table.loc[2, "mean return"] == pytest.approx(fixed["return"].mean(), rel=1e-9)

    # a flat MLP agent trained at another number of devices is refused before any episode, naming the agent
    mlp_dir = tmp_path / "mlp-agent"
    shutil.copytree(agent_dir, mlp_dir)
    config = json.loads((mlp_dir / "config.json").read_text())
    config |= {"policy": "MlpPolicy", "env_kwargs": {**config["env_kwargs"], "num_devices": 5}}
    (mlp_dir / "config.json").write_text(json.dumps(config))
    refused = runner.invoke(app, ["marl", "compare", "--marl", str(marl_dir), "--agent", str(mlp_dir), "--seeds", "1"])
    assert refused.exit_code == 2, refused.output
    assert f"agent {mlp_dir} is an mlp policy trained at num_devices=5; the compared episodes have num_devices=3" \
        in cli_text(refused.output)

    # the MARL policy on the single-agent env is the trained network acting for each agent of the parallel env
    policy = MARLPolicy.load(marl_dir)
    parallel = fedpeat_env.parallel_env(**env_kwargs)
    obs, _ = parallel.reset(seed=3)
    per_agent, _ = policy.model.predict(np.stack([obs[a] for a in parallel.agents]), deterministic=True)
    single_env = parallel.env
    np.testing.assert_array_equal(policy.act(parallel.state(), single_env), per_agent)


@pytest.mark.parametrize("args, message", [
    (["train", "--timesteps", "0"], "--timesteps must be >= 1, got 0"),
    (["train", "--hyperparams", "n_stepz:4"], "unknown hyperparameter(s) ['n_stepz'] for ppo"),
    (["train", "--hyperparams", "n_envs:4"], "algo_kwargs must be PPO arguments; ['n_envs']"),
    (["train", "--hyperparams", "ent_coef:nan"], "ent_coef must be a finite number, got nan"),
    (["train", "--env-option", "num_devices=0"], "num_devices must be >= 1, got 0"),
    (["compare", "--marl", "{tmp}", "--agent", "{tmp}"], "is not a trained MARL run's directory"),
    (["compare", "--marl", "{tmp}", "--agent", "{tmp}", "--seeds", "0"], "--seeds must be >= 1, got 0"),
])
def test_bad_marl_input_is_refused_before_any_work(tmp_path, args, message):
    result = runner.invoke(app, ["marl", *[a.replace("{tmp}", str(tmp_path)) for a in args], "--out",
                                 str(tmp_path / "never")])
    assert result.exit_code == 2 and message in cli_text(result.output), result.output
    assert not (tmp_path / "never").exists()


def test_marl_config_names_bad_settings():
    with pytest.raises(ValueError, match="n_envs must be an integer >= 1"):
        MARLConfig(n_envs=0)
    with pytest.raises(ValueError, match="unknown FedPEAT env option"):
        MARLConfig(env_kwargs={"devices": 3})
