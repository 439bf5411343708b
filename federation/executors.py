"""Executors run client jobs. ``LocalExecutor`` (in-process) is the default; a remote executor implements the
same two methods and keeps its own long-lived clients, so methods never change."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from transformers import GPT2Config

from federation.client import Client, ClientJob, ClientUpdate


class Executor(ABC):
    """Owns the devices' clients; runs one round of jobs."""

    @abstractmethod
    def start(self, device_blocks: Sequence[torch.Tensor], model_config: GPT2Config) -> None:
        """Create one long-lived client per device with its local blocks."""

    @abstractmethod
    def run(self, jobs: Sequence[ClientJob]) -> list[ClientUpdate | None]:
        """Run the jobs; one result per job, in order (None where a device failed and is dropped)."""

    def shutdown(self) -> None:
        """Release resources (no-op in-process)."""


class LocalExecutor(Executor):
    """Runs clients one after another in this process."""

    def __init__(self) -> None:
        self.clients: list[Client] = []

    def start(self, device_blocks: Sequence[torch.Tensor], model_config: GPT2Config) -> None:
        self.clients = [Client(i, blocks, model_config) for i, blocks in enumerate(device_blocks)]

    def run(self, jobs: Sequence[ClientJob]) -> list[ClientUpdate | None]:
        if not self.clients:
            raise RuntimeError("LocalExecutor.run called before start")
        return [self.clients[job.device].run(job) for job in jobs]
