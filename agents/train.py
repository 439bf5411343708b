"""Train an SB3 agent on a FedPEAT env and load it back as a ``Policy``.

``train`` writes into ``out_dir``: ``model.zip``, ``vecnormalize.pkl`` (observation and reward statistics),
``config.json`` (the ``TrainConfig``), ``metrics.json`` (wall time, env steps/s, ``env_time_share``: the share of
wall time spent inside ``env.step``), ``monitor/*.monitor.csv`` (episodes; a resumed part's in
``monitor/from-<steps>/``), ``tb/`` (tensorboard events and ``progress.csv``), with ``check_every`` ``best/`` and
with ``checkpoint_every`` ``checkpoints/`` (``agents.checkpoint``; ``train(..., resume=True)`` continues from them).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, cast

import gymnasium as gym
import pandas as pd
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor, VecNormalize

import fedpeat_env  # noqa: F401  (registers the FedPEAT ids)
from agents.baselines import make_policy
from agents.checkpoint import (
    BEST_DIR,
    CHECKPOINT_DIR,
    MONITOR_DIR,
    VECNORMALIZE,
    Checkpointer,
    last_checkpoint,
    read_state,
    resumed_logger,
    rewind_outputs,
    set_env_state,
)
from agents.device_set import DeviceSetPolicy, MaskableDeviceSetPolicy
from agents.evaluate import VALIDATION_SEED, evaluate
from agents.hyperparams import algo_constructor_kwargs, load_hyperparams, split_hyperparams
from agents.policy import SB3Policy
from agents.stats import paired_difference
from agents.vec import FedPEATSB3VecEnv

Algo = Literal["ppo", "a2c", "maskable-ppo"]
ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "maskable-ppo": MaskablePPO}
DEVICE_SET = "device-set"
POLICIES = {"mlp": "MlpPolicy", DEVICE_SET: DEVICE_SET}
"""``fedpeat train --policy`` names → ``TrainConfig.policy``."""


@dataclass
class TrainConfig:
    """Settings of one training run (saved as ``config.json``)."""

    algo: Algo = "ppo"
    """A name of ``ALGOS`` (maskable-ppo: sb3-contrib, uses the env's ``action_masks()``)."""
    env_id: str = "FedPEAT-v1"
    """Registered Gymnasium id."""
    env_kwargs: dict = field(default_factory=dict)
    """Keyword arguments of ``gymnasium.make`` (the env's ``EnvConfig`` fields)."""
    timesteps: int = 100_000
    """Total env steps over all parallel envs."""
    seed: int = 0
    """Seeds the envs, the model and torch."""
    n_envs: int = 8
    """Parallel envs (FedPEAT-v1: one batched numpy env; other ids: DummyVecEnv in one process)."""
    out_dir: str = "runs/agent"
    """Where model, statistics, config, metrics and logs go."""
    algo_kwargs: dict = field(default_factory=dict)
    """Extra constructor arguments of the algorithm (e.g. n_steps, learning_rate); unknown names are refused."""
    torch_threads: int = 1
    """torch intra-op threads (1 is fastest for small MLP policies: with 2 threads SB3 PPO ran 5× slower here)."""
    policy: str = "MlpPolicy"
    """SB3 policy: "MlpPolicy" (a flat MLP, the "mlp" of ``fedpeat train --policy``) or "device-set" (one network
    shared by the devices, ``agents.device_set``; runs at any number of devices)."""
    normalize: bool = True
    """VecNormalize the observations and rewards (statistics saved as ``vecnormalize.pkl``)."""
    check_every: int = 0
    """Every this many env steps, evaluate the current policy against the best static policy on validation episodes
    (``BaselineCheck``; 0: never). ``metrics.json`` then reports the training time to beat it."""
    check_episodes: int = 500
    """Validation episodes of each check (seeds from ``VALIDATION_SEED``, apart from the benchmark's). 500: a paired
    difference with the best fixed policy has a per-episode SD of ≈ 1.5–1.8 (the rare episodes that reach the target
    under one policy and not the other differ by ≈ 17), so 30 episodes gave CIs of ±1.2–1.7 and picked checkpoints by
    noise; 500 give ≈ ±0.15. A check of 500 episodes takes ≈ 0.5 s for the tuned PPO, ≈ 5 s for MaskablePPO (masks at
    every step)."""

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {tuple(ALGOS)}, got {self.algo!r}")
        for name in ("timesteps", "n_envs", "torch_threads", "check_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.check_every < 0:
            raise ValueError(f"check_every must be >= 0 (0: no checks), got {self.check_every}")
        trainer, _ = split_hyperparams(self.algo, ALGOS[self.algo], self.algo_kwargs)
        algo_constructor_kwargs(self.algo_kwargs)  # a bad schedule string fails here, before training
        if trainer:
            raise ValueError(f"algo_kwargs must hold algorithm arguments only; {sorted(trainer)} are TrainConfig fields")

    @classmethod
    def from_hyperparams(cls, algo: str = "ppo", env_id: str = "FedPEAT-v1", overrides: dict | None = None,
                         hyperparams_path: Path | None = None, **fields) -> TrainConfig:
        """Settings from ``agents/hyperparams/<algo>.yml`` (the ``env_id`` entry, RL Zoo format), then ``overrides`` (the
        same keys, e.g. from ``--hyperparams``), then explicit ``fields`` (None values are ignored)."""
        if algo not in ALGOS:
            raise ValueError(f"algo must be one of {tuple(ALGOS)}, got {algo!r}")
        params = {**load_hyperparams(algo, env_id, hyperparams_path), **(overrides or {})}
        trainer, algo_kwargs = split_hyperparams(algo, ALGOS[algo], params)
        settings: dict[str, Any] = {"n_envs": trainer.get("n_envs"), "timesteps": trainer.get("n_timesteps"),
                                    "policy": trainer.get("policy"), "normalize": trainer.get("normalize")}
        settings = {k: (int(v) if k in ("n_envs", "timesteps") else v) for k, v in settings.items() if v is not None}
        settings |= {k: v for k, v in fields.items() if v is not None}
        return cls(algo=cast(Algo, algo), env_id=env_id, algo_kwargs=algo_kwargs, **settings)  # a name of ALGOS


CHECK_REFERENCE = "best-static"
"""The policy the training checks compare with: the best static rule (``agents.static``), the baseline to beat."""


class BaselineCheck(BaseCallback):
    """Every ``config.check_every`` env steps: the current policy and the best static policy (``CHECK_REFERENCE``,
    searched on validation episodes once) on ``config.check_episodes`` validation episodes; records the paired
    difference (``eval/paired_diff_mean`` and its CI in the logs, as SB3's ``EvalCallback`` logs ``eval/``) and the
    training time and steps at which its 95% CI first lies above 0. The policy of the check with the best mean
    difference is kept in ``out_dir/best/`` (model and VecNormalize statistics, as SB3's ``EvalCallback`` keeps
    ``best_model``; ``load_policy(..., checkpoint="best")``). Check time (``check_time_s``: the checks and the reference's
    own episodes) is not counted as training time. ``state``/``load_state`` carry the checks over a resumed run."""

    def __init__(self, config: TrainConfig, venv) -> None:
        super().__init__()
        self.config, self.venv = config, venv
        self.seeds = [VALIDATION_SEED + s for s in range(config.check_episodes)]
        self.baseline: pd.DataFrame | None = None
        self.check_time_s, self.started = 0.0, 0.0
        self.last_check = 0
        self.beaten_at: dict[str, float] | None = None
        self.history: list[dict] = []
        self.best: dict | None = None
        self.trained_before_s = 0.0  # training time before this process (a resumed run)

    def state(self) -> dict:
        """What a checkpoint keeps to continue the checks (JSON): the checks so far, the best and the first that beat
        the reference, and the check and training time so far."""
        return {"reference": CHECK_REFERENCE, "last_check": self.last_check, "beaten_at": self.beaten_at,
                "history": self.history, "best": self.best, "check_time_s": self.check_time_s,
                "train_time_s": time.perf_counter() - self.started - self.check_time_s}

    def load_state(self, state: dict) -> None:
        """Continue from ``state`` (before training starts); the reference's episodes are played again."""
        self.last_check, self.beaten_at, self.history = state["last_check"], state["beaten_at"], list(state["history"])
        self.best, self.check_time_s, self.trained_before_s = state["best"], state["check_time_s"], state["train_time_s"]

    def _on_training_start(self) -> None:
        began = time.perf_counter()  # the reference's search and episodes are check time (again in each resumed part)
        self.baseline = evaluate(make_policy(CHECK_REFERENCE), self.config.env_id, self.config.env_kwargs, self.seeds)
        self.check_time_s += time.perf_counter() - began
        self.started = time.perf_counter() - self.trained_before_s - self.check_time_s

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last_check < self.config.check_every:
            return True
        self.last_check = self.num_timesteps
        began = time.perf_counter()
        policy = SB3Policy(self.model, self.venv if self.config.normalize else None)
        diff = paired_difference(evaluate(policy, self.config.env_id, self.config.env_kwargs, self.seeds), self.baseline)
        self.check_time_s += time.perf_counter() - began
        trained_s = time.perf_counter() - self.started - self.check_time_s
        self.history.append({"steps": self.num_timesteps, "train_time_s": trained_s, **diff})
        for key in ("mean", "CI low", "CI high"):
            self.logger.record(f"eval/paired_diff_{key.replace(' ', '_').lower()}", diff[key])
        if self.beaten_at is None and diff["CI low"] > 0:
            self.beaten_at = {"steps": self.num_timesteps, "train_time_s": trained_s}
        if self.best is None or diff["mean"] > self.best["mean"]:  # the best checkpoint on the validation episodes
            self.best = {"steps": self.num_timesteps, "train_time_s": trained_s, **diff}
            best_dir = Path(self.config.out_dir) / BEST_DIR
            best_dir.mkdir(parents=True, exist_ok=True)
            self.model.save(best_dir / "model.zip")
            if self.config.normalize:
                self.venv.save(str(best_dir / "vecnormalize.pkl"))
        return True

    def report(self) -> dict:
        return {"reference": CHECK_REFERENCE, "check_time_s": self.check_time_s,
                "steps_to_beat": None if self.beaten_at is None else self.beaten_at["steps"],
                "time_to_beat_s": None if self.beaten_at is None else self.beaten_at["train_time_s"],
                "best_check": self.best, "checks": self.history}


class EnvMetricsLogger(BaseCallback):
    """After every rollout, the means over the episodes that ended in it (``FedPEATSB3VecEnv.episode_metrics``) under
    ``env/`` in the logs: each reward term's episode sum, the episode's latency, exchanges, memory violations,
    participants and final perplexity (SB3's own keys are ``rollout/``, ``train/``, ``time/``)."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        for key, value in self.training_env.env_method("episode_metrics", indices=[0])[0].items():
            self.logger.record(f"env/{key}", value)


class StepTimer(gym.Wrapper):
    """Accumulates the wall time spent in ``step`` (``step_time_s``) and the number of steps."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.step_time_s, self.steps = 0.0, 0

    def step(self, action):
        start = time.perf_counter()
        result = self.env.step(action)
        self.step_time_s += time.perf_counter() - start
        self.steps += 1
        return result


def train(config: TrainConfig, progress: bool = True, checkpoint_every: int = 0, resume: bool = False) -> Path:
    """Train ``config.algo`` and save everything into ``config.out_dir``; returns that directory.

    :param checkpoint_every: every this many env steps (at the next rollout boundary) and at the end of training, a
        checkpoint in ``out_dir/checkpoints/`` (``agents.checkpoint``; the last two are kept). 0: none, and those of
        an earlier run are removed.
    :param resume: continue the run in ``out_dir`` from its last checkpoint to ``config.timesteps``, ending with the
        outputs of an uninterrupted run (``metrics.json`` over the whole run, ``best/``, the monitor files, progress.csv
        and tensorboard continued). ``ValueError`` if there is no checkpoint, a file of it is corrupt, or ``config``
        differs from its settings in more than a larger ``timesteps``. On FedPEAT-v1 the continuation is exact: the
        episodes in progress, VecNormalize's statistics and running returns and the global random states are restored,
        so the model equals an uninterrupted run's (same ``timesteps``: the schedules depend on it). Other env ids start
        new episodes (seeded ``seed`` + steps). Logs differ: ``time/iterations`` and ``time/fps`` restart, and the
        ``train/`` losses of the update before the checkpoint are not logged.
    """
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 (0: no checkpoints), got {checkpoint_every}")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.torch_threads)
    saved = last_checkpoint(config) if resume else None  # validated before any file changes
    venv = _make_venv(config, rewind_outputs(out, *saved) if saved else _fresh_outputs(out))
    if saved is None:
        model, rng, before = _new_model(config, venv), None, {"wall_time_s": 0.0, "env_time_s": 0.0, "env_steps": 0}
        model.set_logger(configure(str(out / "tb"), ["csv", "tensorboard"]))
    else:
        path, meta = saved
        model, rng, before = *_restored_model(config, venv, path, meta["steps"]), meta["totals"]
        model.set_logger(resumed_logger(out / "tb", meta["steps"]))
    venv = model.get_env()
    check = BaselineCheck(config, venv) if config.check_every else None
    if check is not None and saved is not None:
        check.load_state(saved[1]["check"])
    checks_before = check.check_time_s if check else 0.0

    def totals() -> dict:
        """Training time (without checks), env time and env steps of the run so far, over its resumed parts."""
        checks_s = (check.check_time_s if check else 0.0) - checks_before
        return {"wall_time_s": before["wall_time_s"] + time.perf_counter() - start - checks_s,
                "env_time_s": before["env_time_s"] + float(sum(venv.get_attr("step_time_s"))),
                "env_steps": before["env_steps"] + int(sum(venv.get_attr("steps")))}

    def checkpoint_meta() -> dict:
        return {"config": asdict(config), "check": check.state() if check else None, "totals": totals()}

    checkpointer = Checkpointer(out, checkpoint_every, checkpoint_meta, rng) if checkpoint_every or rng else None
    callbacks = [c for c in (check, EnvMetricsLogger() if config.env_id == "FedPEAT-v1" else None, checkpointer)
                 if c is not None]  # the Checkpointer last: it restores the random states when training starts
    start = time.perf_counter()
    model.learn(total_timesteps=config.timesteps - model.num_timesteps, progress_bar=progress, callback=callbacks,
                reset_num_timesteps=saved is None)
    done = totals()
    model.save(out / "model.zip")
    if config.normalize:
        venv.save(str(out / "vecnormalize.pkl"))
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    metrics = {"wall_time_s": done["wall_time_s"], "env_steps": done["env_steps"],
               "steps_per_s": done["env_steps"] / done["wall_time_s"], "env_time_s": done["env_time_s"],
               "env_time_share": done["env_time_s"] / done["wall_time_s"], **(check.report() if check else {})}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if not checkpoint_every:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)  # older than the final model: not to be resumed
    venv.close()
    return out


def _fresh_outputs(out: Path) -> Path:
    """Remove a previous run's episodes (they would join the curve), best checkpoint (not this run's) and checkpoints
    (not to be resumed); returns the monitor directory."""
    monitor = out / MONITOR_DIR
    monitor.mkdir(exist_ok=True)
    for stale in monitor.rglob("*.monitor.csv"):
        stale.unlink()
    for part in monitor.glob("from-*"):
        shutil.rmtree(part)
    shutil.rmtree(out / BEST_DIR, ignore_errors=True)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return monitor


def _make_venv(config: TrainConfig, monitor_dir: Path) -> VecEnv:
    """The training envs with their episode files in ``monitor_dir`` (not normalised)."""
    if config.env_id == "FedPEAT-v1":  # batched surrogate: one numpy step for all n_envs
        return VecMonitor(FedPEATSB3VecEnv(config.n_envs, seed=config.seed, **config.env_kwargs),
                          filename=str(monitor_dir / "vec"))
    # other ids (FedPEAT-Engine-v1): one Python env each, timed
    return make_vec_env(partial(gym.make, config.env_id), n_envs=config.n_envs, seed=config.seed,
                        env_kwargs=config.env_kwargs, monitor_dir=str(monitor_dir), wrapper_class=StepTimer,
                        vec_env_cls=DummyVecEnv)


def _new_model(config: TrainConfig, venv: VecEnv):
    device_set = config.policy == DEVICE_SET
    if config.normalize:  # per-dimension observation statistics would fix N: not for the device-set policy
        venv = VecNormalize(venv, norm_obs=not device_set, norm_reward=True, gamma=config.algo_kwargs.get("gamma", 0.99))
    policy = (MaskableDeviceSetPolicy if config.algo == "maskable-ppo" else DeviceSetPolicy) if device_set else config.policy
    return ALGOS[config.algo](policy, venv, seed=config.seed, device="cpu", verbose=0,
                             **algo_constructor_kwargs(config.algo_kwargs))


def _restored_model(config: TrainConfig, venv: VecEnv, path: Path, steps: int) -> tuple[BaseAlgorithm, Any]:
    """(model on ``venv`` with the checkpoint ``path``'s parameters, statistics and episodes, its random states)."""
    state = read_state(path)
    if config.normalize:
        venv = VecNormalize.load(str(path / VECNORMALIZE), venv)
    model = ALGOS[config.algo].load(path / "model.zip", env=venv, device="cpu", force_reset=state["env"] is None)
    if state["env"] is not None:  # load seeded the envs: the episodes in progress continue instead
        set_env_state(venv, state["env"])
    else:
        venv.seed(config.seed + steps)  # new episodes, not those the run began with
    return model, state["rng"]


CHECKPOINTS = ("final", "best")


def checked_checkpoint(out_dir: str | Path, checkpoint: str = "final") -> Path:
    """The directory holding ``checkpoint`` ("final" or "best") of the agent trained in ``out_dir``, without loading
    it; ``ValueError`` naming what is missing (``load_policy``'s checks, for commands that check before they work)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    out = Path(out_dir)
    if not (out / "config.json").is_file() or not (out / "model.zip").is_file():
        raise ValueError(f"{out} is not a trained agent's directory (it needs config.json and model.zip)")
    if checkpoint == "best":
        if not (out / BEST_DIR / "model.zip").is_file():
            raise ValueError(f"checkpoint 'best' needs a run trained with check_every > 0; {out} has no {BEST_DIR}/")
        out = out / BEST_DIR
    return out


def load_policy(out_dir: str | Path, deterministic: bool = True, checkpoint: str = "final") -> SB3Policy:
    """The policy saved by ``train`` (``checkpoint`` "final": at the end of training; "best": the best on the
    validation checks, ``--check-every``), with its VecNormalize observation statistics frozen (training=False,
    norm_reward=False)."""
    out = checked_checkpoint(out_dir, checkpoint)
    config = TrainConfig(**json.loads((Path(out_dir) / "config.json").read_text()))
    model = ALGOS[config.algo].load(out / "model.zip", device="cpu")
    if not config.normalize:
        return SB3Policy(model, None, deterministic=deterministic)
    dummy = DummyVecEnv([lambda: gym.make(config.env_id, **config.env_kwargs)])
    vecnormalize = VecNormalize.load(str(out / "vecnormalize.pkl"), dummy)
    vecnormalize.training, vecnormalize.norm_reward = False, False
    return SB3Policy(model, vecnormalize, deterministic=deterministic)
