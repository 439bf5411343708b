"""Executors run client jobs. ``LocalExecutor`` (in-process) is the default; a remote executor implements the
same two methods and keeps its own long-lived clients, so methods never change."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from transformers import GPT2Config

from federation.client import Client, ClientFailure, ClientJob, ClientUpdate


class Executor(ABC):
    """Owns the devices' clients; runs one round of jobs."""

    @abstractmethod
    def start(self, device_blocks: Sequence[torch.Tensor], model_config: GPT2Config,
              device_labels: Sequence[np.ndarray] | None = None) -> None:
        """Create one long-lived client per device with its local blocks (and their task labels)."""

    @abstractmethod
    def run(self, jobs: Sequence[ClientJob]) -> list[ClientUpdate | ClientFailure]:
        """Run the jobs; one result per job, in order (a ``ClientFailure`` where a device failed: it is dropped from
        the round, the others go on)."""

    def shutdown(self) -> None:
        """Release resources (no-op in-process)."""


class LocalExecutor(Executor):
    """Runs clients one after another in this process."""

    def __init__(self) -> None:
        self.clients: list[Client] = []

    def start(self, device_blocks: Sequence[torch.Tensor], model_config: GPT2Config,
              device_labels: Sequence[np.ndarray] | None = None) -> None:
        labels = device_labels or [None] * len(device_blocks)
        self.clients = [Client(i, blocks, model_config, lab) for i, (blocks, lab) in enumerate(zip(device_blocks, labels))]

    def run(self, jobs: Sequence[ClientJob]) -> list[ClientUpdate | ClientFailure]:
        if not self.clients:
            raise RuntimeError("LocalExecutor.run called before start")
        return [self.clients[job.device].run_safely(job) for job in jobs]
