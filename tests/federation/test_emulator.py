import pytest
import torch

from federation.adapters import LoraSpec, adapter_state, attach_lora, load_adapter_state
from federation.architecture import ALL_LINEAR, keep_for_compression
from federation.emulator import (
    build_emulator,
    distill_emulator,
    full_spec,
    layer_drop_spec,
    model_payload,
    uniform_layer_choice,
)
from federation.training import DistillConfig, LocalTrainConfig, perplexity, train_local


@pytest.mark.parametrize("num_middle, keep, expected", [
    (8, 8, [0, 1, 2, 3, 4, 5, 6, 7]),
    (8, 4, [0, 2, 5, 7]),
    (8, 2, [0, 7]),
    (8, 1, [0]),
    (6, 3, [0, 2, 5]),
    (1, 1, [0]),
])
def test_uniform_layer_choice(num_middle, keep, expected):
    chosen = uniform_layer_choice(num_middle, keep)
    assert chosen == expected
    assert all(a < b for a, b in zip(chosen, chosen[1:]))


@pytest.mark.parametrize("num_middle, keep", [(8, 0), (8, 9), (4, -1), (0, 1)])
def test_uniform_layer_choice_rejects_impossible_requests(num_middle, keep):
    with pytest.raises(ValueError, match="keep|num_middle"):
        uniform_layer_choice(num_middle, keep)


def test_layer_drop_spec_and_compression():
    spec = layer_drop_spec(10, 1, 0.5)
    assert spec.layers == (0, 1, 3, 6, 8, 9)
    assert spec.adapter_layers == (0, 9)
    assert spec.compression == 0.5 and spec.dropped_layers == (2, 4, 5, 7)
    assert layer_drop_spec(10, 1, 0.0).layers == tuple(range(10))
    assert keep_for_compression(8, 0.75) == 2
    with pytest.raises(ValueError, match="compression"):
        keep_for_compression(8, 1.0)
    with pytest.raises(ValueError, match="keeps no middle block"):
        keep_for_compression(8, 0.95)
    with pytest.raises(ValueError, match="num_adapter_layers"):
        layer_drop_spec(10, 5, 0.5)


def test_key_mapping_between_sub_and_full_model():
    spec = layer_drop_spec(10, 1, 0.5)
    assert spec.to_full_key("transformer.h.2.attn.c_attn.weight") == "transformer.h.3.attn.c_attn.weight"
    assert spec.to_sub_key("transformer.h.9.mlp.c_fc.bias") == "transformer.h.5.mlp.c_fc.bias"
    assert spec.to_sub_key("transformer.wte.weight") == "transformer.wte.weight"
    with pytest.raises(KeyError, match="block 4"):
        spec.to_sub_key("transformer.h.4.ln_1.weight")


def test_emulator_holds_exactly_the_kept_blocks(foundation):
    model, _ = foundation
    spec = layer_drop_spec(model.config.n_layer, 1, 0.75)
    emulator = build_emulator(model, spec)
    assert emulator.config.n_layer == len(spec.layers) == 4
    payload = model_payload(emulator, spec)
    full_state = model.state_dict()
    for key, tensor in payload.items():
        assert torch.equal(tensor, full_state[key])  # same weights, full-model names
    blocks = {int(k.split(".")[2]) for k in payload if k.startswith("transformer.h.")}
    assert blocks == set(spec.layers)
    assert sum(p.numel() for p in emulator.parameters()) < sum(p.numel() for p in model.parameters())


def test_plugging_a_tuned_adapter_lowers_full_model_perplexity(foundation, tuning_blocks):
    model, _ = foundation
    train, valid = tuning_blocks
    spec = layer_drop_spec(model.config.n_layer, 1, 0.75)
    lora = LoraSpec(rank=8, target_modules=ALL_LINEAR)  # FedPEAT's adapter
    torch.manual_seed(0)
    emulator = attach_lora(build_emulator(model, spec), spec, lora)
    train_local(emulator, train, LocalTrainConfig(steps=40, batch_size=8, lr=3e-3), seed=0)
    tuned = adapter_state(emulator, spec)
    assert all(k.startswith(("transformer.h.0.", "transformer.h.9.")) for k in tuned)

    import copy

    server_spec = full_spec(model.config.n_layer, 1)
    full = attach_lora(copy.deepcopy(model), server_spec, lora)
    before = perplexity(full, valid)  # LoRA B = 0: the pretrained model
    load_adapter_state(full, tuned, server_spec)
    after = perplexity(full, valid)
    assert after < 0.85 * before, (before, after)


def test_distillation_moves_only_middle_blocks_and_lowers_loss(foundation, tuning_blocks):
    model, tokenizer = foundation
    from federation.data import read_documents, tokenize_blocks

    public = tokenize_blocks(read_documents("kjv", "train")[:200], tokenizer, 128)
    spec = layer_drop_spec(model.config.n_layer, 1, 0.75)
    emulator = build_emulator(model, spec)
    before = {k: v.clone() for k, v in emulator.state_dict().items()}
    losses = distill_emulator(model, emulator, spec, public, DistillConfig(steps=30, lr=5e-4))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    after = emulator.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("transformer.h.1.", "transformer.h.2.")) for k in changed)
