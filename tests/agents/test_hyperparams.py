"""Hyperparameters in RL Baselines3 Zoo's format: the committed files, overrides, refusals, ``fedpeat train``."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from agents.hyperparams import HYPERPARAMS_DIR, load_hyperparams, parse_hyperparams
from agents.train import ALGOS, TrainConfig
from experiments.benchmark import BenchmarkConfig
from experiments.cli import app

runner = CliRunner()


@pytest.mark.parametrize("algo", list(ALGOS))
def test_every_algorithm_has_a_zoo_file_for_the_env_that_builds_a_config(algo):
    table = yaml.safe_load((HYPERPARAMS_DIR / f"{algo}.yml").read_text().replace("!!float ", ""))
    assert set(table) == {"FedPEAT-v1"}
    config = TrainConfig.from_hyperparams(algo)
    entry = load_hyperparams(algo, "FedPEAT-v1")
    assert config.timesteps == int(entry["n_timesteps"]) and config.n_envs == entry["n_envs"]
    assert config.policy == entry["policy"] and config.normalize is entry["normalize"]
    assert config.algo_kwargs == {k: v for k, v in entry.items() if k not in ("n_envs", "n_timesteps", "policy", "normalize")}


def test_overrides_and_explicit_fields_take_precedence_and_unknown_keys_are_refused():
    overrides = parse_hyperparams(["n_steps:64 ent_coef:0.0", "normalize:false", "n_timesteps:1e4"])
    assert overrides == {"n_steps": 64, "ent_coef": 0.0, "normalize": False, "n_timesteps": 1e4}
    config = TrainConfig.from_hyperparams("ppo", overrides=overrides, n_envs=4)
    assert config.algo_kwargs == {"n_steps": 64, "batch_size": 512, "learning_rate": "lin_0.001", "ent_coef": 0.0}
    assert (config.normalize, config.timesteps, config.n_envs) == (False, 10_000, 4)
    assert BenchmarkConfig(hyperparams={"ent_coef": 0.0}, timesteps=500).train_config().algo_kwargs["ent_coef"] == 0.0
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['frame_stack', 'n_stepz'\] for ppo; allowed: "):
        TrainConfig.from_hyperparams("ppo", overrides={"n_stepz": 3, "frame_stack": 4})
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['batch_size'\] for a2c"):
        TrainConfig(algo="a2c", algo_kwargs={"batch_size": 64})
    with pytest.raises(ValueError, match="--hyperparams entries must be key:value"):
        parse_hyperparams(["n_steps=64"])
    with pytest.raises(ValueError, match="normalize must be true or false"):
        TrainConfig.from_hyperparams("ppo", overrides={"normalize": "yes"})


def test_train_cli_takes_n_envs_and_hyperparams(tmp_path):
    args = ["train", "--timesteps", "64", "--n-envs", "2", "--hyperparams", "n_steps:16", "batch_size:16",  # Zoo spelling
            "--hyperparams", "n_epochs:1 normalize:false", "--out", str(tmp_path), "--env-option", "num_devices=3",
            "--env-option", "horizon=4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["n_envs"] == 2 and saved["normalize"] is False
    assert saved["algo_kwargs"] == {"n_steps": 16, "batch_size": 16, "learning_rate": "lin_0.001", "ent_coef": 0.01,
                                    "n_epochs": 1}
    assert not (tmp_path / "vecnormalize.pkl").exists() and (tmp_path / "model.zip").is_file()
    bad = runner.invoke(app, ["train", "--hyperparams", "n_stepz:16", "--out", str(tmp_path / "never")])
    assert bad.exit_code == 2 and "unknown hyperparameter(s) ['n_stepz']" in " ".join(bad.output.split())
    stray = runner.invoke(app, ["train", "--hyperparams", "n_steps:16", "sixteen", "--out", str(tmp_path / "never")])
    assert stray.exit_code == 2 and "unexpected argument(s) ['sixteen']" in " ".join(stray.output.split())
    assert not (tmp_path / "never").exists()


def test_rl_zoo_trains_and_replays_from_the_committed_file(tmp_path):
    import subprocess
    import sys

    common = ["--algo", "ppo", "--env", "FedPEAT-v1", "--gym-packages", "fedpeat_env", "agents.device_set", "-f", str(tmp_path),
              "--num-threads", "1"]
    train = subprocess.run([sys.executable, "-m", "rl_zoo3.train", *common, "--conf-file", str(HYPERPARAMS_DIR / "ppo.yml"),
                            "-n", "2048", "--eval-freq", "-1", "--env-kwargs", "num_devices:3", "horizon:4"],
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    saved = tmp_path / "ppo" / "FedPEAT-v1_1" / "FedPEAT-v1.zip"
    from stable_baselines3 import PPO

    from agents.device_set import DeviceSetPolicy

    assert isinstance(PPO.load(saved, device="cpu").policy, DeviceSetPolicy)  # the file's policy: 'device-set'
    enjoy = subprocess.run([sys.executable, "-m", "rl_zoo3.enjoy", *common, "-n", "40", "--no-render",
                            "--env-kwargs", "num_devices:3", "horizon:4"], capture_output=True, text=True, timeout=600)
    assert enjoy.returncode == 0, enjoy.stderr[-2000:]
    assert "Mean reward" in enjoy.stdout and "Episode Length 4" in enjoy.stdout


def test_zoo_linear_schedules_reach_the_algorithm_and_bad_ones_are_refused(tmp_path, env_kwargs):
    from stable_baselines3 import PPO

    from agents.train import train

    overrides = parse_hyperparams(["learning_rate:lin_0.002", "clip_range:lin_0.3", "n_steps:16", "batch_size:32",
                                   "n_epochs:1"])
    config = TrainConfig.from_hyperparams("ppo", overrides=overrides, timesteps=64, n_envs=4, env_kwargs=env_kwargs,
                                          out_dir=str(tmp_path))
    assert config.algo_kwargs["learning_rate"] == "lin_0.002"  # stored as the Zoo spells it (config.json)
    model = PPO.load(train(config, progress=False) / "model.zip", device="cpu")
    assert model.lr_schedule(1.0) == pytest.approx(0.002) and model.lr_schedule(0.25) == pytest.approx(0.0005)
    assert model.clip_range(0.5) == pytest.approx(0.15)
    for bad in ("lin_", "exp_0.1", "lin_-1"):
        with pytest.raises(ValueError, match=rf"learning_rate must be a number or lin_<initial> with initial > 0, got '{bad}'"):
            TrainConfig.from_hyperparams("ppo", overrides={"learning_rate": bad})
