"""``fedpeat pretrain`` end to end with a few steps: tokenizer, mixed-domain pretraining, checkpoint and record."""

from __future__ import annotations

import json

import pytest

from experiments.cli import app
from federation.data import DOMAINS, PRETRAIN_DOMAINS
from federation.foundation import load_foundation
from tests.helpers import cli_runner


@pytest.mark.slow
def test_pretrain_writes_a_loadable_checkpoint_and_its_record(tmp_path):
    result = cli_runner().invoke(app, ["pretrain", "--steps", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "pretrain.json").read_text())
    assert record["config"]["steps"] == 3 and record["torch_threads"] == 1
    assert set(record["valid_perplexity_pretrained"]) == set(DOMAINS)
    for domain in PRETRAIN_DOMAINS:  # three steps already move the pretraining domains off the uniform 4096
        assert record["valid_perplexity_pretrained"][domain] < record["valid_perplexity_untrained"][domain]
    model, tokenizer = load_foundation(tmp_path)
    assert len(tokenizer) == 4096 and model.config.n_layer == 10
    assert sum(p.numel() for p in model.parameters()) == record["num_parameters"]
