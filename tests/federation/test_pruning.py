import copy
import math

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from federation.pruning import (
    ffn_weight_product_loss,
    least_active,
    neuron_saliency,
    top_neurons,
)

D, D_FF = 16, 64


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    """Tiny random GPT-2 (3 blocks, d = 16, d_ff = 64) in eval mode; tests must not modify it."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=3, n_embd=D, n_head=2, vocab_size=32, n_positions=16, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(32, (2, 8), generator=torch.Generator().manual_seed(1))


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(module: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = module.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


def prune_block_ffn(block: nn.Module, idx: torch.Tensor) -> nn.Module:
    """A copy of the GPT-2 ``block`` whose FFN keeps neurons ``idx`` only (the test's reference pruning)."""
    pruned = copy.deepcopy(block)
    fc, proj = block.mlp.c_fc, block.mlp.c_proj
    new_fc, new_proj = Conv1D(len(idx), fc.weight.shape[0]), Conv1D(proj.weight.shape[1], len(idx))
    with torch.no_grad():
        new_fc.weight.copy_(fc.weight[:, idx])
        new_fc.bias.copy_(fc.bias[idx])
        new_proj.weight.copy_(proj.weight[idx])
        new_proj.bias.copy_(proj.bias)
    pruned.mlp.c_fc, pruned.mlp.c_proj = new_fc, new_proj
    return pruned


def _mlp_reference(x: torch.Tensor, block: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The FFN restricted to neurons ``idx``, computed directly from the full block's weights."""
    fc, proj = block.mlp.c_fc, block.mlp.c_proj
    return block.mlp.act(x @ fc.weight[:, idx] + fc.bias[idx]) @ proj.weight[idx] + proj.bias


def test_saliency_matches_brute_force_loop(model):
    block = model.transformer.h[1]
    saliency = neuron_saliency(block)
    expected = torch.tensor(
        [torch.cat([block.mlp.c_fc.weight[:, j], block.mlp.c_proj.weight[j, :]]).norm().item() for j in range(D_FF)]
    )
    assert saliency.shape == (D_FF,) and not saliency.requires_grad
    torch.testing.assert_close(saliency, expected)
    brute_top = sorted(range(D_FF), key=lambda j: -expected[j].item())[:16]
    assert top_neurons(saliency, 0.25).tolist() == sorted(brute_top)


@pytest.mark.parametrize("ratio, n, keep", [(0.25, 64, 16), (0.3, 10, 3), (0.25, 10, 3), (1.0, 7, 7), (0.01, 7, 1)])
def test_top_neurons_keeps_ceil_of_ratio_sorted(ratio, n, keep):
    saliency = torch.randn(n, generator=torch.Generator().manual_seed(n))
    idx = top_neurons(saliency, ratio)
    assert idx.dtype == torch.long and len(idx) == keep == math.ceil(round(ratio * n, 9))
    assert idx.tolist() == sorted(idx.tolist())
    dropped = [j for j in range(n) if j not in idx.tolist()]
    if dropped:
        assert saliency[idx].min() >= saliency[dropped].max()


@pytest.mark.parametrize(
    "saliency, ratio, match",
    [
        (torch.ones(4), 0.0, r"keep_ratio must be in \(0, 1\]"),
        (torch.ones(4), 1.5, r"keep_ratio must be in \(0, 1\]"),
        (torch.ones(2, 2), 0.5, "saliency must be a non-empty 1-D"),
        (torch.ones(0), 0.5, "saliency must be a non-empty 1-D"),
    ],
)
def test_top_neurons_errors(saliency, ratio, match):
    with pytest.raises(ValueError, match=match):
        top_neurons(saliency, ratio)


def test_weight_product_loss_zero_at_full_width_and_differentiable(model):
    teacher = model.transformer.h[1]
    full = prune_block_ffn(teacher, torch.arange(D_FF))
    assert ffn_weight_product_loss(teacher, full, torch.arange(D_FF)).item() == pytest.approx(0.0, abs=1e-6)
    idx = top_neurons(neuron_saliency(teacher), 0.25)
    student = prune_block_ffn(teacher, idx)
    loss = ffn_weight_product_loss(teacher, student, idx)
    t = teacher.mlp.c_fc.weight @ teacher.mlp.c_proj.weight
    s = student.mlp.c_fc.weight @ student.mlp.c_proj.weight
    torch.testing.assert_close(loss, (t - s).norm() / t.norm())
    assert loss.item() > 0
    loss.backward()
    assert student.mlp.c_fc.weight.grad is not None and student.mlp.c_fc.weight.grad.abs().sum() > 0
    assert student.mlp.c_proj.weight.grad.abs().sum() > 0
    assert teacher.mlp.c_fc.weight.grad is None


def test_weight_product_loss_errors(model):
    teacher = model.transformer.h[1]
    student = prune_block_ffn(teacher, torch.arange(8))
    with pytest.raises(ValueError, match="neuron_idx has 9 neurons but the student FFN has 8"):
        ffn_weight_product_loss(teacher, student, torch.arange(9))
    with pytest.raises(ValueError, match="neuron_idx must be strictly increasing"):
        ffn_weight_product_loss(teacher, student, torch.arange(8).flip(0))


@pytest.mark.parametrize("fraction, expected", [(0.0, []), (0.25, [1, 3]), (0.5, [0, 1, 3, 5]), (1.0, list(range(8)))])
def test_least_active_picks_the_lowest_scores(fraction, expected):
    scores = torch.tensor([0.3, 0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.5])  # ties (0.3 at 0 and 5): lower position first
    chosen = least_active(scores, fraction)
    assert chosen.tolist() == expected and chosen.dtype == torch.long


def test_least_active_errors():
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        least_active(torch.zeros(4), 1.5)
    with pytest.raises(ValueError, match="activation_scores must be a non-empty 1-D tensor"):
        least_active(torch.zeros(2, 2), 0.5)
