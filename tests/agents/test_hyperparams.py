"""Hyperparameters in RL Baselines3 Zoo's format: the committed files, overrides, refusals, ``fedpeat train``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agents.hyperparams import HYPERPARAMS_DIR, load_hyperparams, parse_hyperparams
from agents.train import ALGOS, TrainConfig
from experiments.benchmark import BenchmarkConfig
from experiments.cli import app
from tests.helpers import cli_runner

runner = cli_runner()


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
    assert f"tuned settings for FedPEAT-v1 from {HYPERPARAMS_DIR / 'ppo.yml'}: n_envs=32" in " ".join(result.output.split())
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


ROOT = Path(__file__).resolve().parents[2]


def _zoo_lines(markdown: str) -> list[str]:
    """The RL Zoo command lines of a markdown text (comments cut)."""
    return [line.split("#")[0].strip() for line in markdown.splitlines()
            if line.startswith(("python -m rl_zoo3.", "python -m agents.zoo "))]


@pytest.mark.slow  # three RL Zoo runs as subprocesses
def test_every_documented_zoo_line_runs(tmp_path):
    """Each RL Zoo line of docs/clients.md, as written, plus a tiny budget: a few thousand steps on 3 devices, the logs in
    the test's directory (the enjoy line replays what the train line before it saved)."""
    import shlex
    import subprocess
    import sys

    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    from agents.device_set import DeviceSetPolicy

    lines = _zoo_lines((ROOT / "docs" / "clients.md").read_text())
    assert len(lines) == 3 and any("--algo ppo_mask" in line for line in lines)
    outputs = []
    for line in lines:
        args = shlex.split(line)[1:]  # the documented arguments after "python"
        tiny = ["-f", str(tmp_path), "--env-kwargs", "num_devices:3", "horizon:4"]
        tiny += ["-n", "40"] if "enjoy" in args[1:3] or "rl_zoo3.enjoy" in args else ["-n", "2048", "--eval-freq", "-1"]
        done = subprocess.run([sys.executable, *args, *tiny], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (line, done.stderr[-2000:])
        outputs.append(done.stdout)
    assert isinstance(PPO.load(tmp_path / "ppo" / "FedPEAT-v1_1" / "FedPEAT-v1.zip", device="cpu").policy,
                      DeviceSetPolicy)  # ppo.yml's policy: 'device-set'
    assert "Mean reward" in outputs[1] and "Episode Length 4" in outputs[1]
    masked = MaskablePPO.load(tmp_path / "ppo_mask" / "FedPEAT-v1_1" / "FedPEAT-v1.zip", device="cpu")
    assert masked.n_steps == 64 and masked.batch_size == 512  # maskable-ppo.yml, read from the package


def test_the_tuned_settings_are_package_data_and_their_absence_is_an_error(monkeypatch, tmp_path):
    import agents.hyperparams as hp

    assert HYPERPARAMS_DIR == ROOT / "agents" / "hyperparams" and (HYPERPARAMS_DIR / "ppo.yml").is_file()
    monkeypatch.setattr(hp, "HYPERPARAMS_DIR", tmp_path)  # an install that lost its data files
    with pytest.raises(ValueError, match="ppo.yml are missing from the installed package"):
        TrainConfig.from_hyperparams("ppo")


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
