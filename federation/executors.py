"""Executors run client jobs. ``LocalExecutor`` (in-process) is the default; ``RayExecutor``
(``federation.ray_executor``, the ``ray`` extra) implements the same interface with long-lived client actors, so
methods never change. ``federation.executor_config.ExecutorConfig`` names one and builds it.

Checkpoints (``federation.checkpoint``) need two more things of an executor: the devices' state between rounds
(``client_states``) and, in a resumed run, putting it back (``restore``). Both forward to the device-side
``Client.state`` / ``Client.restore``; a remote executor calls them on the worker that holds each device's client
(``ClientState`` is plain picklable data; the frozen weights are computed on the driver and shipped with it)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from transformers import GPT2Config

from federation.client import Client, ClientFailure, ClientJob, ClientState, ClientUpdate
from federation.emulator import SubModelSpec

FrozenWeights = Callable[[SubModelSpec], "dict[str, torch.Tensor] | None"]
"""The server's frozen weights of a sub-model (None when it no longer has them: the device then holds nothing)."""


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

    @abstractmethod
    def client_states(self) -> dict[int, ClientState]:
        """Every device's ``Client.state()`` between rounds (what a checkpoint keeps of the devices)."""

    @abstractmethod
    def restore(self, states: Mapping[int, ClientState], frozen: FrozenWeights) -> None:
        """After ``start``, in a resumed run: ``Client.restore(states[d], frozen(states[d].spec))`` on every device
        ``d`` of ``states`` (``frozen`` is not called for a device holding nothing). No message is logged: the
        devices held these weights when the run was checkpointed, and the next round must not send them again."""

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
        self._check_started("run")
        return [self.clients[job.device].run_safely(job) for job in jobs]

    def client_states(self) -> dict[int, ClientState]:
        self._check_started("client_states")
        return {client.device: client.state() for client in self.clients}

    def restore(self, states: Mapping[int, ClientState], frozen: FrozenWeights) -> None:
        self._check_started("restore")
        for device, state in states.items():
            self.clients[device].restore(state, None if state.spec is None else frozen(state.spec))

    def _check_started(self, name: str) -> None:
        if not self.clients:
            raise RuntimeError(f"LocalExecutor.{name} called before start")


def make_clients(devices: Sequence[int], device_blocks: Sequence[torch.Tensor], model_config: GPT2Config,
                 device_labels: Sequence[np.ndarray | None] | None = None) -> list[Client]:
    """One ``Client`` per device id of ``devices`` with its blocks (and labels), in order."""
    labels = device_labels or [None] * len(device_blocks)
    return [Client(d, blocks, model_config, lab) for d, blocks, lab in zip(devices, device_blocks, labels)]
