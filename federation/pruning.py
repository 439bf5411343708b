"""FedPFT sub-model construction (DESIGN §4): saliency-based FFN neuron pruning of GPT-2 and its distillation terms.

GPT-2 uses ``Conv1D`` (weights stored (in, out)): neuron j of a block's FFN is ``mlp.c_fc.weight[:, j]`` (d,),
``mlp.c_fc.bias[j]`` and ``mlp.c_proj.weight[j, :]`` (d,). A pruned block keeps k of the d_ff neurons:
``c_fc`` (d, k) + (k,), ``c_proj`` (k, d) + (d,) (the output bias is not per neuron and is kept whole). Kept
neuron index sets are sorted, and position i of a pruned block holds full-FFN neuron ``kept_idx[i]``.
Every function returns new tensors / modules and leaves its inputs untouched.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import cast

import torch
from torch import nn
from transformers import GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Block
from transformers.pytorch_utils import Conv1D

from federation.emulator import SubModelSpec, adapter_block_indices, full_spec, train_parameters
from federation.training import DistillConfig, block_inputs


def _ffn(block: nn.Module) -> tuple[Conv1D, Conv1D]:
    """(c_fc, c_proj) of a GPT-2 block; ValueError if the block has no GPT-2 FFN."""
    mlp = getattr(block, "mlp", None)
    fc, proj = getattr(mlp, "c_fc", None), getattr(mlp, "c_proj", None)
    if not (isinstance(fc, Conv1D) and isinstance(proj, Conv1D)):
        raise ValueError(f"block must be a GPT-2 block with Conv1D mlp.c_fc and mlp.c_proj, got {type(block).__name__}")
    return fc, proj


def _check_index(name: str, idx: torch.Tensor, size: int) -> None:
    """``idx`` must be a non-empty, strictly increasing 1-D integer tensor with values in [0, size)."""
    if idx.dim() != 1 or len(idx) == 0 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ValueError(f"{name} must be a non-empty 1-D integer tensor, got dtype {idx.dtype} shape {tuple(idx.shape)}")
    if not bool((idx[1:] > idx[:-1]).all()) or int(idx[0]) < 0 or int(idx[-1]) >= size:
        raise ValueError(f"{name} must be strictly increasing with values in [0, {size}), got {idx.tolist()[:8]}…")


def neuron_saliency(block: nn.Module) -> torch.Tensor:
    """s_j = ‖[c_fc.weight[:, j], c_proj.weight[j, :]]‖₂ for every FFN neuron, shape (d_ff,) (detached)."""
    fc, proj = _ffn(block)
    with torch.no_grad():
        return ((fc.weight**2).sum(0) + (proj.weight**2).sum(1)).sqrt()


def top_neurons(saliency: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Sorted indices (LongTensor) of the ⌈keep_ratio·d_ff⌉ most salient neurons (ties: lower index first)."""
    if saliency.dim() != 1 or len(saliency) == 0:
        raise ValueError(f"saliency must be a non-empty 1-D tensor, got shape {tuple(saliency.shape)}")
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    keep = math.ceil(keep_ratio * len(saliency) - 1e-9)  # tolerance: 0.3·10 must keep 3, not 4
    order = torch.argsort(saliency.detach(), descending=True, stable=True)
    return order[:keep].sort().values.long()


def ffn_weight_product_loss(
    teacher_block: nn.Module, student_block: nn.Module, neuron_idx: torch.Tensor
) -> torch.Tensor:
    """‖W_out W_in − W'_out W'_in‖_F / ‖W_out W_in‖_F between the teacher's full FFN and the pruned student's.

    Scalar, differentiable w.r.t. the student's ``c_fc`` / ``c_proj`` weights (the teacher is detached); the
    public FedPFT code computed it on ``.data``, so it never trained anything. ``neuron_idx`` (the student's kept
    neurons) only checks that the two blocks match. In Conv1D layout the product is (c_fc.weight·c_proj.weight)ᵀ,
    (d, d); the Frobenius norm ignores the transpose.
    """
    t_fc, t_proj = _ffn(teacher_block)
    s_fc, s_proj = _ffn(student_block)
    _check_index("neuron_idx", neuron_idx, t_fc.weight.shape[1])
    if len(neuron_idx) != s_fc.weight.shape[1]:
        raise ValueError(f"neuron_idx has {len(neuron_idx)} neurons but the student FFN has {s_fc.weight.shape[1]}")
    with torch.no_grad():
        target = t_fc.weight @ t_proj.weight
    return torch.linalg.matrix_norm(target - s_fc.weight @ s_proj.weight) / torch.linalg.matrix_norm(target).clamp_min(
        1e-12
    )


def least_active(activation_scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Sorted positions of the round(``fraction``·k) neurons with the lowest ``activation_scores`` (k,) (ties: lower
    position first): the neurons FedPFT's neuron-level distillation updates. Python ``round`` (half to even)."""
    if activation_scores.dim() != 1 or len(activation_scores) == 0:
        raise ValueError(f"activation_scores must be a non-empty 1-D tensor, got shape {tuple(activation_scores.shape)}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    order = torch.argsort(activation_scores.detach(), stable=True)
    return order[: round(fraction * len(activation_scores))].sort().values.long()


def pruned_spec(full_model: GPT2LMHeadModel, keep_ratio: float, num_adapter_layers: int) -> SubModelSpec:
    """FedPFT sub-model spec: every block, LoRA on all of them, the FFN of each middle block (all but the
    ``num_adapter_layers`` bottom and top blocks, which stay whole) reduced to its top ``keep_ratio`` neurons by
    saliency."""
    blocks = full_model.transformer.h
    whole = set(adapter_block_indices(len(blocks), num_adapter_layers))
    neurons = tuple(
        (i, tuple(top_neurons(neuron_saliency(block), keep_ratio).tolist())) for i, block in enumerate(blocks) if i not in whole
    )
    spec = full_spec(len(blocks))
    return SubModelSpec(spec.num_layers, spec.layers, spec.adapter_layers, neurons)


@torch.no_grad()
def ffn_activation_scores(model: GPT2LMHeadModel, blocks: torch.Tensor, sub_blocks: list[int], batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Mean |activation| of every FFN neuron (after the nonlinearity) of the blocks ``sub_blocks`` of ``model`` over
    the token blocks (N, T): {block: (k,)}. Higher = more active (the inverse of APoZ's 'percentage of zeros')."""
    sums: dict[int, torch.Tensor] = {}
    hooks = []
    for b in sub_blocks:
        def record(module, inputs, output, b=b):
            sums[b] = sums.get(b, 0) + output.abs().sum(dim=(0, 1))
        hooks.append(cast(GPT2Block, model.transformer.h[b]).mlp.act.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(blocks), batch_size):
            model(**block_inputs(blocks[start : start + batch_size]))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {b: s / blocks.numel() for b, s in sums.items()}


PRUNED_DISTILL = DistillConfig(lr=1e-3)
"""FedPFT's distillation settings (50 steps of 8 blocks at lr 1e-3); ``replace`` steps or seed per use."""


def distill_pruned(
    full_model: GPT2LMHeadModel,
    pruned: GPT2LMHeadModel,
    spec: SubModelSpec,
    blocks: torch.Tensor,
    config: DistillConfig = PRUNED_DISTILL,
    weight_product: float = 1.0,
    neurons: dict[int, torch.Tensor] | None = None,
) -> list[float]:
    """FedPFT's distillation of a pruned sub-model (every block kept, ``spec.ffn_neurons`` pruned) towards the full
    model on ``blocks`` (N, T): loss = mean over blocks of ‖h_s − h_t‖² / ‖h_t‖² (each block's output hidden state)
    + ``weight_product``·Σ_pruned blocks ``ffn_weight_product_loss`` — with gradients, unlike the public code.

    ``neurons`` None: layer-level distillation, trains the pruned FFNs (c_fc, c_proj) whole. Otherwise neuron-level
    distillation: {pruned block: positions among its kept neurons} — only those neurons' c_fc column and bias and
    c_proj row change (masked gradients, weight decay off); every other weight stays bit-identical. Returns the loss
    per step."""
    if len(spec.layers) != spec.num_layers:
        raise ValueError("distill_pruned needs a sub-model that keeps every block (FFN pruning only)")
    pruned_blocks = spec.pruned_neurons()
    if neurons is not None and not set(neurons) <= set(pruned_blocks):
        raise ValueError(f"neurons must name pruned blocks {sorted(pruned_blocks)}, got {sorted(neurons)}")
    hooks = []
    if neurons is None:
        params = [p for b in pruned_blocks for layer in _ffn(pruned.transformer.h[b]) for p in layer.parameters()]
    else:
        params = []
        for b, positions in neurons.items():
            fc, proj = _ffn(pruned.transformer.h[b])
            mask = torch.zeros(fc.weight.shape[1])
            mask[positions] = 1.0
            for param, shaped in ((fc.weight, mask[None, :]), (fc.bias, mask), (proj.weight, mask[:, None])):
                param.requires_grad_(True)
                params.append(param)
                hooks.append(param.register_hook(lambda grad, shaped=shaped: grad * shaped))

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = full_model(**block_inputs(batch), output_hidden_states=True).hidden_states[1:]
        hidden = pruned(**block_inputs(batch), output_hidden_states=True).hidden_states[1:]
        loss = torch.stack([((h - t) ** 2).sum() / (t**2).sum() for h, t in zip(hidden, targets)]).mean()
        for b, idx in pruned_blocks.items():
            loss = loss + weight_product * ffn_weight_product_loss(full_model.transformer.h[b], pruned.transformer.h[b], idx)
        return loss

    full_model.eval()
    try:
        return train_parameters(pruned, params, loss_fn, blocks, config if neurons is None else replace(config, weight_decay=0.0))
    finally:
        for hook in hooks:
            hook.remove()
