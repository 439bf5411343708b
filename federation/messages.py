"""The message log: every transfer between server and devices, with the tensors' names and byte counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch

from federation.system import tensor_bytes

Direction = Literal["down", "up"]
PayloadKind = Literal["emulator", "frozen", "adapter", "model"]
"""emulator: frozen weights of a compressed sub-model; frozen: frozen weights of the full model (FedPETuning);
adapter: LoRA tensors; model: trainable weights of the whole model (Fed-FT, FedPEAT case 3)."""


@dataclass(frozen=True)
class Message:
    round: int
    device: int
    direction: Direction
    kind: PayloadKind
    num_bytes: int
    """Bytes of the tensors actually sent (Σ numel · element size)."""
    keys: tuple[str, ...]
    """Full-model names of the tensors sent."""


class MessageLog:
    """Append-only record of what crossed the wire."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def record(
        self, round_idx: int, device: int, direction: Direction, kind: PayloadKind, payload: Mapping[str, torch.Tensor]
    ) -> Message:
        message = Message(round_idx, device, direction, kind, tensor_bytes(payload), tuple(sorted(payload)))
        self.messages.append(message)
        return message

    def total_bytes(self, *, round_idx: int | None = None, device: int | None = None, direction: Direction | None = None) -> int:
        return sum(
            m.num_bytes
            for m in self.messages
            if (round_idx is None or m.round == round_idx)
            and (device is None or m.device == device)
            and (direction is None or m.direction == direction)
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per message (tensor names reduced to their count)."""
        rows = [
            {"round": m.round, "device": m.device, "direction": m.direction, "kind": m.kind, "bytes": m.num_bytes, "tensors": len(m.keys)}
            for m in self.messages
        ]
        return pd.DataFrame(rows, columns=["round", "device", "direction", "kind", "bytes", "tensors"])
