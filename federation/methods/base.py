"""The method interface: what a federated tuning method chooses on the shared round.

A method = which sub-model a device holds (``device_spec``) + what is trainable (LoRA or all weights) + the
local objective (``loss_fn``) + the aggregation (``aggregate``). The round loop itself lives in
``federation.engine`` and is the same for every method.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
from transformers import GPT2LMHeadModel

from federation.adapters import LoraSpec, adapter_state, attach_lora, load_adapter_state, pad_rank, truncate_rank
from federation.aggregation import fedavg, lora_exact
from federation.client import ClientUpdate
from federation.data import pretraining_blocks
from federation.emulator import SubModelSpec, build_emulator, full_spec, model_payload
from federation.messages import PayloadKind
from federation.training import LocalObjective, LocalTrainConfig, LossFn, lm_loss


@dataclass(frozen=True)
class DeviceDecision:
    """The controller's choice for one device in one round."""

    selected: bool = True
    """Whether the device trains and uploads this round."""
    compression: float = 0.0
    """Emulator compression ratio ε = 1 − k/M (methods without emulators require 0)."""
    lora_rank: int | None = None
    """LoRA rank for this device (None: the method's global rank; must not exceed it)."""


@dataclass(frozen=True)
class MethodConfig:
    """Settings shared by every method."""

    num_adapter_layers: int = 1
    """l: bottom and top blocks that form the adapter (each side)."""
    lora: LoraSpec | None = None
    """Global LoRA hyper-parameters (rank r_max for per-device truncation); None takes the method's default."""
    train: LocalTrainConfig | None = None
    """Local training settings; None takes the method's default."""
    lora_aggregation: Literal["naive", "exact"] = "naive"
    """LoRA aggregation: "naive" averages A and B separately; "exact" re-factorises the mean of B_k·A_k (§8)."""

    def __post_init__(self) -> None:
        if self.lora_aggregation not in ("naive", "exact"):
            raise ValueError(f"lora_aggregation must be one of ('naive', 'exact'), got {self.lora_aggregation!r}")


class Method:
    """Base method: LoRA adapters on the adapter blocks of the full model, FedAvg by sample count.

    Subclasses override the hooks below; every hook is called by the shared round in ``federation.engine``.
    """

    name = "base"
    config_class: type[MethodConfig] = MethodConfig
    """The method's settings; a plain ``MethodConfig`` given to the constructor contributes its shared fields, a
    config of another method's class is refused (its own fields would be dropped)."""
    uses_emulator = False
    """True when ``DeviceDecision.compression`` selects a per-device emulator."""
    trainable_kind: PayloadKind = "adapter"
    default_train = LocalTrainConfig(steps=10, batch_size=8, lr=3e-3)
    default_lora = LoraSpec()
    """LoRA of the method when the config leaves it unset (rank 8 on ``c_attn``)."""
    lora_on_all_layers = False
    """LoRA on every block (FedPETuning) instead of only the adapter blocks."""
    multi_task = False
    """One job per (device, task it holds) each round, each with its own adapter (FL-TAC)."""

    def __init__(self, config: MethodConfig | None = None) -> None:
        if config is not None and not isinstance(config, (MethodConfig, self.config_class)):
            raise ValueError(f"{self.name} takes a {self.config_class.__name__}, got {type(config).__name__}")
        if not isinstance(config, self.config_class):  # a plain MethodConfig: its shared fields carry over
            base = config or MethodConfig()
            shared = {f.name for f in fields(MethodConfig)}
            dropped = [f.name for f in fields(base) if f.name not in shared]
            if dropped:
                raise ValueError(f"{self.name} takes a {self.config_class.__name__} (or a plain MethodConfig); a "
                                 f"{type(base).__name__} would drop its fields {dropped}")
            config = self.config_class(**{name: getattr(base, name) for name in shared})
        self.config = config
        self.train_config = self.config.train or self.default_train
        self.lora = self.config.lora or self.default_lora
        """The global LoRA settings (rank r_max): ``config.lora`` or the method's ``default_lora``."""

    # --- what a device holds -------------------------------------------------------------------------
    def validate_decision(self, decision: DeviceDecision) -> None:
        if not 0.0 <= decision.compression < 1.0:
            raise ValueError(f"compression must be in [0, 1), got {decision.compression}")
        if not self.uses_emulator and decision.compression != 0.0:
            raise ValueError(f"method {self.name!r} has no emulator; compression must be 0, got {decision.compression}")
        if decision.lora_rank is not None and self.lora_spec(decision) is None:
            raise ValueError(f"method {self.name!r} trains all weights; lora_rank must be None")
        if decision.lora_rank is not None and not 1 <= decision.lora_rank <= self.lora.rank:
            raise ValueError(f"lora_rank must be in [1, {self.lora.rank}], got {decision.lora_rank}")

    def device_spec(self, num_layers: int, decision: DeviceDecision) -> SubModelSpec:
        """Blocks the device holds. Default: the full model."""
        return self.server_spec(num_layers)

    def server_spec(self, num_layers: int) -> SubModelSpec:
        """The full model with this method's adapter blocks."""
        return full_spec(num_layers, None if self.lora_on_all_layers else self.config.num_adapter_layers)

    def lora_spec(self, decision: DeviceDecision | None = None) -> LoraSpec | None:
        """LoRA of the device (None: full fine-tuning of every weight of its sub-model)."""
        rank = decision.lora_rank if decision is not None and decision.lora_rank is not None else self.lora.rank
        return LoraSpec(rank, self.lora.alpha_per_rank, self.lora.target_modules)

    def device_decisions(self, num_devices: int, compression: float = 0.0) -> list[DeviceDecision]:
        """The method's default decisions: every device selected with ``compression`` and the global rank."""
        return [DeviceDecision(True, compression) for _ in range(num_devices)]

    # --- global state --------------------------------------------------------------------------------
    def init_global_state(self, full_model: GPT2LMHeadModel, seed: int) -> dict[str, torch.Tensor]:
        """Initial global trainable state in full-model coordinates (LoRA: A random, B zero; without LoRA: every
        weight of the full model)."""
        if self.lora_spec() is None:
            return {k: p.detach().clone() for k, p in full_model.named_parameters()}
        torch.manual_seed(seed)
        spec = self.server_spec(full_model.config.n_layer)
        return adapter_state(attach_lora(copy.deepcopy(full_model), spec, self.lora_spec()), spec)

    def state_for_device(self, global_state: dict[str, torch.Tensor], decision: DeviceDecision) -> dict[str, torch.Tensor]:
        """What the device downloads each round: the global adapter, truncated to the device's rank."""
        lora = self.lora_spec(decision)
        if lora is not None and lora.rank < self.lora.rank:
            return truncate_rank(global_state, lora.rank)
        return global_state

    def device_lora(self, device: int, decision: DeviceDecision) -> LoraSpec | None:
        """LoRA that ``device`` trains this round (default: ``lora_spec(decision)``)."""
        return self.lora_spec(decision)

    def trainable_for(self, device: int, task: int | None, decision: DeviceDecision,
                      global_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What ``device`` downloads for ``task`` (None unless ``multi_task``); default ``state_for_device``."""
        return self.state_for_device(global_state, decision)

    def loss_fn(self) -> LossFn | LocalObjective:
        """Local objective (picklable, for remote executors)."""
        return lm_loss

    def aggregate_updates(self, global_state: dict[str, torch.Tensor], updates: Sequence[ClientUpdate]) -> dict[str, torch.Tensor]:
        """The next global state from this round's uploads (they carry device, task and sample count); default:
        ``aggregate`` weighted by sample count."""
        return self.aggregate([u.state for u in updates], [float(u.num_samples) for u in updates])

    def aggregate(self, states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
        """FedAvg of the uploads; LoRA uploads are zero-padded to the global rank r first.

        ``lora_aggregation="naive"``: weighted mean of A and of B separately (mean(B)·mean(A) ≠ mean(B·A)).
        ``"exact"``: ``lora_exact`` with rank r — the global B·A is the best rank-r approximation (truncated SVD) of
        the weighted mean of the devices' B_k·A_k, exact whenever that mean has rank ≤ r (e.g. Σ_k r_k ≤ r). The
        factors come back balanced (B = U√S, A = √S·Vh); components with zero singular value stay zero in A and B.
        """
        if self.lora_spec() is not None:
            states = [pad_rank(s, self.lora.rank) for s in states]
            if self.config.lora_aggregation == "exact":
                return lora_exact(states, weights, rank=self.lora.rank)
        return fedavg(states, weights)

    # --- server-side models ----------------------------------------------------------------------
    def setup(self, full_model: GPT2LMHeadModel, tokenizer) -> None:
        """Called once by the server with the full model and its tokenizer."""
        self.full_model = full_model
        self.tokenizer = tokenizer
        self._submodels: dict[SubModelSpec, GPT2LMHeadModel] = {}
        self._public: torch.Tensor | None = None

    def public_blocks(self, count: int) -> torch.Tensor:
        """The server's public data for distillation: ``count`` blocks of the pretraining domains (``pretraining_blocks``)."""
        if self._public is None:
            self._public = pretraining_blocks(self.tokenizer, self.full_model.config.n_positions)
        return self._public[:count]

    def submodel(self, spec: SubModelSpec) -> GPT2LMHeadModel:
        """The frozen sub-model the server sends for ``spec`` (built once per spec)."""
        if spec not in self._submodels:
            self._submodels[spec] = self.build_submodel(spec)
        return self._submodels[spec]

    def build_submodel(self, spec: SubModelSpec) -> GPT2LMHeadModel:
        """Hook: how a sub-model is made (default: layer drop of the full model, no distillation)."""
        return build_emulator(self.full_model, spec)

    def frozen_payload(self, spec: SubModelSpec) -> dict[str, torch.Tensor]:
        """Frozen weights a device needs for ``spec`` (empty when every weight is trainable)."""
        if self.lora_spec() is None:
            return {}
        return model_payload(self.submodel(spec), spec)

    def validate_round(self, decisions: list[DeviceDecision]) -> None:
        """Hook: cross-device constraints on one round's decisions (default: none)."""

    def bind_tasks(self, device_tasks: Sequence[tuple[int, ...]], num_tasks: int) -> None:
        """Called once by the server: the task (domain) labels each device holds, and how many tasks there are."""
        self.device_tasks, self.num_tasks = list(device_tasks), num_tasks

    def begin_round(self, round_idx: int) -> None:
        """Hook at the start of every round, before devices are configured (default: nothing)."""

    def round_metrics(self) -> dict[str, float]:
        """Method-specific numbers of the last round, reported in ``RoundResult.metrics`` (default: none)."""
        return {}

    # --- evaluation (plug-in) ------------------------------------------------------------------------
    def evaluation_model(self, spec: SubModelSpec | None = None):
        """A model to evaluate the global state with: the full model (``spec`` None) or a sub-model, with
        LoRA attached when the method uses it. The server builds it once per spec and reloads the state."""
        model = copy.deepcopy(self.full_model if spec is None else self.submodel(spec))
        spec = spec or self.server_spec(self.full_model.config.n_layer)
        lora = self.lora_spec()
        return attach_lora(model, spec, lora) if lora is not None else model

    def evaluation_states(self, global_state: dict[str, torch.Tensor]) -> dict[int | None, dict[str, torch.Tensor]]:
        """Trainable state to evaluate per task (key None: one state for all evaluation data)."""
        return {None: global_state}

    def load_for_evaluation(self, model, global_state: dict[str, torch.Tensor], spec: SubModelSpec) -> None:
        if self.lora_spec() is not None:
            load_adapter_state(model, global_state, spec)
        else:
            missing, unexpected = model.load_state_dict({spec.to_sub_key(k): v for k, v in global_state.items()}, strict=False)
            if unexpected:
                raise ValueError(f"global state has keys the model lacks: {unexpected[:3]}")
