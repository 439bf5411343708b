"""LoRA adapters through peft on GPT-2 ``Conv1D`` layers, exchanged as plain full-coordinate tensor dicts.

Adapter keys on the wire look like ``transformer.h.<full index>.attn.c_attn.lora_A.weight`` (A: (r, in),
B: (out, r)), independent of which emulator the device trains through. ``lora_alpha = alpha_per_rank · r``
keeps the scaling α/r constant when ranks differ per device (rank truncation / zero padding).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from federation.emulator import SubModelSpec

_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSpec:
    """LoRA hyper-parameters (peft ``LoraConfig`` with ``fan_in_fan_out=True`` for GPT-2 Conv1D)."""

    rank: int = 8
    """Rank r of each adapter pair."""
    alpha_per_rank: float = 2.0
    """lora_alpha / r, i.e. the LoRA scaling (kept constant across ranks)."""
    target_modules: tuple[str, ...] = ("c_attn",)
    """Module names inside each adapter block that carry LoRA."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not self.alpha_per_rank > 0:
            raise ValueError(f"alpha_per_rank must be > 0, got {self.alpha_per_rank}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")


def attach_lora(model: nn.Module, spec: SubModelSpec, lora: LoraSpec) -> PeftModel:
    """Wrap ``model`` (a sub-model built for ``spec``) with LoRA on its adapter blocks; base weights frozen."""
    config = LoraConfig(
        r=lora.rank,
        # peft annotates lora_alpha as int; it takes a float (scaling = lora_alpha / r)
        lora_alpha=lora.alpha_per_rank * lora.rank,  # type: ignore[arg-type]
        lora_dropout=0.0,
        target_modules=list(lora.target_modules),
        fan_in_fan_out=True,
        layers_to_transform=spec.sub_adapter_layers(),
        layers_pattern="h",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        return get_peft_model(model, config)


def adapter_state(model: PeftModel, spec: SubModelSpec) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``model`` as a plain dict in full-model coordinates (detached clones)."""
    return {
        spec.to_full_key(key.removeprefix(_PEFT_PREFIX)): tensor.detach().clone()
        for key, tensor in get_peft_model_state_dict(model).items()
    }


def load_adapter_state(model: PeftModel, state: dict[str, torch.Tensor], spec: SubModelSpec) -> None:
    """Load full-coordinate LoRA tensors into ``model``; every adapter tensor of the model must be given."""
    expected = set(adapter_state(model, spec))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"adapter keys do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    result = set_peft_model_state_dict(model, {_PEFT_PREFIX + spec.to_sub_key(k): v for k, v in state.items()})
    if unexpected := getattr(result, "unexpected_keys", None):
        raise ValueError(f"peft rejected adapter keys {unexpected[:3]}")


def lora_rank_of(state: dict[str, torch.Tensor]) -> int:
    """The common rank of a LoRA state dict (ValueError if the pairs disagree)."""
    ranks = {t.shape[0] for k, t in state.items() if "lora_A" in k} | {t.shape[1] for k, t in state.items() if "lora_B" in k}
    if len(ranks) != 1:
        raise ValueError(f"LoRA state has inconsistent ranks {sorted(ranks)}")
    return ranks.pop()


def truncate_rank(state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """Keep the first ``rank`` components: A[:r, :], B[:, :r] (HetLoRA's truncation of the global adapter)."""
    current = lora_rank_of(state)
    if not 1 <= rank <= current:
        raise ValueError(f"rank must be in [1, {current}], got {rank}")
    return {k: (t[:rank].clone() if "lora_A" in k else t[:, :rank].clone()) for k, t in state.items()}


def pad_rank(state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """Zero-pad A rows / B columns up to ``rank`` (B·A is unchanged)."""
    current = lora_rank_of(state)
    if rank < current:
        raise ValueError(f"rank must be >= the current rank {current}, got {rank}")
    out = {}
    for k, t in state.items():
        if "lora_A" in k:
            out[k] = torch.cat([t, t.new_zeros(rank - current, t.shape[1])], dim=0)
        else:
            out[k] = torch.cat([t, t.new_zeros(t.shape[0], rank - current)], dim=1)
    return out
