"""A multi-agent recipe on ``fedpeat_env.parallel_env``: parameter-shared PPO over the devices, and its comparison
with the single-agent device-set policy on the same episodes.

Training (``train_marl``, ``fedpeat marl train``): SuperSuit turns the PettingZoo env into a vector env whose
sub-envs are the agents (``pettingzoo_env_to_vec_env_v1``), concatenates ``n_envs`` copies of it
(``concat_vec_envs_v1``), and SB3's PPO trains one MLP on the experience of every agent: each device decides from its
own features and the round's (independent learners sharing parameters, the usual baseline of cooperative MARL), and
every agent receives the shared reward. SB3 counts agent-steps: ``timesteps`` / N rounds are played.

Evaluation (``MARLPolicy``): the trained network acts for every device of a single-agent ``FedPEAT-v1`` episode, so
``agents.evaluate.evaluate`` runs it beside any other policy on the same seeds (common random numbers);
``compare_marl`` reports both mean returns and their paired difference.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv, VecMonitor, VecNormalize
from supersuit.vector.sb3_vector_wrapper import SB3VecEnvWrapper

import fedpeat_env
from agents.hyperparams import algo_constructor_kwargs, split_hyperparams
from agents.policy import Policy, as_fedpeat
from agents.stats import bootstrap_ci, paired_difference
from fedpeat_env.config import EnvConfig
from fedpeat_env.parallel import agent_observations, stacked_joint_action

MARL_LABEL = "marl (shared PPO)"
"""The MARL run's row in ``compare_marl``'s table."""
MARL_DEFAULTS = {"n_steps": 64, "batch_size": 512, "learning_rate": 3e-4, "ent_coef": 0.01}
"""PPO settings of the recipe: 64-round rollouts of every agent of ``n_envs`` episodes, minibatches of 512
agent-steps."""


@dataclass
class MARLConfig:
    """Settings of one parameter-shared PPO run (saved as ``config.json``)."""

    timesteps: int = 200_000
    """Agent-steps over all agents and episodes (rounds played: timesteps / num_devices)."""
    n_envs: int = 8
    """Episodes played at once (each contributes num_devices agents to every rollout)."""
    seed: int = 0
    """Seeds the episodes (copy i from seed + i), the network and torch."""
    env_kwargs: dict = field(default_factory=dict)
    """Env options (the fields of ``fedpeat_env.EnvConfig``)."""
    algo_kwargs: dict = field(default_factory=lambda: dict(MARL_DEFAULTS))
    """Constructor arguments of SB3's PPO."""
    normalize_reward: bool = True
    """Scale rewards by a running estimate of the return's spread (VecNormalize, observations untouched)."""
    torch_threads: int = 1
    """torch intra-op threads (1 is fastest for small MLPs)."""
    out_dir: str = "runs/marl"
    """Where model.zip, config.json and metrics.json go."""

    def __post_init__(self) -> None:
        for name in ("timesteps", "n_envs", "torch_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        EnvConfig.from_kwargs(**self.env_kwargs)  # unknown or invalid options: ValueError naming them
        trainer, _ = split_hyperparams("ppo", PPO, self.algo_kwargs)  # unknown keys, wrong or non-finite values
        if trainer:
            raise ValueError(f"algo_kwargs must be PPO arguments; {sorted(trainer)} are settings of the trainer "
                             "(timesteps, n_envs: their own options)")
        algo_constructor_kwargs(self.algo_kwargs)  # a bad lin_<x> schedule


class _SeededSB3VecEnv(SB3VecEnvWrapper):
    """SuperSuit's SB3 adapter with SB3's seeding: ``seed(s)`` applies at the next reset, episode copy i from s + i
    (SuperSuit's own adapter forwards ``seed`` to a vector env that has none, which fails as SB3 seeds its env)."""

    _pending_seed: int | None = None

    def seed(self, seed: int | None = None) -> list[None]:
        self._pending_seed = seed
        return [None] * self.num_envs

    def get_attr(self, attr_name: str, indices=None) -> list:
        """SuperSuit's attribute lookup, except ``render_mode``: one per sub-env from this wrapper (SuperSuit's
        concatenated env has none to give, and SB3's wrappers warned that it was missing)."""
        if attr_name == "render_mode":
            return [self.render_mode] * self.num_envs
        return super().get_attr(attr_name, indices)

    def reset(self, seed: int | None = None, options: dict | None = None) -> np.ndarray:
        seed, self._pending_seed = (self._pending_seed if seed is None else seed), None
        observations, self.reset_infos = self.venv.reset(seed=seed, options=options)
        return observations


def make_marl_env(n_envs: int, seed: int | None = None, **env_kwargs):
    """An SB3 ``VecEnv`` of ``n_envs`` × N agents: ``n_envs`` episodes of ``fedpeat_env.parallel_env(**env_kwargs)``,
    their agents as sub-envs (SuperSuit), seeded at the first reset (episode copy i from ``seed`` + i)."""
    import supersuit as ss

    agents = ss.pettingzoo_env_to_vec_env_v1(fedpeat_env.parallel_env(**env_kwargs))
    venv = _SeededSB3VecEnv(ss.concat_vec_envs_v1(agents, n_envs, num_cpus=0, base_class="gymnasium"))
    venv.seed(seed)
    return venv


def train_marl(config: MARLConfig, progress: bool = False) -> Path:
    """Train parameter-shared PPO with ``config``; writes ``model.zip``, ``config.json`` and ``metrics.json`` (wall
    time, agent-steps/s, the mean episode return of the last rollouts) into ``config.out_dir`` and returns it."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.torch_threads)
    venv: VecEnv = VecMonitor(make_marl_env(config.n_envs, config.seed, **config.env_kwargs))
    if config.normalize_reward:
        venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=config.algo_kwargs.get("gamma", 0.99))
    model = PPO("MlpPolicy", venv, seed=config.seed, device="cpu", verbose=0,
                **algo_constructor_kwargs(config.algo_kwargs))
    start = time.perf_counter()
    model.learn(total_timesteps=config.timesteps, progress_bar=progress)
    wall = time.perf_counter() - start
    model.save(out / "model.zip")
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    assert model.ep_info_buffer is not None  # set by learn
    returns = [info["r"] for info in model.ep_info_buffer]
    metrics = {"wall_time_s": wall, "agent_steps": int(model.num_timesteps),
               "agent_steps_per_s": model.num_timesteps / wall,
               "recent_episode_return": float(np.mean(returns)) if returns else None}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    venv.close()
    return out


class MARLPolicy:
    """The trained shared network acting for every device of a single-agent FedPEAT episode (``agents.policy.Policy``):
    each device's action from its own observation slice and the round features (``fedpeat_env.parallel``), greedy.

    :param model: the trained PPO (``MARLPolicy.load(out_dir)``).
    """

    def __init__(self, model: PPO) -> None:
        self.model = model

    @classmethod
    def load(cls, out_dir: str | Path) -> MARLPolicy:
        out = Path(out_dir)
        if not (out / "config.json").is_file() or not (out / "model.zip").is_file():
            raise ValueError(f"{out} is not a trained MARL run's directory (it needs config.json and model.zip)")
        return cls(PPO.load(out / "model.zip", device="cpu"))

    def reset(self, env: gym.Env) -> None:
        pass

    def act(self, obs: np.ndarray, env: gym.Env) -> np.ndarray:
        per_device = agent_observations(obs, as_fedpeat(env).config.num_devices)
        actions, _ = self.model.predict(per_device, deterministic=True)
        return stacked_joint_action(actions)


def marl_env_kwargs(out_dir: str | Path) -> dict:
    """The env options a MARL run was trained with."""
    return json.loads((Path(out_dir) / "config.json").read_text())["env_kwargs"]


def agent_label(agent_dir: str | Path) -> str:
    """How ``compare_marl`` names a single-agent run: its algorithm and policy, e.g. ``single-agent ppo (device-set)``."""
    from agents.train import DEVICE_SET

    config = json.loads((Path(agent_dir) / "config.json").read_text())
    return f"single-agent {config['algo']} ({'device-set' if config['policy'] == DEVICE_SET else 'mlp'})"


def _check_agent_fits(agent_dir: str | Path, options: dict) -> None:
    """``ValueError`` before any episode if the agent of ``agent_dir`` cannot act in episodes with ``options``: a flat
    MLP acts only at the number of devices it was trained at (a device-set policy at any)."""
    from agents.train import DEVICE_SET

    config = json.loads((Path(agent_dir) / "config.json").read_text())
    trained, wanted = (EnvConfig.from_kwargs(**kw).num_devices for kw in (config["env_kwargs"], options))
    if config["policy"] != DEVICE_SET and trained != wanted:
        raise ValueError(f"agent {agent_dir} is an mlp policy trained at num_devices={trained}; the compared episodes "
                         f"have num_devices={wanted} (train it with --policy device-set, which acts at any number)")


def compare_marl(marl_dir: str | Path, agent_dir: str | Path, seeds, episodes_per_seed: int = 1,
                 checkpoint: str = "final", baselines: tuple[str, ...] = ("fixed-1",),
                 env_kwargs: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """The MARL run of ``marl_dir``, the single-agent run of ``agent_dir`` (a device-set policy acts at the MARL run's
    N; a flat MLP must have been trained at it) and ``baselines`` on the same episodes (``seeds`` ×
    ``episodes_per_seed``, common random numbers), on the env options of the MARL run (or ``env_kwargs``). Returns
    (one row per policy, the MARL run first and the agent (``agent_label``) second: mean return and its 95% bootstrap
    CI, episodes; the paired difference MARL − agent: mean, CI low, CI high, episodes, agent: the agent's label)."""
    from agents import evaluate, make_policy
    from agents.train import load_policy

    marl = MARLPolicy.load(marl_dir)
    options = marl_env_kwargs(marl_dir) if env_kwargs is None else env_kwargs
    _check_agent_fits(agent_dir, options)
    label = agent_label(agent_dir)
    policies: dict[str, Policy] = {MARL_LABEL: marl, label: load_policy(agent_dir, checkpoint=checkpoint)}
    policies |= {name: make_policy(name) for name in baselines}
    results = {name: evaluate(policy, "FedPEAT-v1", options, seeds, episodes_per_seed)
               for name, policy in policies.items()}
    rows = []
    for name, df in results.items():
        low, high = bootstrap_ci(df["return"])
        rows.append({"policy": name, "mean return": float(df["return"].mean()), "CI low": low, "CI high": high,
                     "episodes": len(df)})
    diff = paired_difference(results[MARL_LABEL], results[label])
    return pd.DataFrame(rows), {**diff, "agent": label}
