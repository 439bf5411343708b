"""GPT-2 architecture facts without torch: the counts equal a real GPT2LMHeadModel's; the surrogate env needs no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from federation.architecture import COST_PROFILES, keep_for_compression, profile_shape


@pytest.mark.parametrize("profile", COST_PROFILES)
def test_counts_equal_a_gpt2_built_on_the_meta_device(profile):
    shape = profile_shape(profile)
    config = GPT2Config(n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head, vocab_size=shape.vocab_size,
                        n_positions=shape.n_positions, n_inner=shape.n_inner)
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    t = model.transformer
    assert shape.params() == sum(p.numel() for p in model.parameters())  # the LM head is tied to wte
    assert shape.block_params == sum(p.numel() for p in t.h[0].parameters())
    assert shape.embedding_params == t.wte.weight.numel() + t.wpe.weight.numel()
    linears = tuple((name, *m.weight.shape) for name, m in t.h[0].named_modules() if isinstance(m, Conv1D))
    assert shape.block_linears == linears
    assert shape.params(2) == shape.params() - (shape.n_layer - 2) * shape.block_params


def test_embedded_shape_is_the_committed_checkpoint(foundation):
    model, _ = foundation
    assert profile_shape("embedded").params() == sum(p.numel() for p in model.parameters())
    assert keep_for_compression(8, 0.5) == 4
    with pytest.raises(ValueError, match="cost_profile must be one of"):
        profile_shape("gpt3")


def test_the_surrogate_env_imports_and_steps_without_torch():
    code = ("import sys, gymnasium as gym, fedpeat_env; env = gym.make('FedPEAT-v1'); env.reset(seed=0); "
            "env.step(env.action_space.sample()); print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
