"""Fed-FT: every device fine-tunes all weights of the full model; the server averages whole models (FedAvg)."""

from __future__ import annotations

from federation.adapters import LoraSpec
from federation.methods.base import DeviceDecision, Method
from federation.training import LocalTrainConfig


class FedFT(Method):
    name = "fed-ft"
    trainable_kind = "model"
    default_train = LocalTrainConfig(steps=10, batch_size=8, lr=3e-4)

    def lora_spec(self, decision: DeviceDecision | None = None) -> LoraSpec | None:
        return None
