"""The RL clients users already have, driving the env by its id (the ``clients`` extra): torchrl (``GymEnv`` with
``check_env_specs``, single and ``num_envs``; ``GymWrapper`` on the vector env), skrl (PPO on the single and the
vector env), SB3 (``SubprocVecEnv`` by the plain id). Tiny scenarios (3 devices, horizon 5: ``env_kwargs``)."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import fedpeat_env  # noqa: F401  (registers the ids)
from fedpeat_env.dynamics import DEVICE_FEATURES
from fedpeat_env.reward import REWARD_INFO_KEYS

HORIZON = 5
ROUND = DEVICE_FEATURES * 3 + 1
"""Index of round / T in the observation of the 3-device scenario."""


@pytest.fixture(autouse=True)
def start_method():
    """torchrl sets multiprocessing's start method to spawn when imported: restore the suite's after each test."""
    before = multiprocessing.get_start_method(allow_none=True)
    yield
    multiprocessing.set_start_method(before, force=True)


@pytest.fixture(scope="module")
def torchrl_envs():
    torchrl_envs = pytest.importorskip("torchrl.envs", reason="torchrl is in the clients extra")
    return torchrl_envs


def _vector_env(mode: str, env_kwargs: dict) -> gym.vector.VectorEnv:
    """Two FedPEAT-v1 episodes in ``mode`` (the compiled vector env or gymnasium's sync wrapper), resetting finished
    episodes within the step (SAME_STEP: the mode torchrl and skrl read transitions in)."""
    if mode == "vector_entry_point":
        return gym.make_vec("FedPEAT-v1", num_envs=2, vectorization_mode=mode, autoreset_mode=AutoresetMode.SAME_STEP,
                            **env_kwargs)
    return gym.make_vec("FedPEAT-v1", num_envs=2, vectorization_mode=mode,
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **env_kwargs)


def test_torchrl_gymenv_makes_the_id_and_its_specs_hold(torchrl_envs, env_kwargs):
    env = torchrl_envs.GymEnv("FedPEAT-v1", **env_kwargs)  # torchrl passes frameskip, retries without it
    torchrl_envs.check_env_specs(env, seed=0)
    assert env.observation_spec["observation"].shape == (DEVICE_FEATURES * 3 + 5,)
    assert env.action_spec.shape == (3, 5)  # one-hot level per device
    rollout = env.rollout(HORIZON + 3, break_when_any_done=False)
    done = rollout["next", "done"].squeeze(-1)
    assert done.any() and torch.isfinite(rollout["next", "reward"]).all()
    first_end = int(done.nonzero()[0])
    assert rollout["observation"][first_end + 1, ROUND] == 0  # the next episode starts at round 0
    env.close()


TORCHRL_SCRIPT = """
import json, sys

import fedpeat_env  # a script that imports the package: spawned workers import it again, the ids exist there
from torchrl.envs import GymEnv, check_env_specs


def main():
    env = GymEnv("FedPEAT-v1", num_envs=2, **json.loads(sys.argv[1]))
    check_env_specs(env, seed=0)
    rollout = env.rollout({steps}, break_when_any_done=False)
    print("batch", list(rollout.batch_size), "ended", rollout["next", "done"].squeeze(-1).any(dim=1).tolist())
    env.close()


if __name__ == "__main__":
    main()
"""


@pytest.mark.slow  # spawned worker processes
def test_torchrl_gymenv_with_num_envs_by_the_plain_id_from_a_script(torchrl_envs, env_kwargs, tmp_path):
    """torchrl's ``num_envs`` runs gymnasium's AsyncVectorEnv in spawned workers, which import the main script:
    the plain id works from a script that imports fedpeat_env (run as users run it, in its own process)."""
    script = tmp_path / "torchrl_num_envs.py"
    script.write_text(TORCHRL_SCRIPT.format(steps=HORIZON + 1))
    done = subprocess.run([sys.executable, str(script), json.dumps(env_kwargs)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"batch [2, {HORIZON + 1}] ended [True, True]" in done.stdout


def test_torchrl_gymenv_with_num_envs_by_the_module_id_in_process(torchrl_envs, env_kwargs):
    """Where the main module cannot be imported again (a notebook, pytest), the id names its module:
    ``"fedpeat_env:FedPEAT-v1"`` makes gymnasium import fedpeat_env in each spawned worker."""
    env = torchrl_envs.GymEnv("fedpeat_env:FedPEAT-v1", num_envs=2, **env_kwargs)
    try:
        torchrl_envs.check_env_specs(env, seed=0)
        rollout = env.rollout(HORIZON + 1, break_when_any_done=False)
        assert rollout.batch_size == (2, HORIZON + 1)
        assert rollout["next", "done"].squeeze(-1).any(dim=1).all()  # both episodes ended within the horizon
        assert torch.isfinite(rollout["next", "reward"]).all()
    finally:
        env.close()


@pytest.mark.parametrize("mode", ["vector_entry_point", "sync"])
def test_torchrl_wraps_the_vector_env_with_the_reward_terms(torchrl_envs, env_kwargs, mode):
    env = torchrl_envs.GymWrapper(_vector_env(mode, env_kwargs))
    torchrl_envs.check_env_specs(env, seed=0)
    rollout = env.rollout(HORIZON + 2, break_when_any_done=False)
    assert rollout.batch_size == (2, HORIZON + 2)
    step = rollout["next"]
    terms = torch.stack([step[key] for key in REWARD_INFO_KEYS]).sum(0)  # info read as batched entries
    torch.testing.assert_close(terms.float(), step["reward"].squeeze(-1), rtol=1e-5, atol=1e-5)
    assert step["done"].squeeze(-1).any(dim=1).all()
    env.close()


def _skrl_ppo(env):
    """skrl's PPO with a MultiCategorical policy and a value MLP on a skrl-wrapped env, rollouts of 8 steps."""
    from skrl.agents.torch.ppo import PPO, PPO_CFG
    from skrl.memories.torch import RandomMemory
    from skrl.models.torch import DeterministicMixin, Model, MultiCategoricalMixin

    class Policy(MultiCategoricalMixin, Model):
        def __init__(self, observation_space, action_space, device):
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            MultiCategoricalMixin.__init__(self)
            self.net = torch.nn.Sequential(torch.nn.Linear(self.num_observations, 32), torch.nn.Tanh(),
                                           torch.nn.Linear(32, int(action_space.nvec.sum())))

        def compute(self, inputs, role=""):
            return self.net(inputs["observations"]), {}

    class Value(DeterministicMixin, Model):
        def __init__(self, observation_space, action_space, device):
            Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
            DeterministicMixin.__init__(self)
            self.net = torch.nn.Sequential(torch.nn.Linear(self.num_observations, 32), torch.nn.Tanh(),
                                           torch.nn.Linear(32, 1))

        def compute(self, inputs, role=""):
            return self.net(inputs["observations"]), {}

    models = {"policy": Policy(env.observation_space, env.action_space, env.device),
              "value": Value(env.observation_space, env.action_space, env.device)}
    return PPO(models=models, memory=RandomMemory(memory_size=8, num_envs=env.num_envs, device=env.device),
               observation_space=env.observation_space, action_space=env.action_space, device=env.device,
               cfg=PPO_CFG(rollouts=8, learning_epochs=1, mini_batches=1))


@pytest.mark.parametrize("vectorized", [False, True])
def test_skrl_ppo_trains_on_the_env_and_stores_real_rounds(env_kwargs, vectorized):
    pytest.importorskip("skrl", reason="skrl is in the clients extra")
    from skrl.envs.wrappers.torch import wrap_env
    from skrl.trainers.torch import SequentialTrainer

    made = _vector_env("vector_entry_point", env_kwargs) if vectorized else gym.make("FedPEAT-v1", **env_kwargs)
    env = wrap_env(made, wrapper="gymnasium")
    assert env.num_envs == (2 if vectorized else 1)
    agent = _skrl_ppo(env)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    trainer = SequentialTrainer(env=env, agents=agent, cfg={"timesteps": 16, "headless": True, "disable_progressbar": True,
                                                            "close_environment_at_exit": False})
    trainer.train()
    env.close()
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters()))  # it learned
    rewards = agent.memory.get_tensor_by_name("rewards")  # the last rollout: 8 steps, crossing an episode's end
    ended = agent.memory.get_tensor_by_name("terminated") | agent.memory.get_tensor_by_name("truncated")
    assert ended.any() and torch.isfinite(rewards).all()
    assert (rewards != 0).all()  # every stored transition is a played round (no reward-0 autoreset steps)


def test_sb3_subproc_vec_env_makes_the_plain_id_in_its_workers(env_kwargs):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    venv = make_vec_env("FedPEAT-v1", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv, env_kwargs=env_kwargs)
    try:
        obs = venv.reset()
        assert obs.shape == (2, DEVICE_FEATURES * 3 + 5)
        ended = np.zeros(2, dtype=bool)
        for _ in range(HORIZON):
            obs, rewards, dones, infos = venv.step(np.ones((2, 3), dtype=np.int64))
            assert np.isfinite(rewards).all() and all(set(REWARD_INFO_KEYS) <= set(info) for info in infos)
            for i in np.flatnonzero(dones):
                assert infos[i]["terminal_observation"][ROUND] > 0 and obs[i, ROUND] == 0  # SB3's autoreset
            ended |= dones
        assert ended.all()
    finally:
        venv.close()
