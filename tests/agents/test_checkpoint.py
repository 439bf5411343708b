"""Training checkpoints and ``--resume`` (``agents.checkpoint``): exact continuation on FedPEAT-v1, restored model and
statistics on other envs, the command line and its errors."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from agents.checkpoint import CHECKPOINT_DIR, checkpoints, config_differences
from agents.plots import read_episodes
from agents.train import ALGOS, TrainConfig, _make_venv, _restored_model, train
from experiments import cli
from experiments.cli import app
from tests.helpers import cli_runner

runner = cli_runner()
cli.console.width = 200  # one error line, unwrapped
ROLLOUT = 4 * 16  # n_envs × n_steps: checkpoints fall on rollout boundaries
FAST = {"n_steps": 16, "batch_size": 32, "n_epochs": 1}


def _config(out: Path, env_kwargs: dict, timesteps: int, **fields) -> TrainConfig:
    settings = {"env_kwargs": env_kwargs, "n_envs": 4, "seed": 1, "algo_kwargs": FAST} | fields
    return TrainConfig(timesteps=timesteps, out_dir=str(out), **settings)


def _steps(path: Path) -> int:
    return int(path.name.split("-")[1])


def _same_parameters(a: Path, b: Path, algo: str = "ppo") -> bool:
    first, second = ALGOS[algo].load(a), ALGOS[algo].load(b)
    pa, pb = first.policy.state_dict(), second.policy.state_dict()
    oa, ob = first.policy.optimizer.state_dict()["state"], second.policy.optimizer.state_dict()["state"]
    return (pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
            and all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i]))


def test_a_run_resumed_after_a_kill_ends_as_the_uninterrupted_run(tmp_path, env_kwargs):
    """Killed after its checkpoint at 3 rollouts (the directory then holds later episodes, logs and checkpoints), the
    run resumed to 4 rollouts has the uninterrupted run's parameters, optimizer state, episodes, checks and best
    checkpoint; its logs hold each step once."""
    whole = train(_config(tmp_path / "whole", env_kwargs, 4 * ROLLOUT, check_every=ROLLOUT, check_episodes=4),
                  progress=False, checkpoint_every=ROLLOUT)
    assert [_steps(p) for p in checkpoints(whole)] == [3 * ROLLOUT, 4 * ROLLOUT]  # the last two
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    shutil.rmtree(checkpoints(killed)[-1])
    (killed / "model.zip").unlink()
    (killed / "metrics.json").unlink()
    (killed / CHECKPOINT_DIR / f".tmp-step-{4 * ROLLOUT}-1").mkdir()  # a checkpoint being written when it was killed
    for n, events in enumerate(sorted((killed / "tb").glob("events.out.tfevents*"))):  # written before the resumed part
        events.rename(events.with_name(f"events.out.tfevents.0000000000.killed.{n}"))

    resumed = train(_config(killed, env_kwargs, 4 * ROLLOUT, check_every=ROLLOUT, check_episodes=4), progress=False,
                    checkpoint_every=ROLLOUT, resume=True)
    assert _same_parameters(whole / "model.zip", resumed / "model.zip")
    assert ALGOS["ppo"].load(resumed / "model.zip").num_timesteps == 4 * ROLLOUT
    assert _same_parameters(whole / "best" / "model.zip", resumed / "best" / "model.zip")
    pd.testing.assert_frame_equal(read_episodes(whole), read_episodes(resumed))
    assert (resumed / "monitor" / f"from-{3 * ROLLOUT}" / "vec.monitor.csv").is_file()
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, resumed))
    assert a["env_steps"] == b["env_steps"] == 4 * ROLLOUT and b["wall_time_s"] > 0
    assert [c["steps"] for c in b["checks"]] == [c["steps"] for c in a["checks"]] == [ROLLOUT * k for k in range(1, 5)]
    assert [c["mean"] for c in b["checks"]] == [c["mean"] for c in a["checks"]]
    assert b["best_check"]["mean"] == a["best_check"]["mean"] and b["reference"] == a["reference"]
    assert b["checks"][2]["train_time_s"] == a["checks"][2]["train_time_s"]  # from the checkpoint
    assert b["checks"][3]["train_time_s"] > b["checks"][2]["train_time_s"]
    with open(resumed / "vecnormalize.pkl", "rb") as f, open(whole / "vecnormalize.pkl", "rb") as g:
        resumed_stats, whole_stats = pickle.load(f), pickle.load(g)
    assert (resumed_stats.obs_rms.mean == whole_stats.obs_rms.mean).all()
    assert resumed_stats.ret_rms.var == whole_stats.ret_rms.var
    assert [_steps(p) for p in checkpoints(resumed)] == [3 * ROLLOUT, 4 * ROLLOUT]
    assert not list((resumed / CHECKPOINT_DIR).glob(".tmp-*"))
    logged = pd.read_csv(resumed / "tb" / "progress.csv")["time/total_timesteps"].tolist()
    assert logged == [ROLLOUT * k for k in range(1, 5)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(resumed / "tb"))
    events.Reload()  # the killed part's event at 4 rollouts is purged: each step once
    assert [e.step for e in events.Scalars("rollout/ep_rew_mean")] == [ROLLOUT * k for k in range(1, 5)]


def test_another_env_resumes_with_the_checkpoint_model_and_statistics(tmp_path):
    """Envs other than FedPEAT-v1 (here CartPole) restart their episodes; the model, its step count and the
    VecNormalize statistics are the checkpoint's, and the run reaches its steps."""
    config = TrainConfig(env_id="CartPole-v1", n_envs=2, seed=0, timesteps=64, out_dir=str(tmp_path),
                         algo_kwargs={"n_steps": 16, "batch_size": 32, "n_epochs": 1})
    train(config, progress=False, checkpoint_every=32)
    last = checkpoints(tmp_path)[-1]
    assert _steps(last) == 64 and json.loads((last / "checkpoint.json").read_text())["exact"] is False
    model, _ = _restored_model(config, _make_venv(config, tmp_path / "monitor"), last, 64)
    saved = ALGOS["ppo"].load(last / "model.zip")
    assert model.num_timesteps == 64
    assert all(torch.equal(v, saved.policy.state_dict()[k]) for k, v in model.policy.state_dict().items())
    with open(last / "vecnormalize.pkl", "rb") as f:
        stats = pickle.load(f)
    assert (model.get_env().obs_rms.mean == stats.obs_rms.mean).all() and model.get_env().ret_rms.var == stats.ret_rms.var
    model.get_env().close()
    train(replace(config, timesteps=96), progress=False, checkpoint_every=32, resume=True)
    assert json.loads((tmp_path / "metrics.json").read_text())["env_steps"] == 96
    assert ALGOS["ppo"].load(tmp_path / "model.zip").num_timesteps == 96
    assert sorted(p.name for p in (tmp_path / "monitor" / "from-64").iterdir()) == ["0.monitor.csv", "1.monitor.csv"]


def test_train_cli_checkpoints_and_resumes(tmp_path):
    """``fedpeat train --checkpoint-every N --timesteps 2N``, then ``--resume --timesteps 3N``; the errors of
    --resume: another setting, fewer steps, a corrupt model file, no checkpoint."""
    n = 32  # two rollouts of 2 envs × 16 steps
    settings = ["--n-envs", "2", "--hyperparams", "n_steps:16", "batch_size:16", "n_epochs:1", "--env-option",
                "num_devices=3", "--env-option", "horizon=4"]

    def train_cli(*extra: str, out: Path = tmp_path):
        return runner.invoke(app, ["train", *settings, "--out", str(out), *extra])

    first = train_cli("--timesteps", str(2 * n), "--checkpoint-every", str(n))
    assert first.exit_code == 0, first.output
    assert [_steps(p) for p in checkpoints(tmp_path)] == [n, 2 * n]
    episodes_before = read_episodes(tmp_path)
    second = train_cli("--timesteps", str(3 * n), "--checkpoint-every", str(n), "--resume")
    assert second.exit_code == 0, second.output
    assert f'"env_steps": {3 * n}' in second.output  # the printed metrics.json
    assert json.loads((tmp_path / "metrics.json").read_text())["env_steps"] == 3 * n
    assert ALGOS["ppo"].load(tmp_path / "model.zip").num_timesteps == 3 * n
    assert json.loads((tmp_path / "config.json").read_text())["timesteps"] == 3 * n
    assert [_steps(p) for p in checkpoints(tmp_path)] == [2 * n, 3 * n]
    episodes = read_episodes(tmp_path)  # both parts, in time order
    assert len(episodes) > len(episodes_before) and episodes["timesteps"].iloc[-1] <= 3 * n
    pd.testing.assert_frame_equal(episodes.iloc[:len(episodes_before)], episodes_before)
    assert pd.read_csv(tmp_path / "tb" / "progress.csv")["time/total_timesteps"].tolist() == [n, 2 * n, 3 * n]

    def error(*extra: str, out: Path = tmp_path) -> str:
        result = train_cli(*extra, "--resume", out=out)
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())

    assert ("algo_kwargs.ent_coef: checkpoint 0.01, now 0.0; n_envs: checkpoint 2, now 4; seed: checkpoint 0, now 5 "
            "(only --timesteps may change)" in error("--n-envs", "4", "--seed", "5", "--hyperparams", "ent_coef:0.0"))
    assert f"has {3 * n} steps, more than timesteps={2 * n}" in error("--timesteps", str(2 * n))
    model = checkpoints(tmp_path)[-1] / "model.zip"
    model.write_bytes(model.read_bytes()[:-100])  # cut short
    corrupt = error("--timesteps", str(4 * n))
    assert f"checkpoint file {model} is corrupt" in corrupt and f"resume from {checkpoints(tmp_path)[0]}" in corrupt
    assert "no checkpoint in" in error("--timesteps", str(4 * n), out=tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()
    fresh = train_cli("--timesteps", str(n), "--checkpoint-every", "0")  # a new run, without checkpoints
    assert fresh.exit_code == 0 and not (tmp_path / CHECKPOINT_DIR).exists()
    assert "no checkpoint in" in error("--timesteps", str(4 * n))


def test_config_differences_name_fields_and_keys():
    saved = json.loads(json.dumps(TrainConfig(algo_kwargs={"n_steps": 16, "policy_kwargs": {"net_arch": (8,)}}).__dict__))
    assert config_differences(saved, TrainConfig(timesteps=5, out_dir="moved",
                                                 algo_kwargs={"n_steps": 16, "policy_kwargs": {"net_arch": (8,)}})) == []
    assert config_differences(saved, TrainConfig(algo="a2c", normalize=False, algo_kwargs={"n_steps": 8})) == [
        "algo: checkpoint 'ppo', now 'a2c'", "algo_kwargs.n_steps: checkpoint 16, now 8",
        "algo_kwargs.policy_kwargs: checkpoint {'net_arch': [8]}, now None", "normalize: checkpoint True, now False"]
