"""FedProx (Li et al. 2020): FedPETuning with a proximal term that keeps each device's update near the global one.

The standard FL baseline for heterogeneous data. Every device trains LoRA on every block of the full model, on
LM loss + (μ/2)·Σ‖w − w_g‖² over its LoRA weights, where w_g is the adapter it received this round; the server
averages the adapters (FedAvg by sample count). μ = 0 is FedPETuning exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from federation.methods.base import MethodConfig
from federation.methods.fedpetuning import FedPETuning
from federation.training import LocalObjective, lm_loss


@dataclass(frozen=True)
class FedProxConfig(MethodConfig):
    mu: float = 0.01
    """μ: weight of the proximal term (0: FedPETuning)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.mu >= 0:
            raise ValueError(f"mu must be >= 0, got {self.mu}")


@dataclass
class ProximalLoss(LocalObjective):
    """LM loss + (``mu``/2)·Σ‖w − w_g‖² over the trainable (LoRA) weights; w_g is taken in ``prepare``, i.e. the
    adapter the device received this round. One instance per job (it holds that round's anchor)."""

    mu: float = 0.01
    anchor: dict[str, torch.Tensor] = field(default_factory=dict)

    def prepare(self, model: nn.Module, private: dict) -> None:
        self.anchor = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def proximal(self, model: nn.Module) -> torch.Tensor:
        """Σ‖w − w_g‖² over the anchored parameters (differentiable)."""
        params = dict(model.named_parameters())
        total = sum(((params[name] - w_g) ** 2).sum() for name, w_g in self.anchor.items())
        return cast(torch.Tensor, total)  # a Tensor, not sum's 0: prepare anchors the trainable weights

    def loss(self, model: nn.Module, batch: torch.Tensor, stage: int = 0) -> torch.Tensor:
        return lm_loss(model, batch) + 0.5 * self.mu * self.proximal(model)


class FedProx(FedPETuning):
    name = "fedprox"
    config_class = FedProxConfig
    config: FedProxConfig

    def objective(self) -> ProximalLoss:
        return ProximalLoss(self.config.mu)
