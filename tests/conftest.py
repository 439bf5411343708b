"""Shared fixtures: the embedded foundation model (loaded once) and fast engine settings."""

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
