"""FedDAT (Chen et al. 2023): a dual-adapter teacher and mutual knowledge distillation against data heterogeneity.

Each device holds three LoRA adapters on every block of the full model (peft adapters in one model):

| adapter | name in the model | trained | uploaded |
|---------|-------------------|---------|----------|
| shared A_s (received from the server) | ``default`` | yes | yes (the server averages it) |
| local A_c (client-specific, persists on the device between rounds; starts as the first A_s) | ``local`` | yes | never |
| frozen copy Â_s of the received A_s | ``teacher`` | no | no |

The dual-adapter teacher (DAT) is the model with ``local`` and ``teacher`` active, each at half its LoRA scale:
h + 0.5·A_c(h) + 0.5·Â_s(h). Per batch, two optimiser steps (mutual KD, temperature T, default 3):

- shared step: L_s = ½[LM(z_s) + T²·KL(softmax(z_DAT/T) ‖ softmax(z_s/T))], z_DAT without gradient; updates A_s;
- teacher step: L_DAT = ½[LM(z_DAT) + T²·KL(softmax(z_s/T) ‖ softmax(z_DAT/T))], z_s without gradient; updates A_c.

The server averages the uploaded shared adapters only (FedAvg, or ``--lora-aggregation exact``) and evaluates A_s
plugged into the full model. Baseline: ``fedpetuning`` (FedAvg of a single LoRA adapter, same placement).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer, LoraModel
from torch import nn

from federation.methods.base import Method, MethodConfig
from federation.training import LocalObjective, block_inputs

SHARED, LOCAL, TEACHER = "default", "local", "teacher"


def _lm_loss(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of logits (B, T, V) for token ids (B, T)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten())


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), mean over token positions."""
    t = F.log_softmax(teacher_logits.flatten(0, 1) / temperature, dim=-1)
    s = F.log_softmax(student_logits.flatten(0, 1) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


@dataclass(frozen=True)
class DualAdapterObjective(LocalObjective):
    """FedDAT's local update (module docstring): two steps per batch on the peft model's shared and local adapters."""

    temperature: float = 3.0
    stages = 2

    @staticmethod
    def _activate(model: PeftModel, adapters: list[str]) -> None:
        """Make ``adapters`` the active ones; only the shared and local adapters may train."""
        cast(LoraModel, model.base_model).set_adapter(adapters)  # peft sets requires_grad=True on every active adapter
        for name, param in model.named_parameters():
            if f".{TEACHER}." in name:
                param.requires_grad_(False)

    def prepare(self, model: nn.Module, private: dict) -> None:
        model = cast(PeftModel, model)  # the client's model of a LoRA job
        if LOCAL not in model.peft_config:
            config = model.peft_config[SHARED]
            with torch.random.fork_rng():  # the random init is overwritten below; keep the global RNG untouched
                model.add_adapter(LOCAL, config)
                model.add_adapter(TEACHER, config)
            for module in model.modules():
                if isinstance(module, LoraLayer):
                    module.set_scale(LOCAL, 0.5)
                    module.set_scale(TEACHER, 0.5)
        shared = get_peft_model_state_dict(model, adapter_name=SHARED)
        set_peft_model_state_dict(model, private.get(LOCAL, shared), adapter_name=LOCAL)  # first round: A_c = A_s
        set_peft_model_state_dict(model, shared, adapter_name=TEACHER)
        self._activate(model, [SHARED, LOCAL])  # both trainable: train_local's optimiser holds both

    def loss(self, model: nn.Module, batch: torch.Tensor, stage: int) -> torch.Tensor:
        model = cast(PeftModel, model)  # the client's model of a LoRA job
        student, teacher = ([SHARED], [LOCAL, TEACHER]) if stage == 0 else ([LOCAL, TEACHER], [SHARED])
        with torch.no_grad():
            self._activate(model, teacher)
            target = model(**block_inputs(batch)).logits
        self._activate(model, student)
        logits = model(**block_inputs(batch)).logits
        return 0.5 * (_lm_loss(logits, batch) + _kl(target, logits, self.temperature))

    def finish(self, model: nn.Module, private: dict) -> None:
        model = cast(PeftModel, model)  # the client's model of a LoRA job
        private[LOCAL] = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=LOCAL).items()}
        self._activate(model, [SHARED])


@dataclass(frozen=True)
class FedDATConfig(MethodConfig):
    temperature: float = 3.0
    """Mutual-distillation temperature T (> 0)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class FedDAT(Method):
    name = "feddat"
    config_class = FedDATConfig
    config: FedDATConfig
    lora_on_all_layers = True

    def objective(self) -> DualAdapterObjective:
        return DualAdapterObjective(self.config.temperature)
