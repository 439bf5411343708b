"""Tuned hyperparameters in RL Baselines3 Zoo's format: ``agents/hyperparams/<algo>.yml`` (package data, so an
installed ``fedpeat`` reads them too), one mapping per env id.

Keys the trainer handles (as the Zoo does): ``n_envs``, ``n_timesteps``, ``policy``, ``normalize``; every other key is
a constructor argument of the algorithm (``n_steps``, ``batch_size``, ``ent_coef``, ``policy_kwargs``, …). A key that
is neither is refused with one error naming it. ``learning_rate`` and ``clip_range`` may be ``lin_<initial>`` (the
Zoo's linear schedule from the initial value at the start to 0 at the end; ``algo_constructor_kwargs``).
Command-line overrides use the Zoo's spelling, ``key:value``, values read as YAML (``learning_rate:3e-4``,
``normalize:false``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"
"""The tuned settings shipped with the package (``agents/hyperparams/``)."""
TRAINER_KEYS = ("n_envs", "n_timesteps", "policy", "normalize")
"""Zoo keys the trainer handles itself; the rest go to the algorithm's constructor."""
_NOT_SETTABLE = ("self", "policy", "env", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model")


def hyperparams_file(algo: str) -> Path:
    return HYPERPARAMS_DIR / f"{algo}.yml"


def load_hyperparams(algo: str, env_id: str, path: Path | None = None) -> dict[str, Any]:
    """The ``env_id`` entry of ``path`` (default ``agents/hyperparams/<algo>.yml``); {} when the entry is absent (an env
    without tuned settings) or a given ``path`` does not exist; ``ValueError`` if the packaged file is missing (a broken
    install would otherwise train the algorithm's defaults without a word)."""
    if path is None:
        path = hyperparams_file(algo)
        if not path.is_file():
            raise ValueError(f"the tuned settings {path} are missing from the installed package; reinstall fedpeat-gym")
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


def algo_arguments(algo_cls: type[BaseAlgorithm]) -> tuple[str, ...]:
    """The constructor arguments of an SB3 algorithm class that a hyperparameter file may set."""
    return tuple(name for name in inspect.signature(algo_cls.__init__).parameters if name not in _NOT_SETTABLE)


def split_hyperparams(algo: str, algo_cls: type[BaseAlgorithm],
                      params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer settings, algorithm kwargs); ``ValueError`` naming every key that is neither."""
    allowed = algo_arguments(algo_cls)
    unknown = sorted(k for k in params if k not in TRAINER_KEYS and k not in allowed)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for {algo}; allowed: {sorted((*TRAINER_KEYS, *allowed))}")
    trainer = {k: v for k, v in params.items() if k in TRAINER_KEYS}
    if "normalize" in trainer and not isinstance(trainer["normalize"], bool):
        raise ValueError(f"normalize must be true or false, got {trainer['normalize']!r}")
    algo_kwargs = {k: v for k, v in params.items() if k not in TRAINER_KEYS}
    _check_types(algo_cls, algo_kwargs)
    return trainer, algo_kwargs


def _check_types(algo_cls: type[BaseAlgorithm], algo_kwargs: Mapping[str, Any]) -> None:
    """``ValueError`` naming an argument whose value has not the type of its default in the constructor (a bool, an
    integer, a number: an integer is a number; ``SCHEDULED`` arguments may also be ``lin_<x>`` strings), so that a
    misspelt value fails here rather than when training starts. Arguments without such a default are not checked."""
    defaults = {name: p.default for name, p in inspect.signature(algo_cls.__init__).parameters.items()}
    for key, value in algo_kwargs.items():
        default = defaults.get(key)
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)) or (
                key in SCHEDULED and isinstance(value, str))
            kind = "a finite number" + (" or lin_<initial>" if key in SCHEDULED else "")
        else:
            continue
        if not ok:
            raise ValueError(f"{key} must be {kind}, got {value!r}")


SCHEDULED = ("learning_rate", "clip_range")
"""Arguments that may be a Zoo schedule string ``lin_<initial>``."""


def linear_schedule(initial: float):
    """SB3 schedule: ``initial`` × the remaining progress (1 at the start of training, 0 at the end)."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


def algo_constructor_kwargs(algo_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``algo_kwargs`` as the algorithm's constructor takes them: ``lin_<x>`` strings of ``SCHEDULED`` arguments become
    linear schedules (stored as strings in ``config.json``; RL Zoo reads the same spelling)."""
    out = dict(algo_kwargs)
    for key in SCHEDULED:
        value = out.get(key)
        if isinstance(value, str):
            prefix, _, initial = value.partition("_")
            try:
                start = float(initial)
            except ValueError:
                start = None
            if prefix != "lin" or start is None or not 0 < start < math.inf:
                raise ValueError(f"{key} must be a number or lin_<initial> with initial > 0, got {value!r}")
            out[key] = linear_schedule(start)
    return out
