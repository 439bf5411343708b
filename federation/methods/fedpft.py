"""FedPFT (Peng et al. 2024): a sub-model built by FFN neuron pruning, aligned to the full model by distillation.

- Sub-model: every block of the full model; the FFN of each middle block keeps its top ``keep_ratio`` neurons by
  saliency s_j = ‖[c_fc.weight[:, j], c_proj.weight[j, :]]‖₂ (paper: 25%); the ``num_adapter_layers`` bottom and top
  blocks stay whole. Attention is never pruned, so LoRA sits on ``c_attn`` of every block and plugs into the full
  model unchanged. With keep_ratio 0.25 and one whole block at each end, the sub-model has as many parameters as
  a layer-drop emulator of ε = 0.5 (FFN = 2/3 of a block): the FedOT comparison at equal sub-model size.
- Layer-level distillation before FL (``distill_steps``): normalised MSE between every block's output hidden state
  in the sub-model and in the full model + ``weight_product``·‖W_out W_in − W'_out W'_in‖/‖W_out W_in‖, trained
  with gradients (``federation.pruning.distill_pruned``) on the server's public data (pretraining domain).
- Neuron-level distillation during FL: every ``refresh_every`` rounds (paper: 10) the server ranks each pruned
  block's kept neurons by mean |activation| on public data and distils the least active ``refresh_fraction`` (ρ,
  0.5) of them towards the full model (``refresh_steps`` steps of the same loss as above; only those neurons' weights
  change, ``federation.pruning.distill_pruned(neurons=...)``). The sub-model's ``revision`` goes up, so every device
  downloads the refreshed sub-model in its next round (logged as an emulator exchange).
- Aggregation: FedAvg of the LoRA adapters (``--lora-aggregation exact`` also applies).
- ``DeviceDecision.compression`` must be 0: the sub-model is set by ``keep_ratio``, not by the controller.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

from transformers import GPT2LMHeadModel

from federation.emulator import SubModelSpec, build_emulator
from federation.emulator import build_submodel as model_from_payload
from federation.methods.base import DeviceConfig, DeviceDecision, Method, MethodConfig, State
from federation.pruning import PRUNED_DISTILL, distill_pruned, ffn_activation_scores, least_active, pruned_spec
from federation.submodels import SubModels


@dataclass(frozen=True)
class FedPFTConfig(MethodConfig):
    keep_ratio: float = 0.25
    """Share of FFN neurons a middle block keeps, in (0, 1]."""
    distill_steps: int = 50
    """Layer-level distillation steps on the server before the sub-model is first sent (0: none)."""
    distill_blocks: int = 512
    """Public pretraining-domain blocks used for distillation and activation scores."""
    weight_product: float = 1.0
    """α: weight of the FFN weight-product term in the layer-level distillation loss."""
    refresh_every: int = 10
    """R: neuron-level distillation every R rounds (0: never)."""
    refresh_fraction: float = 0.5
    """ρ: share of each pruned block's kept neurons (the least active) updated at a refresh, in [0, 1]."""
    refresh_steps: int = 20
    """Neuron-level distillation steps at each refresh."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        for name in ("distill_steps", "refresh_every", "refresh_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.distill_blocks < 1:
            raise ValueError(f"distill_blocks must be >= 1, got {self.distill_blocks}")
        if not self.weight_product >= 0:
            raise ValueError(f"weight_product must be >= 0, got {self.weight_product}")
        if not 0.0 <= self.refresh_fraction <= 1.0:
            raise ValueError(f"refresh_fraction must be in [0, 1], got {self.refresh_fraction}")


class FedPFT(Method):
    name = "fedpft"
    config_class = FedPFTConfig
    config: FedPFTConfig
    uses_emulator = True
    lora_on_all_layers = True

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self._spec: SubModelSpec | None = None
        self._refreshed = 0

    def check_decisions(self, decisions: Sequence[DeviceDecision]) -> None:
        for decision in decisions:
            if decision.compression != 0.0:
                raise ValueError(f"fedpft's sub-model is set by keep_ratio; compression must be 0, got {decision.compression}")
        super().check_decisions(decisions)

    def current_spec(self) -> SubModelSpec:
        """The sub-model every device holds now (changes at each neuron refresh)."""
        if self._spec is None:
            self._spec = pruned_spec(self.full_model, self.config.keep_ratio, self.config.num_adapter_layers)
        return self._spec

    def device_spec(self, decision: DeviceDecision) -> SubModelSpec:
        return self.current_spec()

    def build_submodel(self, models: SubModels, spec: SubModelSpec) -> GPT2LMHeadModel:
        model = build_emulator(models.full_model, spec)
        if self.config.distill_steps > 0:
            distill_pruned(models.full_model, model, spec, models.public_blocks(self.config.distill_blocks),
                           replace(PRUNED_DISTILL, steps=self.config.distill_steps), self.config.weight_product)
        return model

    def configure(self, round_idx: int, decisions: Sequence[DeviceDecision], global_state: State) -> list[DeviceConfig]:
        """Neuron-level distillation before rounds R+1, 2R+1, … (after every R rounds of FL), then the jobs."""
        self._refreshed = 0
        cfg = self.config
        if cfg.refresh_every and round_idx > 1 and (round_idx - 1) % cfg.refresh_every == 0 and cfg.refresh_fraction > 0:
            self._refresh()
        return super().configure(round_idx, decisions, global_state)

    def _refresh(self) -> None:
        cfg, spec = self.config, self.current_spec()
        model = copy.deepcopy(self.models.get(spec))
        public = self.models.public_blocks(cfg.distill_blocks)
        scores = ffn_activation_scores(model, public[:64], sorted(spec.pruned_neurons()))
        chosen = {block: least_active(score, cfg.refresh_fraction) for block, score in scores.items()}
        distill_pruned(self.full_model, model, spec, public, replace(PRUNED_DISTILL, steps=cfg.refresh_steps,
                       seed=spec.revision + 1), cfg.weight_product, neurons=chosen)
        self._spec = replace(spec, revision=spec.revision + 1)
        self.models.put(self._spec, model)
        self._refreshed = sum(len(idx) for idx in chosen.values())

    def round_metrics(self) -> dict[str, float]:
        return {"distilled_neurons": float(self._refreshed)}

    def state_dict(self) -> tuple[dict, State]:
        """The current sub-model (kept neurons and revision), the last round's refresh count and, once refreshed, the
        current revision's weights (the builder cannot remake them; older revisions are never trained on again)."""
        spec = self._spec
        tensors = self.models.payload(spec) if spec is not None and spec.revision > 0 else {}
        return {"spec": None if spec is None else spec.to_dict(), "refreshed": self._refreshed}, tensors

    def load_state_dict(self, state: dict, tensors: State) -> None:
        self._spec = None if state["spec"] is None else SubModelSpec.from_dict(state["spec"])
        self._refreshed = int(state["refreshed"])
        if self._spec is not None and self._spec.revision > 0:
            self.models.put(self._spec, model_from_payload(self.full_model.config, self._spec, tensors))
