"""The engine fidelity prints nothing of its own libraries: no transformers warnings (attention mask, ``loss_type``),
no weight-loading progress bars, whatever transformers' logging settings are (here: its defaults, so the engine must
stay quiet by itself, not because the suite silenced transformers)."""

from __future__ import annotations

import logging
import warnings

import gymnasium as gym
import pytest

import fedpeat_env  # noqa: F401  (registers the ids)


class _Records(logging.Handler):
    """Keeps every record a logger emits."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def transformers_defaults():
    """transformers' logging as a fresh process has it (warnings on, progress bars on, each one-time warning not yet
    given), with a handler keeping what its loggers emit; the previous settings come back after the test."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    logging.Logger.warning_once.cache_clear()  # transformers' one-time warnings: given again in this test
    handler = _Records()
    hf_logging.get_logger().addHandler(handler)  # the root 'transformers' logger (it does not propagate)
    try:
        yield handler
    finally:
        hf_logging.get_logger().removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
        if not bars:
            hf_logging.disable_progress_bar()


def test_an_engine_episode_step_emits_no_library_warnings_logs_or_bars(transformers_defaults, capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = gym.make("FedPEAT-Engine-v1", num_devices=2, horizon=2, engine_local_steps=1, memory_tiers=(2.0,))
        env.reset(seed=0)
        env.step(env.action_space.sample())
        env.close()
    out, err = capfd.readouterr()
    messages = [record.getMessage() for record in transformers_defaults.records if record.levelno >= logging.WARNING]
    assert messages == []
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert "Loading weights" not in err + out
    assert err == ""
