"""Executors run client jobs. ``LocalExecutor`` (in-process) is the default; ``RayExecutor``
(``federation.ray_executor``, the ``ray`` extra) implements the same interface with long-lived client actors, so
methods never change. ``federation.executor_config.ExecutorConfig`` names one and builds it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from transformers import GPT2Config

from federation.client import Client, ClientFailure, ClientJob, ClientUpdate


class Executor(ABC):
    """Owns the devices' clients; runs one round of jobs. ``start`` may be called again (a new run on the same workers)."""

    @abstractmethod
    def start(self, device_blocks: Sequence[torch.Tensor], model_config: GPT2Config,
              device_labels: Sequence[np.ndarray] | None = None) -> None:
        """Create one long-lived client per device with its local blocks (and their task labels)."""

    @abstractmethod
    def run(self, jobs: Sequence[ClientJob]) -> list[ClientUpdate | ClientFailure]:
        """Run the jobs; one result per job, in order (a ``ClientFailure`` where a device failed: it is dropped from
        the round, the others go on)."""

    def lost_devices(self) -> list[int]:
        """Devices whose held sub-model was lost since the last call (e.g. their worker restarted), so that the server
        sends it again with their next job. In-process clients never lose theirs: []."""
        return []

    def shutdown(self) -> None:
        """Release resources (no-op in-process)."""


class LocalExecutor(Executor):
    """Runs clients one after another in this process."""

    def __init__(self) -> None:
        self.clients: list[Client] = []

    def start(self, device_blocks: Sequence[torch.Tensor], model_config: GPT2Config,
              device_labels: Sequence[np.ndarray] | None = None) -> None:
        self.clients = make_clients(range(len(device_blocks)), device_blocks, model_config, device_labels)

    def run(self, jobs: Sequence[ClientJob]) -> list[ClientUpdate | ClientFailure]:
        if not self.clients:
            raise RuntimeError("LocalExecutor.run called before start")
        return [self.clients[job.device].run_safely(job) for job in jobs]


def make_clients(devices: Sequence[int], device_blocks: Sequence[torch.Tensor], model_config: GPT2Config,
                 device_labels: Sequence[np.ndarray | None] | None = None) -> list[Client]:
    """One ``Client`` per device id of ``devices`` with its blocks (and labels), in order."""
    labels = device_labels or [None] * len(device_blocks)
    return [Client(d, blocks, model_config, lab) for d, blocks, lab in zip(devices, device_blocks, labels)]
