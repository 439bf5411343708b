"""Layer-drop emulators (Offsite-Tuning style), their payloads in full-model coordinates, and distillation.

A GPT-2 with L blocks is split into ``l`` bottom and ``l`` top *adapter* blocks (tunable, or carrying LoRA) and
M = L − 2l *middle* blocks. An emulator keeps k of the M middle blocks (compression ε = 1 − k/M) plus the
embeddings, the adapter blocks and the final layer norm. A sub-model may also keep only some FFN neurons of a
block (FedPFT): neuron j is ``mlp.c_fc.weight[:, j]``, ``mlp.c_fc.bias[j]``, ``mlp.c_proj.weight[j, :]``. Tensors cross the wire under their **full-model** key
names (``transformer.h.<full index>…``), so a device's payload shows exactly which blocks it received.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Block
from transformers.pytorch_utils import Conv1D

from federation.architecture import keep_for_compression
from federation.foundation import causal_lm
from federation.training import DistillConfig, batch_sampler, block_inputs, optimise

_BLOCK_KEY = re.compile(r"(^|\.)h\.(\d+)\.")


def uniform_layer_choice(num_middle: int, keep: int) -> list[int]:
    """Indices (0-based, strictly increasing) of ``keep`` of ``num_middle`` middle blocks, evenly spaced,
    always including the first and the last (Offsite-Tuning's uniform layer drop)."""
    if num_middle < 1:
        raise ValueError(f"num_middle must be >= 1, got {num_middle}")
    if not 1 <= keep <= num_middle:
        raise ValueError(f"keep must be in [1, num_middle={num_middle}], got keep={keep}")
    if keep == 1:
        return [0]
    return [round(i * (num_middle - 1) / (keep - 1)) for i in range(keep)]


@dataclass(frozen=True)
class SubModelSpec:
    """Which blocks of the full model a device holds.

    ``layers``: full-model indices of the kept blocks (increasing); ``adapter_layers``: the tunable bottom/top
    blocks (a subset of ``layers``); ``ffn_neurons``: (full block index, kept FFN neuron indices, increasing) for
    blocks whose FFN is pruned (empty: every FFN whole). The full model is the spec keeping every block whole.
    """

    num_layers: int
    layers: tuple[int, ...]
    adapter_layers: tuple[int, ...]
    ffn_neurons: tuple[tuple[int, tuple[int, ...]], ...] = ()
    revision: int = 0
    """Version of the server's weights for this structure (FedPFT's neuron-level distillation bumps it): a new
    revision is a new sub-model that devices must download."""

    def __post_init__(self) -> None:
        for block, neurons in self.ffn_neurons:
            if block not in self.layers:
                raise ValueError(f"ffn_neurons names block {block}, which is not in layers {self.layers}")
            if not neurons or list(neurons) != sorted(set(neurons)) or neurons[0] < 0:
                raise ValueError(f"ffn_neurons of block {block} must be non-empty, increasing and >= 0")
        if list(self.layers) != sorted(set(self.layers)) or not self.layers:
            raise ValueError(f"layers must be non-empty and strictly increasing, got {self.layers}")
        if self.layers[0] < 0 or self.layers[-1] >= self.num_layers:
            raise ValueError(f"layers must lie in [0, {self.num_layers}), got {self.layers}")
        if not set(self.adapter_layers) <= set(self.layers):
            raise ValueError(f"adapter_layers {self.adapter_layers} must be a subset of layers {self.layers}")

    def to_dict(self) -> dict:
        """JSON-ready form (lists for tuples), inverted by ``from_dict`` (checkpoints)."""
        return {"num_layers": self.num_layers, "layers": list(self.layers), "adapter_layers": list(self.adapter_layers),
                "ffn_neurons": [[block, list(neurons)] for block, neurons in self.ffn_neurons], "revision": self.revision}

    @classmethod
    def from_dict(cls, data: dict) -> SubModelSpec:
        """The spec ``to_dict`` wrote (validated as any new spec)."""
        return cls(int(data["num_layers"]), tuple(int(i) for i in data["layers"]),
                   tuple(int(i) for i in data["adapter_layers"]),
                   tuple((int(block), tuple(int(j) for j in neurons)) for block, neurons in data["ffn_neurons"]),
                   int(data["revision"]))

    @property
    def is_full(self) -> bool:
        """Every block of the full model, unpruned."""
        return len(self.layers) == self.num_layers and not self.ffn_neurons

    def pruned_neurons(self) -> dict[int, torch.Tensor]:
        """{full block index: kept neuron indices (LongTensor)} of the pruned blocks."""
        return {block: torch.tensor(neurons, dtype=torch.long) for block, neurons in self.ffn_neurons}

    @property
    def num_middle(self) -> int:
        return self.num_layers - len(self.adapter_layers)

    @property
    def kept_middle(self) -> int:
        return len(self.layers) - len(self.adapter_layers)

    @property
    def compression(self) -> float:
        """ε = 1 − k/M (0 for the full model)."""
        return 1.0 - self.kept_middle / self.num_middle if self.num_middle else 0.0

    @property
    def dropped_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if i not in self.layers)

    def sub_adapter_layers(self) -> list[int]:
        """Adapter block indices in the sub-model's own numbering."""
        return [self.layers.index(i) for i in self.adapter_layers]

    def to_full_key(self, key: str) -> str:
        """Rename ``…h.<sub index>.…`` to ``…h.<full index>.…``."""
        return _BLOCK_KEY.sub(lambda m: f"{m.group(1)}h.{self.layers[int(m.group(2))]}.", key, count=1)

    def to_sub_key(self, key: str) -> str:
        """Rename ``…h.<full index>.…`` to the sub-model's numbering; KeyError if the block is not kept."""
        def repl(m: re.Match) -> str:
            full = int(m.group(2))
            if full not in self.layers:
                raise KeyError(f"block {full} is not part of this sub-model (layers {self.layers})")
            return f"{m.group(1)}h.{self.layers.index(full)}."

        return _BLOCK_KEY.sub(repl, key, count=1)


def adapter_block_indices(num_layers: int, num_adapter_layers: int) -> tuple[int, ...]:
    """Full indices of the l bottom and l top blocks."""
    if not 1 <= num_adapter_layers or 2 * num_adapter_layers >= num_layers:
        raise ValueError(
            f"num_adapter_layers must be in [1, {(num_layers - 1) // 2}] for a {num_layers}-block model, got {num_adapter_layers}"
        )
    return tuple(range(num_adapter_layers)) + tuple(range(num_layers - num_adapter_layers, num_layers))


def layer_drop_spec(num_layers: int, num_adapter_layers: int, compression: float) -> SubModelSpec:
    """Emulator spec: adapter blocks + ``keep_for_compression`` uniformly chosen middle blocks."""
    adapters = adapter_block_indices(num_layers, num_adapter_layers)
    num_middle = num_layers - 2 * num_adapter_layers
    keep = keep_for_compression(num_middle, compression)
    middle = [num_adapter_layers + i for i in uniform_layer_choice(num_middle, keep)]
    return SubModelSpec(num_layers, tuple(sorted(set(adapters) | set(middle))), adapters)


def full_spec(num_layers: int, num_adapter_layers: int | None = None) -> SubModelSpec:
    """The full model; its adapter blocks are the bottom/top ``num_adapter_layers`` (all blocks if None)."""
    adapters = tuple(range(num_layers)) if num_adapter_layers is None else adapter_block_indices(num_layers, num_adapter_layers)
    return SubModelSpec(num_layers, tuple(range(num_layers)), adapters)


def submodel_state(full_model: GPT2LMHeadModel, spec: SubModelSpec) -> dict[str, torch.Tensor]:
    """The tensors a device needs for ``spec``, keyed in full-model coordinates (tied ``lm_head`` excluded).

    Pruned FFNs keep only the spec's neurons. Tensors are detached clones, so the payload never aliases the
    server's model.
    """
    pruned = spec.pruned_neurons()
    out = {}
    for key, tensor in full_model.state_dict().items():
        if key == "lm_head.weight" and full_model.config.tie_word_embeddings:
            continue
        match = _BLOCK_KEY.search(key)
        if match and int(match.group(2)) not in spec.layers:
            continue
        idx = pruned.get(int(match.group(2))) if match else None
        if idx is not None and key.endswith(("mlp.c_fc.weight", "mlp.c_fc.bias")):
            tensor = tensor[..., idx]
        elif idx is not None and key.endswith("mlp.c_proj.weight"):
            tensor = tensor[idx]
        out[key] = tensor.detach().clone()
    return out


def model_payload(submodel: GPT2LMHeadModel, spec: SubModelSpec) -> dict[str, torch.Tensor]:
    """State of a built sub-model in full-model coordinates (tied ``lm_head`` excluded; detached clones)."""
    tied = submodel.config.tie_word_embeddings
    return {
        spec.to_full_key(k): v.detach().clone()
        for k, v in submodel.state_dict().items()
        if not (tied and k == "lm_head.weight")
    }


def build_submodel(config: GPT2Config, spec: SubModelSpec, state: dict[str, torch.Tensor]) -> GPT2LMHeadModel:
    """Instantiate the sub-model from a full-coordinate payload (e.g. what a device received)."""
    if config.n_layer != spec.num_layers:
        raise ValueError(f"spec has num_layers={spec.num_layers} but config.n_layer={config.n_layer}")
    sub_config = config.__class__.from_dict({**config.to_dict(), "n_layer": len(spec.layers)})
    sub_config._attn_implementation = getattr(config, "_attn_implementation", None) or "eager"
    model = causal_lm(GPT2LMHeadModel(sub_config))
    for block, neurons in spec.ffn_neurons:  # pruned FFNs: narrower c_fc / c_proj (GPT-2 Conv1D: (in, out))
        mlp = cast(GPT2Block, model.transformer.h[spec.layers.index(block)]).mlp
        mlp.c_fc, mlp.c_proj = Conv1D(len(neurons), config.n_embd), Conv1D(config.n_embd, len(neurons))
    missing, unexpected = model.load_state_dict({spec.to_sub_key(k): v for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and sub_config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"payload does not match the sub-model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.tie_weights()
    model.eval()
    return model


def build_emulator(full_model: GPT2LMHeadModel, spec: SubModelSpec) -> GPT2LMHeadModel:
    """Emulator of ``full_model`` for ``spec`` (a copy; the full model is untouched)."""
    return build_submodel(full_model.config, spec, submodel_state(full_model, spec))


def distill_emulator(
    full_model: GPT2LMHeadModel,
    emulator: GPT2LMHeadModel,
    spec: SubModelSpec,
    blocks: torch.Tensor,
    config: DistillConfig = DistillConfig(),
    hidden_weight: float = 30.0,
) -> list[float]:
    """Offsite-Tuning emulator distillation: train the kept middle blocks so that the hidden state entering the
    first top adapter block matches the full model's, loss = LM loss + ``hidden_weight``·MSE (weights 1 and 30
    as in Offsite-Tuning). Only middle-block parameters change. Returns the loss per step."""
    sub_adapters = set(spec.sub_adapter_layers())
    num_top = len(spec.adapter_layers) // 2  # adapters are l bottom + l top blocks
    top_in_sub, top_in_full = len(spec.layers) - num_top, spec.num_layers - num_top
    params = [p for idx, block in enumerate(emulator.transformer.h) if idx not in sub_adapters for p in block.parameters()]

    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = full_model(**block_inputs(batch), output_hidden_states=True).hidden_states[top_in_full]
        out = emulator(**block_inputs(batch), labels=batch, output_hidden_states=True)
        return out.loss + hidden_weight * nn.functional.mse_loss(out.hidden_states[top_in_sub], target)

    full_model.eval()
    return train_parameters(emulator, params, loss_fn, blocks, config)


def train_parameters(
    model: nn.Module,
    params: list[nn.Parameter],
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    blocks: torch.Tensor,
    config: DistillConfig,
) -> list[float]:
    """``config.steps`` AdamW steps of ``loss_fn(batch)`` on ``params`` only (every other parameter of ``model``
    frozen), batches of ``blocks`` (N, T) from ``batch_sampler`` with ``config.seed``, no gradient clipping. The
    server-side distillation of emulators and pruned sub-models; afterwards the whole model is frozen and in eval
    mode. Returns the loss per step."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.train()
    losses = optimise(params, lambda batch, stage: loss_fn(batch), batch_sampler(blocks, config.batch_size, config.seed),
                      config.steps, config.lr, config.weight_decay)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return losses
