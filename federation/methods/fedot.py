"""FedOT: federated Offsite-Tuning (Xiao et al. 2023) — one shared, distilled layer-drop emulator for every device.

The server builds a single uniform layer-drop emulator of compression ``FedOTConfig.compression`` (adapter blocks
+ evenly spaced middle blocks), distils its kept middle blocks towards the full model on its public data
(Offsite-Tuning's LM + 30·MSE loss, ``distill_steps`` > 0, on by default) and sends it once to each device. Devices
train LoRA on the bottom/top adapter blocks through it; the server averages the adapters and evaluates them
plugged into the full model. It is FedPEAT case 1 with ``shared_emulator`` and the emulator fixed by the method
instead of the controller.

Compression rule: a device's ``DeviceDecision.compression`` must be 0 (take the method's emulator — what
``RoundRunner.default_decisions()`` sends) or equal ``FedOTConfig.compression``; anything else is a ``ValueError``.
Either way every device holds the same emulator (``DeviceRound.compression`` reports the decision's value, so 0
for default decisions; ``kept_blocks`` shows the emulator actually held). A plain ``MethodConfig`` contributes its
shared fields (the rest take FedOT defaults); a ``FedPEATConfig`` is refused, as its own fields would be dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from federation.emulator import SubModelSpec, layer_drop_spec
from federation.methods.base import DeviceDecision
from federation.methods.fedpeat import FedPEAT, FedPEATConfig


@dataclass(frozen=True)
class FedOTConfig(FedPEATConfig):
    shared_emulator: bool = True
    """Always True: one emulator shared by all devices."""
    distill_steps: int = 50
    """Emulator distillation steps on the server before the emulator is first sent (0: plain layer drop)."""
    compression: float = 0.5
    """Compression ε = 1 − k/M of the shared emulator, in [0, 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.case != 1 or not self.shared_emulator:
            raise ValueError(f"fedot shares one emulator: case must be 1 and shared_emulator True, got case={self.case}, "
                             f"shared_emulator={self.shared_emulator}")
        if not 0.0 <= self.compression < 1.0:
            raise ValueError(f"compression must be in [0, 1), got {self.compression}")


class FedOT(FedPEAT):
    name = "fedot"
    config_class = FedOTConfig
    config: FedOTConfig

    def check_decisions(self, decisions: Sequence[DeviceDecision]) -> None:
        super().check_decisions(decisions)
        for decision in decisions:
            if decision.compression not in (0.0, self.config.compression):
                raise ValueError(f"fedot shares one emulator: compression must be 0 (use the method's) or "
                                 f"{self.config.compression}, got {decision.compression}")

    def device_spec(self, decision: DeviceDecision) -> SubModelSpec:
        """The one emulator every device holds, whatever the decision."""
        return layer_drop_spec(self.models.num_layers, self.config.num_adapter_layers, self.config.compression)
