"""Shared fixtures: the embedded foundation model (loaded once), tuning blocks, a small env scenario, the recording
executor. Importable helpers (``FAST_TRAIN``, ``RecordingExecutor``) are in ``tests/helpers.py``."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", module="peft")


@pytest.fixture(scope="session")
def foundation():
    """(model, tokenizer) of the embedded tiny GPT-2. Tests must not modify the model."""
    from transformers.utils import logging as hf_logging

    from federation.foundation import load_foundation

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return load_foundation()


@pytest.fixture(scope="session")
def tuning_blocks(foundation):
    """Train / valid token blocks of the held-out tuning domain (pydocs), shape (n, 128)."""
    from federation.data import read_documents, tokenize_blocks

    _, tokenizer = foundation
    return (
        tokenize_blocks(read_documents("pydocs", "train"), tokenizer, 128),
        tokenize_blocks(read_documents("pydocs", "valid"), tokenizer, 128),
    )


@pytest.fixture(scope="session")
def env_kwargs(tmp_path_factory) -> dict:
    """A small FedPEAT-v1 scenario (3 devices, horizon 5) on a hand-made calibration (``helpers.hand_calibration``:
    ppl_0 = 4000, plateaus 150–210, fast progress), so that episodes reach the target and tests do not depend on the
    committed calibration."""
    from tests.helpers import hand_calibration

    path = tmp_path_factory.mktemp("cal") / "cal.json"
    hand_calibration().save(path)
    return {"calibration": str(path), "num_devices": 3, "horizon": 5}


@pytest.fixture
def recording_executor():
    """A fresh ``RecordingExecutor`` (keeps the last round's jobs and updates) per call: ``recording_executor()``."""
    from tests.helpers import RecordingExecutor

    return RecordingExecutor
