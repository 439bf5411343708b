"""Fed-FT: every device fine-tunes all weights of the full model; the server averages whole models (FedAvg)."""

from __future__ import annotations

from federation.methods.base import Method
from federation.training import LocalTrainConfig


class FedFT(Method):
    name = "fed-ft"
    default_lora = None  # full fine-tuning
    default_train = LocalTrainConfig(steps=10, batch_size=8, lr=3e-4)
