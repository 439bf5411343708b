"""Checkpoints of a training run and resuming from the last one (``train(..., checkpoint_every=K, resume=True)``).

A checkpoint is a directory ``out_dir/checkpoints/step-<steps>/``:

| file | contents |
|------|----------|
| ``model.zip`` | the model (``ALGO.save``: parameters, optimizer state, step count, last observation) |
| ``vecnormalize.pkl`` | the VecNormalize statistics (when the run normalises) |
| ``state.pkl`` | the global random states (torch, numpy, random) and, for ``FedPEAT-v1``, the episodes in progress |
| ``best/`` | the run's ``best/`` checkpoint at that step (when ``check_every`` > 0) |
| ``checkpoint.json`` | steps, the ``TrainConfig``, the ``BaselineCheck`` state, training time, env time and steps so far, the monitor files' sizes |

Checkpoints are taken at rollout boundaries (after a policy update, before the next rollout: nothing collected is
lost) once ``K`` env steps have passed since the last one, and at the end of training. Each is written into a
temporary directory that is then renamed (``os.replace``): a run killed mid-write keeps its previous checkpoint. The
last ``KEEP`` are kept. SB3's ``CheckpointCallback`` does not fit: it saves in place every ``save_freq`` calls (mid
rollout), keeps every checkpoint and stores neither the random states nor the run's own state; the algorithms here are
on-policy, so there is no replay buffer to keep.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import CSVOutputFormat, Logger, TensorBoardOutputFormat
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecMonitor, VecNormalize
from torch.utils.tensorboard import SummaryWriter

from agents.vec import FedPEATSB3VecEnv

if TYPE_CHECKING:
    from agents.train import TrainConfig

CHECKPOINT_DIR = "checkpoints"
"""Sub-directory of a run with its checkpoints."""
KEEP = 2
"""Checkpoints kept (the newest)."""
BEST_DIR = "best"
"""Sub-directory of a run with the checkpoint that did best on the validation checks (``agents.train``)."""
MONITOR_DIR = "monitor"
"""Sub-directory of a run with the episode files (``*.monitor.csv``)."""
META, STATE, MODEL, VECNORMALIZE = "checkpoint.json", "state.pkl", "model.zip", "vecnormalize.pkl"
MAY_DIFFER = ("timesteps", "out_dir")
"""``TrainConfig`` fields a resumed run may change (``timesteps`` only upwards; the run's directory may have moved)."""
_NAME = re.compile(r"step-(\d+)")


class Checkpointer(BaseCallback):
    """Writes a checkpoint (``save_checkpoint``) at the first rollout boundary ``every`` env steps after the last one
    and at the end of training (``every`` 0: none); ``meta()`` gives the run's part of ``checkpoint.json`` (config,
    check state, totals). ``rng``, the random states of a resumed checkpoint, is restored when training starts, after
    the other callbacks' start, which may draw numbers: place this callback last."""

    def __init__(self, out_dir: Path, every: int, meta: Callable[[], dict], rng: dict | None = None) -> None:
        super().__init__()
        self.out_dir, self.every, self.meta, self.rng = Path(out_dir), every, meta, rng
        self.last = 0

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps
        if self.rng is not None:
            set_rng_state(self.rng)

    def _on_rollout_start(self) -> None:
        if self.every and self.num_timesteps - self.last >= self.every:
            self.save()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self.every and self.num_timesteps != self.last:
            self.save()

    def save(self) -> Path:
        self.last = self.num_timesteps
        return save_checkpoint(self.out_dir, self.model, self.meta())


# --- writing ------------------------------------------------------------------------------------------------------
def save_checkpoint(out_dir: Path, model: Any, meta: dict) -> Path:
    """Write ``out_dir/checkpoints/step-<model.num_timesteps>/`` atomically and keep the newest ``KEEP``."""
    root = Path(out_dir) / CHECKPOINT_DIR
    steps = int(model.num_timesteps)
    final, tmp = root / f"step-{steps}", root / f".tmp-step-{steps}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    venv = model.get_env()
    model.save(tmp / MODEL)
    if isinstance(venv, VecNormalize):
        venv.save(str(tmp / VECNORMALIZE))
    episodes = env_state(venv)
    with open(tmp / STATE, "wb") as f:
        pickle.dump({"rng": rng_state(), "env": episodes}, f)
    best = Path(out_dir) / BEST_DIR
    if (best / MODEL).is_file():
        shutil.copytree(best, tmp / BEST_DIR)
    monitor = {p.relative_to(out_dir).as_posix(): p.stat().st_size
               for p in sorted((Path(out_dir) / MONITOR_DIR).rglob("*.monitor.csv"))}
    record = {"steps": steps, **meta, "monitor": monitor, "exact": episodes is not None}
    (tmp / META).write_text(json.dumps(record, indent=2) + "\n")  # written last: a complete checkpoint has it
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoints(out_dir)[:-KEEP]:
        shutil.rmtree(old)
    for stale in root.glob(".tmp-step-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    return final


def checkpoints(out_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run (with ``checkpoint.json``), oldest first."""
    root = Path(out_dir) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in root.glob("step-*") if (m := _NAME.fullmatch(p.name)) and (p / META).is_file()]
    return [p for _, p in sorted(found)]


# --- reading and validating ---------------------------------------------------------------------------------------
def last_checkpoint(config: TrainConfig) -> tuple[Path, dict]:
    """(directory, ``checkpoint.json``) of the last checkpoint in ``config.out_dir``, checked for resuming ``config``.

    ``ValueError`` (one message) if there is none; if a file of it is unreadable (naming the file and the previous
    checkpoint); if its settings differ from ``config`` other than ``MAY_DIFFER`` (naming every differing field); if
    it has more steps than ``config.timesteps``.
    """
    out = Path(config.out_dir)
    found = checkpoints(out)
    if not found:
        raise ValueError(f"--resume: no checkpoint in {out / CHECKPOINT_DIR} (a run writes them with "
                         "--checkpoint-every K > 0)")
    path = found[-1]
    previous = f"; delete {path} to resume from {found[-2]}" if len(found) > 1 else ""
    try:
        meta = json.loads((path / META).read_text())
        steps, saved = int(meta["steps"]), dict(meta["config"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint file {path / META} is unreadable ({err}){previous}") from None
    differ = config_differences(saved, config)
    if differ:
        raise ValueError(f"--resume: the settings differ from the checkpoint {path}'s: {'; '.join(differ)} (only "
                         "--timesteps may change)")
    if config.timesteps < steps:
        raise ValueError(f"--resume: the checkpoint {path} has {steps} steps, more than timesteps={config.timesteps}")
    _check_model(path / MODEL, previous)
    for name in (VECNORMALIZE, STATE) if saved.get("normalize") else (STATE,):
        _read_pickle(path / name, previous)
    return path, meta


def config_differences(saved: dict, config: TrainConfig) -> list[str]:
    """The fields (and keys of dict fields, ``algo_kwargs.n_steps``) in which ``config`` differs from a checkpoint's
    saved config, as "field: checkpoint X, now Y", ignoring ``MAY_DIFFER``."""
    now = json.loads(json.dumps(asdict(config)))  # as JSON reads it back (tuples → lists)
    differ = []
    for name in sorted(set(now) | set(saved)):
        old, new = saved.get(name), now.get(name)
        if name in MAY_DIFFER or old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            differ += [f"{name}.{k}: checkpoint {old.get(k)!r}, now {new.get(k)!r}"
                       for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        else:
            differ.append(f"{name}: checkpoint {old!r}, now {new!r}")
    return differ


def _check_model(path: Path, previous: str) -> None:
    """Read the model file as ``ALGO.load`` does; any failure (truncated, bad CRC, missing member, …) is one
    ``ValueError`` naming the file."""
    try:
        data, params, _ = load_from_zip_file(path, device="cpu")
        if data is None or "policy" not in params:  # a cut archive can open on a member's own zip directory
            raise ValueError("no model data or parameters in it")
    except Exception as err:  # noqa: BLE001  (corruption fails in many ways; the message names the file)
        raise ValueError(f"checkpoint file {path} is corrupt or missing ({type(err).__name__}: {err}){previous}") from None


def _read_pickle(path: Path, previous: str = "") -> Any:
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError, TypeError) as err:
        raise ValueError(f"checkpoint file {path} is corrupt or missing ({err}){previous}") from None


def read_state(path: Path) -> dict:
    """``state.pkl`` of the checkpoint ``path``: {"rng": ..., "env": ... or None}."""
    return _read_pickle(path / STATE)


# --- the state beyond the model -----------------------------------------------------------------------------------
def rng_state() -> dict:
    """The global random states SB3 draws from (torch: actions; numpy: minibatch order; random)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])


def _layers(venv: VecEnv) -> list[VecEnv]:
    layers = [venv]
    while isinstance(layers[-1], VecEnvWrapper):
        layers.append(layers[-1].venv)
    return layers


def env_state(venv: VecEnv) -> dict | None:
    """The episodes in progress when the innermost env is ``FedPEATSB3VecEnv`` (its state, VecMonitor's running
    episode sums, VecNormalize's running returns), else None (other envs are reset on resume)."""
    layers = _layers(venv)
    if not isinstance(layers[-1], FedPEATSB3VecEnv):
        return None
    state: dict[str, Any] = {"episodes": layers[-1].get_state()}
    for layer in layers:
        if isinstance(layer, VecNormalize):
            state["returns"] = layer.returns.copy()
        if isinstance(layer, VecMonitor):
            state["monitor"] = (layer.episode_returns.copy(), layer.episode_lengths.copy(), layer.episode_count)
    return state


def set_env_state(venv: VecEnv, state: dict) -> None:
    """Restore ``env_state`` into a vector env built with the same settings."""
    layers = _layers(venv)
    cast(FedPEATSB3VecEnv, layers[-1]).set_state(state["episodes"])  # ``env_state`` saved them: this is the env
    for layer in layers:
        if isinstance(layer, VecNormalize):
            layer.returns = state["returns"].copy()
        if isinstance(layer, VecMonitor):
            returns, lengths, count = state["monitor"]
            layer.episode_returns, layer.episode_lengths, layer.episode_count = returns.copy(), lengths.copy(), count


# --- the run's other outputs --------------------------------------------------------------------------------------
def rewind_outputs(out_dir: Path, checkpoint: Path, meta: dict) -> Path:
    """Set the run's files back to the checkpoint: monitor files cut to their sizes then (episodes that ended later
    are redone; files begun later are removed) and ``best/`` as it was. Returns the monitor directory of the resumed
    part, ``monitor/from-<steps>/`` (episode files are read in time order, ``agents.plots.read_episodes``)."""
    out = Path(out_dir)
    sizes = meta.get("monitor", {})
    for path in (out / MONITOR_DIR).rglob("*.monitor.csv"):
        size = sizes.get(path.relative_to(out).as_posix())
        if size is None:
            path.unlink()
        elif path.stat().st_size > size:
            os.truncate(path, size)
    shutil.rmtree(out / BEST_DIR, ignore_errors=True)
    if (checkpoint / BEST_DIR).is_dir():
        shutil.copytree(checkpoint / BEST_DIR, out / BEST_DIR)
    part = out / MONITOR_DIR / f"from-{meta['steps']}"
    part.mkdir(parents=True, exist_ok=True)
    return part


def resumed_logger(folder: Path, steps: int) -> Logger:
    """SB3's csv + tensorboard logger continuing a run at ``steps``: ``progress.csv`` keeps its rows up to ``steps``
    and continues below them; tensorboard events after ``steps`` are purged (``SummaryWriter(purge_step=...)``)."""
    csv_path = Path(folder) / "progress.csv"
    lines = csv_path.read_text().splitlines(keepends=True) if csv_path.is_file() else []
    progress = CSVOutputFormat(str(csv_path))  # truncates: the kept rows are written back
    if lines:
        keys = next(csv.reader(lines[:1]))
        column = keys.index("time/total_timesteps") if "time/total_timesteps" in keys else None

        def logged_by_then(line: str) -> bool:
            try:
                return column is not None and float(next(csv.reader([line]))[column]) <= steps
            except (ValueError, IndexError):
                return False

        progress.keys = keys
        progress.file.write(lines[0] + "".join(line for line in lines[1:] if logged_by_then(line)))
        progress.file.flush()
    return Logger(folder=str(folder), output_formats=[progress, _PurgingTensorBoard(str(folder), steps + 1)])


class _PurgingTensorBoard(TensorBoardOutputFormat):
    """SB3's tensorboard output whose writer hides events from ``purge_step`` on that earlier writers logged."""

    def __init__(self, folder: str, purge_step: int) -> None:
        self.writer = SummaryWriter(log_dir=folder, purge_step=purge_step)
        self._is_closed = False
