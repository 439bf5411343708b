"""The strategy interface of a federated tuning method, in the spirit of Flower's ``Strategy``.

A method answers three questions of the shared round (``federation.engine`` runs the round; it is the same for
every method):

- **configure**: what each selected device does this round (``configure`` → one ``DeviceConfig`` per job: the
  sub-model it holds, the trainable state it downloads, the LoRA it trains, its local objective);
- **aggregate**: the next global state from the round's uploads (``aggregate``);
- **evaluate**: which state to plug into the full model for each task (``evaluation_states``).

Two parts it uses and does not implement: the server's sub-model store (``federation.submodels.SubModels``: built
once per spec by the method's ``build_submodel``, with the public data distillation needs) and the plug-in
evaluator (``federation.evaluation.PlugInEvaluator``). A method trains LoRA unless ``lora`` is None (full
fine-tuning): that is the one signal for it.

Writing a method: subclass ``Method`` (or a method close to yours) and override only what differs; give it a
``MethodConfig`` subclass for its settings; add it to ``METHODS`` in ``federation/methods/__init__.py``
(``fedprox.py`` is the worked example).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
from transformers import GPT2LMHeadModel

from federation.adapters import LoraSpec, adapter_state, attach_lora, pad_rank, truncate_rank
from federation.aggregation import fedavg, lora_exact
from federation.client import ClientUpdate
from federation.emulator import SubModelSpec, full_spec
from federation.messages import PayloadKind
from federation.submodels import SubModels, layer_drop
from federation.training import LocalObjective, LocalTrainConfig, LossFn, lm_loss

State = dict[str, torch.Tensor]


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
class DeviceConfig:
    """One job of a device in one round, as the method configures it (Flower's ``FitIns``)."""

    device: int
    spec: SubModelSpec
    """The sub-model the device holds (a new spec means an exchange: the server sends its frozen weights)."""
    trainable: State
    """What the device downloads to train: the global adapter (LoRA) or, without LoRA, every weight of the model."""
    lora: LoraSpec | None
    """LoRA the device trains (None: every weight of its sub-model)."""
    objective: LossFn | LocalObjective
    """Its local objective (picklable, for remote executors)."""
    task: int | None = None
    """Train on the device's blocks of this task only (None: all of them)."""


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
        if not isinstance(self.num_adapter_layers, int) or self.num_adapter_layers < 1:
            raise ValueError(f"num_adapter_layers must be an integer >= 1, got {self.num_adapter_layers!r}")
        if self.lora_aggregation not in ("naive", "exact"):
            raise ValueError(f"lora_aggregation must be one of ('naive', 'exact'), got {self.lora_aggregation!r}")


class Method:
    """Base method: LoRA adapters on the adapter blocks of the full model, FedAvg by sample count."""

    name = "base"
    config_class: type[MethodConfig] = MethodConfig
    """The method's settings; a plain ``MethodConfig`` given to the constructor contributes its shared fields, a
    config of another method's class is refused (its own fields would be dropped)."""
    uses_emulator = False
    """True when ``DeviceDecision.compression`` selects a per-device emulator."""
    default_train = LocalTrainConfig(steps=10, batch_size=8, lr=3e-3)
    default_lora: LoraSpec | None = LoraSpec()
    """LoRA of the method when the config leaves it unset (rank 8 on ``c_attn``); None: full fine-tuning."""
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
        self.lora: LoraSpec | None = (self.config.lora or self.default_lora) if self.default_lora is not None else None
        """The global LoRA settings (rank r_max); None: the method trains every weight (full fine-tuning)."""

    @property
    def trainable_kind(self) -> PayloadKind:
        """What devices download and upload: "adapter" (LoRA) or "model" (every weight)."""
        return "model" if self.lora is None else "adapter"

    # --- set-up --------------------------------------------------------------------------------------
    def setup(self, models: SubModels, device_tasks: Sequence[tuple[int, ...]] = (), num_tasks: int = 1) -> None:
        """Called once by the server: its sub-model store, and the task (domain) labels each device holds."""
        self.models, self.device_tasks, self.num_tasks = models, list(device_tasks), num_tasks

    @property
    def full_model(self) -> GPT2LMHeadModel:
        return self.models.full_model

    def build_submodel(self, models: SubModels, spec: SubModelSpec) -> GPT2LMHeadModel:
        """How the store makes a sub-model (default: layer drop of the full model, no distillation)."""
        return layer_drop(models, spec)

    def init_global_state(self, seed: int) -> State:
        """Initial global trainable state in full-model coordinates (LoRA: A random, B zero; without LoRA: every
        weight of the full model)."""
        if self.lora is None:
            return {k: p.detach().clone() for k, p in self.full_model.named_parameters()}
        torch.manual_seed(seed)
        spec = self.server_spec()
        return adapter_state(attach_lora(copy.deepcopy(self.full_model), spec, self.lora), spec)

    # --- configure -----------------------------------------------------------------------------------
    def validate(self, decisions: Sequence[DeviceDecision]) -> None:
        """``ValueError`` for a round's decisions the method cannot run (checked before anything is sent)."""
        self.check_decisions(decisions)
        for decision in decisions:
            if decision.selected:
                self.device_spec(decision)  # raises for a compression the model cannot realise

    def check_decisions(self, decisions: Sequence[DeviceDecision]) -> None:
        """The checks of ``validate`` that need no model (callable before ``setup``, e.g. before loading it): ε in
        [0, 1) and 0 without an emulator, ranks within the global LoRA rank."""
        for decision in decisions:
            if not 0.0 <= decision.compression < 1.0:
                raise ValueError(f"compression must be in [0, 1), got {decision.compression}")
            if not self.uses_emulator and decision.compression != 0.0:
                raise ValueError(f"method {self.name!r} has no emulator; compression must be 0, got {decision.compression}")
            if decision.lora_rank is not None and self.lora is None:
                raise ValueError(f"method {self.name!r} trains all weights; lora_rank must be None")
            if decision.lora_rank is not None and self.lora is not None and not 1 <= decision.lora_rank <= self.lora.rank:
                raise ValueError(f"lora_rank must be in [1, {self.lora.rank}], got {decision.lora_rank}")

    def configure(self, round_idx: int, decisions: Sequence[DeviceDecision], global_state: State) -> list[DeviceConfig]:
        """The round's jobs (Flower's ``configure_fit``): ``configure_device`` of every selected device, in order."""
        return [job for device, decision in enumerate(decisions) if decision.selected
                for job in self.configure_device(device, decision, global_state)]

    def configure_device(self, device: int, decision: DeviceDecision, global_state: State) -> list[DeviceConfig]:
        """A selected device's jobs: it holds ``device_spec``, downloads the global adapter at its rank."""
        lora = self.lora_for(decision)
        return [DeviceConfig(device, self.device_spec(decision), self.download(global_state, lora), lora, self.objective())]

    def device_spec(self, decision: DeviceDecision) -> SubModelSpec:
        """Blocks a device holds for ``decision``. Default: the full model."""
        return self.server_spec()

    def objective(self) -> LossFn | LocalObjective:
        """The devices' local objective (default: next-token cross-entropy)."""
        return lm_loss

    # --- aggregate -----------------------------------------------------------------------------------
    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate]) -> State:
        """The next global state from this round's uploads (Flower's ``aggregate_fit``; they carry device, task
        and sample count). Default: ``average`` weighted by sample count."""
        return self.average([u.state for u in updates], [float(u.num_samples) for u in updates])

    def average(self, states: list[State], weights: list[float]) -> State:
        """FedAvg of uploads; LoRA uploads are zero-padded to the global rank r first.

        ``lora_aggregation="naive"``: weighted mean of A and of B separately (mean(B)·mean(A) ≠ mean(B·A)).
        ``"exact"``: ``lora_exact`` with rank r — the global B·A is the best rank-r approximation (truncated SVD) of
        the weighted mean of the devices' B_k·A_k, exact whenever that mean has rank ≤ r (e.g. Σ_k r_k ≤ r). The
        factors come back balanced (B = U√S, A = √S·Vh); components with zero singular value stay zero in A and B.
        """
        if self.lora is not None:
            states = [pad_rank(s, self.lora.rank) for s in states]
            if self.config.lora_aggregation == "exact":
                return lora_exact(states, weights, rank=self.lora.rank)
        return fedavg(states, weights)

    # --- evaluate ------------------------------------------------------------------------------------
    def evaluation_states(self, global_state: State) -> dict[int | None, State]:
        """The state to plug in per task (Flower's ``evaluate``; key None: one state for all evaluation data)."""
        return {None: global_state}

    def round_metrics(self) -> dict[str, float]:
        """Method-specific numbers of the last round, reported in ``RoundResult.metrics`` (default: none)."""
        return {}

    # --- checkpoint ----------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict, State]:
        """What the method keeps between rounds besides the global state (a checkpoint's record of it): a JSON-ready
        dict and tensors by name. Default: nothing (every round is configured from the global state alone)."""
        return {}, {}

    def load_state_dict(self, state: dict, tensors: State) -> None:
        """Continue from ``state_dict()``'s output (after ``setup`` and ``init_global_state``; the sub-model store
        is the server's). Default: a method without state accepts only an empty one."""
        if state or tensors:
            raise ValueError(f"method {self.name!r} keeps no state between rounds, got {sorted(state) + sorted(tensors)[:3]}")

    # --- helpers (not hooks) -------------------------------------------------------------------------
    def server_spec(self) -> SubModelSpec:
        """The full model with this method's adapter blocks."""
        return full_spec(self.models.num_layers, None if self.lora_on_all_layers else self.config.num_adapter_layers)

    def lora_for(self, decision: DeviceDecision | None = None) -> LoraSpec | None:
        """The LoRA a device trains: the global one at the decision's rank (None without LoRA)."""
        if self.lora is None:
            return None
        rank = decision.lora_rank if decision is not None and decision.lora_rank is not None else self.lora.rank
        return LoraSpec(rank, self.lora.alpha_per_rank, self.lora.target_modules)

    def download(self, global_state: State, lora: LoraSpec | None) -> State:
        """What a device training ``lora`` downloads: the global adapter truncated to its rank."""
        if lora is not None and self.lora is not None and lora.rank < self.lora.rank:
            return truncate_rank(global_state, lora.rank)
        return global_state

    def device_decisions(self, num_devices: int, compression: float = 0.0) -> list[DeviceDecision]:
        """The method's default decisions: every device selected with ``compression`` and the global rank."""
        return [DeviceDecision(True, compression) for _ in range(num_devices)]
