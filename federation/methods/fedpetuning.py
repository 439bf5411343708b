"""FedPETuning: LoRA on every block of the full model on each device; the server averages the LoRA tensors."""

from __future__ import annotations

from federation.methods.base import Method


class FedPETuning(Method):
    name = "fedpetuning"
    lora_on_all_layers = True
