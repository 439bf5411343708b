"""Bytes and memory per action level, from a GPT-2 architecture (no weights needed).

Parameter counts come from the profile's architecture (``federation.architecture``, no torch, no weights, no
download; a test checks them against a ``GPT2LMHeadModel`` built on the meta device); bytes and memory then go
through the one system model, ``federation.system``. For the embedded
profile these numbers equal the engine's real tensors (checked in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from federation.architecture import ALL_LINEAR, GPT2Shape, keep_for_compression, profile_shape
from federation.system import training_memory

BYTES_PER_VALUE = 4  # float32 weights and training state
TRAIN_BATCH_SIZE = 8  # sequences per local step (the engine's default local training)
TRAIN_SEQ_LEN = 128  # tokens per sequence

Trainable = Literal["adapter", "all"]
TRAINABLE: tuple[str, ...] = ("adapter", "all")
"""What devices train and send: FedPEAT's LoRA adapter, or every weight of the full model (Fed-FT's cost profile)."""


def lora_params(shape: GPT2Shape, rank: int, target_modules: tuple[str, ...], num_adapter_layers: int = 1) -> int:
    """LoRA of rank r on the ``target_modules`` of the 2l adapter blocks: r·(in + out) per targeted linear layer (a
    target matches a layer whose name ends with it, as in peft; GPT-2's Conv1D weight is (in, out))."""
    per_block = sum(rank * (n_in + n_out) for name, n_in, n_out in shape.block_linears
                    if any(name == t or name.endswith("." + t) for t in target_modules))
    return 2 * num_adapter_layers * per_block


@dataclass(frozen=True)
class LevelCosts:
    """Per action level k = 1..K (index k−1) and rank level j: what a device downloads and needs in memory."""

    compression: np.ndarray
    """(K,) ε per level."""
    kept_blocks: np.ndarray
    """(K,) blocks in the emulator (adapter + kept middle)."""
    emulator_bytes: np.ndarray
    """(K,) frozen emulator weights sent on an exchange."""
    adapter_bytes: np.ndarray
    """(R,) LoRA bytes per rank level (sent down and up every round)."""
    memory_bytes: np.ndarray
    """(K, R) training footprint (weights + LoRA + grads + AdamW state + activations)."""
    full_memory_bytes: float
    """Footprint of the full model (ε = 0) at the largest rank: the unit of the memory tiers."""
    full_model_bytes: float
    """Bytes of the full model's weights: the unit of the reference latency."""


def level_costs(profile: str, compression_levels: tuple[float, ...], rank_levels: tuple[int, ...],
                num_adapter_layers: int = 1, target_modules: tuple[str, ...] | None = None,
                trainable: Trainable = "adapter") -> LevelCosts:
    """Costs per level and rank of the emulators and of the adapter: LoRA on ``target_modules`` (None: FedPEAT's,
    every linear layer, as the engine's ``FedPEAT.default_lora``) of the adapter blocks.

    ``trainable="all"``: Fed-FT's cost profile — no frozen part (nothing to exchange), every weight of the full model
    sent down and up every round and trained (weights, gradients and AdamW state of all of them); the only level is
    ε = 0. ``full_memory_bytes`` stays the adapter's full-model footprint, so the memory tiers describe the same
    devices under both profiles."""
    if trainable not in TRAINABLE:
        raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
    if trainable == "all" and tuple(compression_levels) != (0.0,):
        raise ValueError(f"trainable='all' (Fed-FT) has no emulator: compression_levels must be (0.0,), got {compression_levels}")
    shape = profile_shape(profile)
    target_modules = target_modules or ALL_LINEAR
    num_middle = shape.n_layer - 2 * num_adapter_layers
    keeps = np.array([keep_for_compression(num_middle, e) for e in compression_levels])
    blocks = 2 * num_adapter_layers + keeps
    emulator_params = np.array([shape.params(int(b)) for b in blocks])
    ranks = np.array(rank_levels)
    lora = np.array([lora_params(shape, int(r), target_modules, num_adapter_layers) for r in ranks])

    def memory(frozen: int, trainable: int, num_blocks: int) -> int:
        return training_memory(frozen, trainable, batch_size=TRAIN_BATCH_SIZE, seq_len=TRAIN_SEQ_LEN,
                               d_model=shape.n_embd, num_blocks=num_blocks, num_heads=shape.n_head,
                               vocab_size=shape.vocab_size, bytes_per_value=BYTES_PER_VALUE).total_bytes

    full_params = shape.params()
    full_memory = float(memory(full_params, int(lora[-1]), shape.n_layer))
    if trainable == "all":
        return LevelCosts(
            compression=np.zeros(1), kept_blocks=np.array([shape.n_layer]), emulator_bytes=np.zeros(1),
            adapter_bytes=np.full(len(ranks), float(full_params * BYTES_PER_VALUE)),
            memory_bytes=np.full((1, len(ranks)), float(memory(0, full_params, shape.n_layer))),
            full_memory_bytes=full_memory, full_model_bytes=float(full_params * BYTES_PER_VALUE),
        )
    mem = np.array([[memory(int(p), int(q), int(b)) for q in lora] for p, b in zip(emulator_params, blocks)], dtype=float)
    return LevelCosts(
        compression=np.array(compression_levels, dtype=float),
        kept_blocks=blocks,
        emulator_bytes=(emulator_params * BYTES_PER_VALUE).astype(float),
        adapter_bytes=(lora * BYTES_PER_VALUE).astype(float),
        memory_bytes=mem,
        full_memory_bytes=full_memory,
        full_model_bytes=float(full_params * BYTES_PER_VALUE),
    )
