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
MessageKind = Literal["emulator", "frozen", "adapter", "model", "failure"]
"""A payload kind, or "failure": a device that sent no update (no bytes; ``note`` gives the reason)."""


@dataclass(frozen=True)
class Message:
    round: int
    device: int
    direction: Direction
    kind: MessageKind
    num_bytes: int
    """Bytes of the tensors actually sent (Σ numel · element size)."""
    keys: tuple[str, ...]
    """Full-model names of the tensors sent."""
    note: str = ""
    """Why a device failed (kind "failure")."""


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

    def record_failure(self, round_idx: int, device: int, reason: str) -> Message:
        """A device's failed upload: no bytes, the reason in ``note``."""
        message = Message(round_idx, device, "up", "failure", 0, (), reason)
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
        """One row per message (tensor names reduced to their count; ``note``: a failure's reason)."""
        rows = [
            {"round": m.round, "device": m.device, "direction": m.direction, "kind": m.kind, "bytes": m.num_bytes,
             "tensors": len(m.keys), "note": m.note}
            for m in self.messages
        ]
        return pd.DataFrame(rows, columns=["round", "device", "direction", "kind", "bytes", "tensors", "note"])
