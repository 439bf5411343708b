"""The device-set policy: SB3's distribution at the training N, any N at evaluation, devices as a set."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch as th

import fedpeat_env  # noqa: F401
from agents import evaluate
from agents.train import TrainConfig, load_policy, train
from experiments.cli import app
from fedpeat_env.dynamics import DEVICE_FEATURES
from tests.helpers import cli_runner

FAST = {"n_steps": 16, "batch_size": 32, "n_epochs": 1}


@pytest.fixture(scope="module")
def agents(tmp_path_factory):
    out = {}
    for algo in ("ppo", "maskable-ppo"):
        path = tmp_path_factory.mktemp(algo)
        train(TrainConfig(algo=algo, policy="device-set", env_kwargs={"num_devices": 4, "horizon": 4}, timesteps=256,
                          n_envs=4, out_dir=str(path), algo_kwargs=FAST), progress=False)
        out[algo] = path
    return out


@pytest.mark.parametrize("algo", ["ppo", "maskable-ppo"])
def test_at_the_training_n_it_acts_as_sb3_predicts(agents, algo):
    policy = load_policy(agents[algo])
    env = gym.make("FedPEAT-v1", num_devices=4, horizon=4)
    obs, _ = env.reset(seed=3)
    for _ in range(4):
        kwargs = {"action_masks": env.unwrapped.action_masks()} if policy.masked else {}
        expected, _ = policy.model.predict(obs, deterministic=True, **kwargs)
        action = policy.act(obs, env.unwrapped)
        assert np.array_equal(action, expected)
        obs, *_ = env.step(action)


def test_any_number_of_devices_and_devices_as_a_set(agents):
    policy = load_policy(agents["maskable-ppo"])
    for n in (2, 7, 30):
        df = evaluate(policy, env_kwargs={"num_devices": n, "horizon": 4}, seeds=[0, 1])
        assert len(df) == 2 and (df["memory_violations"] == 0).all()  # masks respected at every N
    env = gym.make("FedPEAT-v1", num_devices=6, horizon=4)
    obs, _ = env.reset(seed=0)
    order = np.array([3, 0, 5, 1, 4, 2])
    F = DEVICE_FEATURES
    devices = obs[: 6 * F].reshape(6, F)
    permuted = np.concatenate([devices[order].ravel(), obs[6 * F:]])
    net = policy.model.policy

    def codes(x):  # each device's code (what its logits come from), (N, hidden)
        with th.no_grad():
            return net.mlp_extractor.forward_actor(th.as_tensor(x[None], dtype=th.float32)).reshape(len(x) // F, -1)

    assert not th.allclose(codes(obs)[0], codes(obs)[1])  # devices differ
    assert th.allclose(codes(permuted), codes(obs)[order], atol=1e-6)  # permuting the devices permutes their codes
    act = net.device_actions
    assert np.array_equal(act(permuted)[0], act(obs)[0][order])
    # empty slots (an episode with fewer devices) change nothing for the devices present
    padded = np.concatenate([devices.ravel(), np.tile([0, 0, -1] + [0] * (F - 3), 2), obs[6 * F:]]).astype(np.float32)
    assert th.allclose(codes(padded)[:6], codes(obs), atol=1e-6)


def test_an_mlp_policy_refuses_another_number_of_devices_and_the_cli_flag(agents, tmp_path):
    runner = cli_runner()
    out = tmp_path / "mlp"
    result = runner.invoke(app, ["train", "--policy", "device-set", "--timesteps", "64", "--n-envs", "2", "--hyperparams",
                                 "n_steps:16 batch_size:16 n_epochs:1", "--out", str(out), "--env-option", "num_devices=3",
                                 "--env-option", "horizon=4"])
    assert result.exit_code == 0, result.output
    assert TrainConfig(**json.loads((out / "config.json").read_text())).policy == "device-set"
    bigger = runner.invoke(app, ["evaluate", "--policy", str(out), "--seeds", "1", "--env-option", "num_devices=8"])
    assert bigger.exit_code == 0 and "mean return" in bigger.output
    bad = runner.invoke(app, ["train", "--policy", "transformer", "--out", str(tmp_path / "never")])
    assert bad.exit_code == 2 and "--policy must be one of ('mlp', 'device-set')" in " ".join(bad.output.split())
    mlp = tmp_path / "flat"
    train(TrainConfig(env_kwargs={"num_devices": 3, "horizon": 4}, timesteps=64, n_envs=2, out_dir=str(mlp),
                      algo_kwargs=FAST), progress=False)
    with pytest.raises(ValueError, match="only a device-set policy .* runs at another num_devices"):
        evaluate(load_policy(mlp), env_kwargs={"num_devices": 5, "horizon": 4}, seeds=[0])
