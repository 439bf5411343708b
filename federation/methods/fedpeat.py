"""FedPEAT: layer-drop emulators + LoRA adapters, per-device compression and selection each round.

Frozen-weight cases (Chua et al. 2023, "FedPEAT"):

| case | frozen weights w'                  | here                                                                  |
|------|------------------------------------|-----------------------------------------------------------------------|
| 1    | per-device emulators (w'_c ≠ w'_s) | each selected device gets the emulator of its own ε_i                  |
| 2    | the server's own (w'_s = w'_c ≠ ∅) | every device holds the full model's frozen weights (PEFT in FL); ε = 0 |
| 3    | none (w'_s = w'_c = ∅)             | plain FL of all weights of the full model (Fed-FT mechanics)           |

``shared_emulator=True`` (case 1 only) asks every selected device of a round to hold the same emulator (one ε per
round, as Offsite-Tuning's single emulator in FL, and as FedOT). It is not one of the seed's cases: case 1 with a
constraint on the controller.

Optional emulator distillation (``distill_steps`` > 0): the server distils each emulator's kept middle blocks
towards the full model on its public data (the pretraining domain) before sending it (Offsite-Tuning).
Server–device collaborative tuning is the engine's ``server_fraction`` option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import GPT2LMHeadModel

from federation.adapters import LoraSpec
from federation.architecture import ALL_LINEAR
from federation.emulator import SubModelSpec, build_emulator, distill_emulator, layer_drop_spec
from federation.methods.base import DeviceDecision, Method, MethodConfig
from federation.submodels import SubModels
from federation.training import DistillConfig, LocalTrainConfig


@dataclass(frozen=True)
class FedPEATConfig(MethodConfig):
    case: int = 1
    """Frozen-weight sharing case (1, 2 or 3; table above)."""
    shared_emulator: bool = False
    """Case 1 only: every selected device of a round holds the same emulator (one compression per round)."""
    distill_steps: int = 0
    """Emulator distillation steps on the server before an emulator is first sent (0: none)."""
    distill_blocks: int = 512
    """Public pretraining-domain blocks used for distillation."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.case not in (1, 2, 3):
            raise ValueError(f"case must be one of (1, 2, 3), got {self.case}")
        if self.shared_emulator and self.case != 1:
            raise ValueError(f"shared_emulator applies to case 1 only (cases 2 and 3 have no emulator), got case {self.case}")
        if self.distill_steps < 0:
            raise ValueError(f"distill_steps must be >= 0, got {self.distill_steps}")


class FedPEAT(Method):
    name = "fedpeat"
    config_class = FedPEATConfig
    config: FedPEATConfig
    default_lora = LoraSpec(rank=8, target_modules=ALL_LINEAR)
    """PEAT's adapter: LoRA r = 8 on every linear layer of the bottom/top adapter blocks (attention and FFN)."""

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.uses_emulator = self.config.case == 1
        if self.config.case == 3:  # plain FL of every weight (Fed-FT mechanics)
            self.lora = None
            if self.config.train is None:
                self.train_config = LocalTrainConfig(steps=10, batch_size=8, lr=3e-4)

    def device_spec(self, decision: DeviceDecision) -> SubModelSpec:
        if not self.uses_emulator:
            return self.server_spec()
        return layer_drop_spec(self.models.num_layers, self.config.num_adapter_layers, decision.compression)

    def validate(self, decisions: Sequence[DeviceDecision]) -> None:
        super().validate(decisions)
        selected = [d for d in decisions if d.selected]
        if self.config.shared_emulator and len({self.device_spec(d) for d in selected}) > 1:
            raise ValueError(f"shared_emulator: selected devices need one compression, got "
                             f"{sorted({d.compression for d in selected})}")

    def build_submodel(self, models: SubModels, spec: SubModelSpec) -> GPT2LMHeadModel:
        emulator = build_emulator(models.full_model, spec)
        if self.config.distill_steps > 0 and spec.kept_middle < spec.num_middle:
            distill_emulator(models.full_model, emulator, spec, models.public_blocks(self.config.distill_blocks),
                             DistillConfig(steps=self.config.distill_steps))
        return emulator
