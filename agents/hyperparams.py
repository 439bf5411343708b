"""Tuned hyperparameters in RL Baselines3 Zoo's format: ``hyperparams/<algo>.yml``, one mapping per env id.

Keys the trainer handles (as the Zoo does): ``n_envs``, ``n_timesteps``, ``policy``, ``normalize``; every other key is
a constructor argument of the algorithm (``n_steps``, ``batch_size``, ``ent_coef``, ``policy_kwargs``, …). A key that
is neither is refused with one error naming it. Command-line overrides use the Zoo's spelling, ``key:value``, values
read as YAML (``learning_rate:3e-4``, ``normalize:false``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

HYPERPARAMS_DIR = Path(__file__).resolve().parents[1] / "hyperparams"
"""The repository's ``hyperparams/`` directory."""
TRAINER_KEYS = ("n_envs", "n_timesteps", "policy", "normalize")
"""Zoo keys the trainer handles itself; the rest go to the algorithm's constructor."""
_NOT_SETTABLE = ("self", "policy", "env", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model")


def hyperparams_file(algo: str) -> Path:
    return HYPERPARAMS_DIR / f"{algo}.yml"


def load_hyperparams(algo: str, env_id: str, path: Path | None = None) -> dict[str, Any]:
    """The ``env_id`` entry of ``path`` (default ``hyperparams/<algo>.yml``); {} when the file or entry is absent."""
    path = path or hyperparams_file(algo)
    if not path.is_file():
        return {}
    table = yaml.load(path.read_text(), Loader=yaml.SafeLoader) or {}  # the Zoo writes 3e6 as !!float, safe to read
    if not isinstance(table, Mapping):
        raise ValueError(f"{path} must map env ids to hyperparameters, got {type(table).__name__}")
    return dict(table.get(env_id) or {})


def parse_hyperparams(items: Iterable[str]) -> dict[str, Any]:
    """``["n_steps:64", "ent_coef:0.0 gamma:0.98"]`` → {"n_steps": 64, "ent_coef": 0.0, "gamma": 0.98} (values as YAML)."""
    parsed = {}
    for item in (word for text in items for word in text.split()):
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise ValueError(f"--hyperparams entries must be key:value, got {item!r}")
        parsed[key] = _value(value)
    return parsed


def _value(raw: str) -> Any:
    """A value as YAML reads it, and numbers YAML 1.1 leaves as strings (``1e4``, ``3e-4``) as floats."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def algo_arguments(algo_cls: type) -> tuple[str, ...]:
    """The constructor arguments of an SB3 algorithm class that a hyperparameter file may set."""
    return tuple(name for name in inspect.signature(algo_cls.__init__).parameters if name not in _NOT_SETTABLE)


def split_hyperparams(algo: str, algo_cls: type, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer settings, algorithm kwargs); ``ValueError`` naming every key that is neither."""
    allowed = algo_arguments(algo_cls)
    unknown = sorted(k for k in params if k not in TRAINER_KEYS and k not in allowed)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for {algo}; allowed: {sorted((*TRAINER_KEYS, *allowed))}")
    trainer = {k: v for k, v in params.items() if k in TRAINER_KEYS}
    if "normalize" in trainer and not isinstance(trainer["normalize"], bool):
        raise ValueError(f"normalize must be true or false, got {trainer['normalize']!r}")
    return trainer, {k: v for k, v in params.items() if k not in TRAINER_KEYS}
