"""HetLoRA (Cho et al. 2023): heterogeneous LoRA ranks per device, rank self-pruning, sparsity-weighted aggregation.

- Global rank r_max = ``lora.rank``; LoRA on every block of the full model (FedPETuning with per-device
  ranks; no emulator). Device k downloads the first r_k components of the global adapter (A[:r_k], B[:, :r_k]).
- Device ranks: r_k is ``decision.lora_rank`` (r_max when None), capped by the device's self-pruned rank.
  ``HetLoRAConfig.ranks`` is applied by ``HetLoRA.device_decisions``, which builds the per-device decisions (ranks
  cycled over device indices) for the CLI / scripts; the env's rank head sets ``lora_rank`` itself.
- Local objective (``HetLoRALoss``): LM loss + λ·Σ_modules ‖B[:, ⌊γr⌋:r]‖_F·‖A[⌊γr⌋:r, :]‖_F, which pushes the
  tail components of each adapter towards zero.
- Rank self-pruning, the device's own step (on by default, λ = 0.01, γ = 0.99 as in the paper): after local
  training the device compares its tail norm with the one it had after its previous round; when the tail shrank,
  it prunes r ← max(r_min, ⌊γr⌋), uploads only the kept components and keeps that rank from then on (the norm is
  kept on the device, never uploaded). The server learns the pruned rank from the upload's shape and sends the
  device at most that many components afterwards (``device_ranks``).
- Aggregation: every upload is zero-padded to r_max; ``aggregation="sparsity"`` weights device k per module by
  p_k = ‖B_k A_k‖_F / Σ_j ‖B_j A_j‖_F (``federation.aggregation.hetlora``; sample counts are not used),
  ``"zero-pad"`` is the HetLoRA paper's baseline: the sample-weighted mean of the padded factors. Either can be
  exact (``lora_aggregation="exact"``): the weighted mean of the products, re-factorised at rank r_max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, cast

import torch
from torch import nn

from federation.adapters import LoraSpec, lora_rank_of, pad_rank, truncate_rank
from federation.aggregation import hetlora, lora_exact, zero_pad_average
from federation.client import SERVER_DEVICE, ClientUpdate
from federation.methods.base import DeviceConfig, DeviceDecision, Method, MethodConfig, State
from federation.training import LocalObjective, lm_loss


def _tail_start(rank: int, gamma: float) -> int:
    """⌊γr⌋: the first component of the tail (float slack so that e.g. γ·r = 7.0000000001 floors to 7)."""
    return math.floor(gamma * rank + 1e-9)


@dataclass(frozen=True)
class HetLoRALoss(LocalObjective):
    """HetLoRA's local step: LM loss + ``lam``·Σ_modules ‖B[:, ⌊γr⌋:r]‖_F·‖A[⌊γr⌋:r, :]‖_F over the model's peft
    LoRA modules, then (``self_prune``) the rank self-pruning described in the module docstring.

    Picklable (module-level, plain fields), so remote executors can ship it with the job. The device's previous
    tail norm and pruned rank live in the client's ``private`` dict (keys "tail_norm", "rank")."""

    lam: float = 0.01
    """λ: weight of the rank self-pruning regulariser."""
    gamma: float = 0.99
    """γ: the tail starts at component ⌊γr⌋ of each rank-r adapter."""
    self_prune: bool = True
    """Prune the rank when the tail norm shrank since the device's previous round."""
    min_rank: int = 1
    """r_min: self-pruning never goes below this rank."""

    def tail_norm(self, model: nn.Module) -> torch.Tensor:
        """Σ over LoRA modules (adapter "default") of ‖B[:, ⌊γr⌋:r]‖_F·‖A[⌊γr⌋:r, :]‖_F (differentiable)."""
        terms = []
        for a, b in _lora_factors(model):  # A (r, in), B (out, r)
            start = _tail_start(a.shape[0], self.gamma)
            terms.append(torch.linalg.matrix_norm(b[:, start:]) * torch.linalg.matrix_norm(a[start:]))
        return torch.stack(terms).sum()

    def loss(self, model: nn.Module, batch: torch.Tensor, stage: int = 0) -> torch.Tensor:
        return lm_loss(model, batch) + self.lam * self.tail_norm(model)

    def __call__(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return self.loss(model, batch)

    def finish(self, model: nn.Module, private: dict) -> None:
        """Self-prune: r ← max(r_min, ⌊γr⌋) when the tail norm is below the one after the device's previous round."""
        with torch.no_grad():
            norm = float(self.tail_norm(model))
        rank = min(_lora_factors(model)[0][0].shape[0], private.get("rank", math.inf))
        previous = private.get("tail_norm")
        private["tail_norm"] = norm
        if self.self_prune and previous is not None and norm < previous:
            private["rank"] = max(self.min_rank, _tail_start(rank, self.gamma))

    def upload(self, state: dict[str, torch.Tensor], private: dict) -> dict[str, torch.Tensor]:
        """Only the components of the device's (possibly pruned) rank."""
        rank = private.get("rank")
        return truncate_rank(state, rank) if rank is not None and rank < lora_rank_of(state) else state


def _lora_factors(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(A (r, in), B (out, r)) of every peft LoRA module (adapter "default") of ``model``."""
    factors = []
    for module in model.modules():
        a_dict, b_dict = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if isinstance(a_dict, nn.ModuleDict) and isinstance(b_dict, nn.ModuleDict) and "default" in a_dict:
            a, b = cast(nn.Linear, a_dict["default"]), cast(nn.Linear, b_dict["default"])  # peft's LoRA A and B
            factors.append((a.weight, b.weight))
    if not factors:
        raise ValueError("HetLoRALoss needs a model with peft LoRA modules (lora_A / lora_B, adapter 'default')")
    return factors


@dataclass(frozen=True)
class HetLoRAConfig(MethodConfig):
    ranks: tuple[int, ...] | None = None
    """Default per-device ranks, cycled over device indices by ``HetLoRA.device_decisions`` (None: r_max)."""
    lam: float = 0.01
    """λ of the rank self-pruning regulariser (0: plain LM loss)."""
    gamma: float = 0.99
    """γ in (0, 1): the tail is components ⌊γr⌋..r−1."""
    aggregation: Literal["sparsity", "zero-pad"] = "sparsity"
    """"sparsity": HetLoRA's norm-weighted average; "zero-pad": sample-weighted average of padded factors."""
    self_prune: bool = True
    """Each device prunes its own rank when its tail norm shrank since its previous round (HetLoRA's default)."""
    min_rank: int = 1
    """r_min: self-pruning never goes below this rank."""

    def __post_init__(self) -> None:
        super().__post_init__()
        r_max = (self.lora or HetLoRA.default_lora).rank
        if self.ranks is not None and (not self.ranks or any(not 1 <= r <= r_max for r in self.ranks)):
            raise ValueError(f"ranks must be a non-empty tuple of ranks in [1, lora.rank={r_max}], got {self.ranks}")
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma}")
        if self.aggregation not in ("sparsity", "zero-pad"):
            raise ValueError(f"aggregation must be one of ('sparsity', 'zero-pad'), got {self.aggregation!r}")
        if not 1 <= self.min_rank <= r_max:
            raise ValueError(f"min_rank must be in [1, lora.rank={r_max}], got {self.min_rank}")


class HetLoRA(Method):
    name = "hetlora"
    config_class = HetLoRAConfig
    config: HetLoRAConfig
    default_lora: LoraSpec  # the inherited LoraSpec(): HetLoRA always trains LoRA
    lora: LoraSpec
    lora_on_all_layers = True

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.device_ranks: dict[int, int] = {}
        """Device → its self-pruned rank, as its uploads showed (devices that never pruned are absent)."""
        self._sent_ranks: dict[int, int] = {}
        """Device → the rank it was sent this round."""

    def device_decisions(self, num_devices: int, compression: float = 0.0) -> list[DeviceDecision]:
        """All devices selected, device i with rank ``ranks[i % len(ranks)]`` (None: the global rank)."""
        ranks = self.config.ranks
        return [DeviceDecision(True, compression, None if ranks is None else ranks[i % len(ranks)]) for i in range(num_devices)]

    def objective(self) -> HetLoRALoss:
        return HetLoRALoss(self.config.lam, self.config.gamma, self.config.self_prune, self.config.min_rank)

    def _rank(self, device: int, decision: DeviceDecision) -> int:
        r_max = self.lora.rank
        wanted = decision.lora_rank if decision.lora_rank is not None else r_max
        return min(wanted, self.device_ranks.get(device, r_max))

    def configure_device(self, device: int, decision: DeviceDecision, global_state: State) -> list[DeviceConfig]:
        """The device trains (and downloads) the first r_k components: its chosen rank, capped by its pruned one."""
        rank = self._sent_ranks[device] = self._rank(device, decision)
        return super().configure_device(device, replace(decision, lora_rank=rank), global_state)

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate]) -> State:
        """Record the ranks devices pruned to (an upload with fewer components than it was sent), then ``average``."""
        for u in updates:
            sent = self._sent_ranks.get(u.device, self.lora.rank)
            if u.device != SERVER_DEVICE and lora_rank_of(u.state) < sent:
                self.device_ranks[u.device] = lora_rank_of(u.state)
        return self.average([u.state for u in updates], [float(u.num_samples) for u in updates])

    def round_metrics(self) -> dict[str, float]:
        return {"pruned_devices": float(len(self.device_ranks))}

    def state_dict(self) -> tuple[dict, State]:
        """The devices' pruned ranks and the ranks they were sent last (JSON keys are strings)."""
        return {"device_ranks": {str(d): r for d, r in self.device_ranks.items()},
                "sent_ranks": {str(d): r for d, r in self._sent_ranks.items()}}, {}

    def load_state_dict(self, state: dict, tensors: State) -> None:
        self.device_ranks = {int(d): int(r) for d, r in state["device_ranks"].items()}
        self._sent_ranks = {int(d): int(r) for d, r in state["sent_ranks"].items()}

    def average(self, states: list[State], weights: list[float]) -> State:
        """Zero-pad to r_max, then the configured HetLoRA aggregation; ``lora_aggregation="exact"`` averages the
        products B_k·A_k with the same weights (norm-based or sample counts) and re-factorises at rank r_max."""
        cfg, r_max = self.config, self.lora.rank
        padded = [pad_rank(s, r_max) for s in states]
        exact = cfg.lora_aggregation == "exact"
        if cfg.aggregation == "sparsity":
            return hetlora(padded, exact_rank=r_max if exact else None)
        return lora_exact(padded, weights, rank=r_max) if exact else zero_pad_average(padded, weights)
