"""``RayExecutor``: the devices' clients in long-lived Ray actors (the ``ray`` extra).

Each actor (``ClientWorker``) holds the clients of many devices (device d lives in slot d mod W), with their data, held
sub-models and private state, across rounds: nothing is reloaded per round. On one machine the driver process is slot 0
and trains its devices while the actors train theirs. A round ships each distinct payload once
with ``ray.put`` (the global adapter and each new sub-model are the same object for every device that gets them), and
each actor receives one call with its devices' jobs. Clients compute exactly what they compute in-process (their batch
draws are seeded by the job), so the per-round numbers equal ``LocalExecutor``'s.

Faults: a client that raises is dropped from its round inside the actor (``Client.run_safely``). An actor that dies
fails the jobs it had; Ray restarts it (``max_restarts=-1``), it reloads its devices' data on its next call, and its
devices serve again from the next round, their sub-models sent again (``Executor.lost_devices``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
from transformers import GPT2Config

from federation.client import Client, ClientFailure, ClientJob, ClientState, ClientUpdate
from federation.emulator import SubModelSpec
from federation.executors import Executor, FrozenWeights, make_clients

Shard = tuple[list[int], list[torch.Tensor], GPT2Config, list[np.ndarray | None]]
"""One actor's devices: (device ids, their blocks, the model config, their labels)."""


def connect_ray(address: str | None = None):
    """The ``ray`` module, connected: joins ``address`` (or starts a local Ray, without dashboard) unless this process
    is already connected. ImportError saying how to install Ray when it is missing."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("executor 'ray' needs Ray: pip install -e '.[ray]' (or pip install 'ray[default]')") from err
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


class ClientWorker:
    """A Ray actor: the clients of its devices, kept across rounds. ``generation`` names the data it holds (a new run
    on the executor loads new data)."""

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.generation: int | None = None
        self.clients: dict = {}
        self.frozen: dict = {}
        """One copy of each sub-model's frozen weights (by spec), shared by the devices of this actor that hold it."""

    def run(self, generation: int, shard: list, jobs: list[tuple[ClientJob, int, int]],
            *payloads: dict[str, torch.Tensor]) -> tuple[bool, list[ClientUpdate | ClientFailure]]:
        """Run ``jobs`` (each with the index of its frozen payload, -1 for none, and of its trainable payload).
        Returns (whether it had to load its data first, one result per job)."""
        loaded = self._load(generation, shard)
        results = []
        for job, frozen, trainable in jobs:
            held = self.frozen.setdefault(job.spec, payloads[frozen]) if frozen >= 0 else None
            job = replace(job, frozen_payload=held, trainable_payload=payloads[trainable])
            results.append(self.clients[job.device].run_safely(job))
        return loaded, results

    def states(self, generation: int, shard: list) -> dict[int, ClientState]:
        """Every device's ``Client.state()``."""
        self._load(generation, shard)
        return {device: client.state() for device, client in self.clients.items()}

    def restore(self, generation: int, shard: list, states: dict[int, ClientState],
                frozen: dict[SubModelSpec, dict[str, torch.Tensor] | None]) -> None:
        """``Client.restore`` of each device of ``states`` with the frozen weights of its spec (``frozen``)."""
        self._load(generation, shard)
        for device, state in states.items():
            payload = frozen.get(state.spec) if state.spec is not None else None
            self.clients[device].restore(state, None if payload is None else self.frozen.setdefault(state.spec, payload))

    def _load(self, generation: int, shard: list) -> bool:
        """Load the devices of ``shard`` (``[ObjectRef of a Shard]``, fetched only when this actor does not hold
        ``generation`` yet: a new run, or a restart). Returns whether it loaded."""
        if self.generation == generation:
            return False
        import ray

        devices, blocks, config, labels = ray.get(shard[0])
        self.clients = dict(zip(devices, make_clients(devices, blocks, config, labels)))
        self.generation, self.frozen = generation, {}
        return True

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(Executor):
    """Clients spread over ``workers`` slots: long-lived Ray actors of ``cpus_per_worker`` CPUs each and, with
    ``driver_slot``, this process as slot 0 (it trains its devices while the actors train theirs, instead of idling
    in ``ray.get``: one torch process fewer in memory for the same parallelism).

    ``address`` joins an existing cluster (``ray.init(address=...)``); None starts a local Ray (without dashboard) if
    none is running in this process. ``workers`` None: one slot per ``cpus_per_worker`` of the cluster's CPUs.
    ``driver_slot`` None: on when Ray runs on this machine (``address`` None), off on a cluster. The actors reserve
    their CPUs until ``shutdown``; a dead actor is restarted and waited for up to ``restart_timeout_s`` at the next
    round."""

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1.0,
                 driver_slot: bool | None = None, restart_timeout_s: float = 120.0,
                 startup_timeout_s: float = 120.0) -> None:
        self.ray = connect_ray(address)
        cpus = self.ray.cluster_resources().get("CPU", 1.0)
        self.num_workers = workers or max(1, int(cpus // cpus_per_worker))
        self.driver_slot = address is None if driver_slot is None else driver_slot
        self.threads = max(1, math.floor(cpus_per_worker))
        actor = self.ray.remote(num_cpus=cpus_per_worker, max_restarts=-1)(ClientWorker)
        first = 1 if self.driver_slot else 0
        self.actors = {slot: actor.remote(self.threads) for slot in range(first, self.num_workers)}
        """Slot -> actor handle (slot 0 is this process with ``driver_slot``)."""
        try:  # up, with torch imported, before the first round
            self.ray.get([a.pid.remote() for a in self.actors.values()], timeout=startup_timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            self.shutdown()
            free = self.ray.available_resources().get("CPU", 0.0)
            raise RuntimeError(f"{self.num_workers - first} client actors of {cpus_per_worker} CPU each did not start "
                               f"within {startup_timeout_s:g} s; the cluster has {free:g} of {cpus:g} CPUs free (other "
                               f"executors' actors hold the rest?)") from None
        self.restart_timeout_s = restart_timeout_s
        self._restarting: set[int] = set()
        self.generation = 0
        self._shards: dict[int, object] = {}
        self._local: dict[int, Client] = {}
        self._loaded: dict[int, int | None] = dict.fromkeys(self.actors)
        """The generation each actor is known to hold (None: unknown, it restarted or never loaded)."""
        self._devices: list[list[int]] = [[] for _ in range(self.num_workers)]
        self._lost: set[int] = set()
        self._started = False
        self._round_refs: dict[int, tuple] = {}
        """id(payload) -> (object ref, payload) of the current round: each distinct payload is put once."""

    def worker_of(self, device: int) -> int:
        """Slot that holds ``device`` (0 is this process with ``driver_slot``)."""
        return device % self.num_workers

    def start(self, device_blocks: Sequence[torch.Tensor], model_config: GPT2Config,
              device_labels: Sequence[np.ndarray] | None = None) -> None:
        labels = list(device_labels) if device_labels is not None else [None] * len(device_blocks)
        self.generation += 1
        self._devices = [list(range(w, len(device_blocks), self.num_workers)) for w in range(self.num_workers)]
        self._shards = {slot: self.ray.put((self._devices[slot], [device_blocks[d] for d in self._devices[slot]],
                                            model_config, [labels[d] for d in self._devices[slot]]))
                        for slot in self.actors}
        if self.driver_slot:
            devices = self._devices[0]
            self._local = dict(zip(devices, make_clients(devices, [device_blocks[d] for d in devices], model_config,
                                                         [labels[d] for d in devices])))
        self._lost.clear()
        self._started = True

    def run(self, jobs: Sequence[ClientJob]) -> list[ClientUpdate | ClientFailure]:
        self._check_started("run")
        self._await_restarts()
        self._round_refs = {}
        per_slot: dict[int, list[tuple[int, ClientJob]]] = {}
        for index, job in enumerate(jobs):
            per_slot.setdefault(self.worker_of(job.device), []).append((index, job))
        local = per_slot.pop(0) if self.driver_slot and 0 in per_slot else []
        calls = {slot: self._submit(slot, items) for slot, items in per_slot.items()}
        results: list = [None] * len(jobs)
        if local:  # this process's devices train while the actors train theirs
            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                for index, job in local:
                    results[index] = self._local[job.device].run_safely(job)
            finally:
                torch.set_num_threads(previous)
        for slot, call in calls.items():
            for index, result in zip((i for i, _ in per_slot[slot]), self._collect(slot, call, per_slot[slot])):
                results[index] = result
        self._round_refs = {}
        return results

    def _submit(self, slot: int, items: list[tuple[int, ClientJob]]):
        """One call of the slot's actor with its jobs, each job's payloads replaced by their position among the call's
        distinct payloads (passed as object refs, so that Ray resolves them in the actor)."""
        position: dict[int, int] = {}  # id(payload) -> its argument position
        refs: list[object] = []  # object refs
        packed = []
        for _, job in items:
            for payload in (job.frozen_payload, job.trainable_payload):
                if payload is not None and id(payload) not in position:
                    position[id(payload)] = len(refs)
                    refs.append(self._put(payload))
            frozen = -1 if job.frozen_payload is None else position[id(job.frozen_payload)]
            packed.append((replace(job, frozen_payload=None, trainable_payload={}), frozen,
                           position[id(job.trainable_payload)]))
        return self.actors[slot].run.remote(self.generation, [self._shards[slot]], packed, *refs)

    def _put(self, payload: dict):
        """The object ref of ``payload``, put once per round for every actor (by identity; the payload is kept with
        its ref until the round ends, so that ids stay unique)."""
        if id(payload) not in self._round_refs:
            self._round_refs[id(payload)] = (self.ray.put(payload), payload)
        return self._round_refs[id(payload)][0]

    def _collect(self, slot: int, call, items: list[tuple[int, ClientJob]]) -> list[ClientUpdate | ClientFailure]:
        """The actor's results, or a failure per job when it died during the call."""
        try:
            loaded, results = self.ray.get(call)
        except self.ray.exceptions.RayActorError as err:  # died (or is restarting) during the call
            self._loaded[slot] = None  # it restarts and reloads its data: every device it held lost its sub-model
            self._restarting.add(slot)
            self._lost.update(self._devices[slot])
            return [ClientFailure(job.device, job.round, f"{type(err).__name__}: worker {slot} died", job.task)
                    for _, job in items]
        if loaded and self._loaded[slot] == self.generation:  # it restarted between rounds: its devices hold nothing,
            sent = {job.device for (_, job), r in zip(items, results)  # but those just sent one
                    if job.frozen_payload is not None and isinstance(r, ClientUpdate)}
            self._lost.update(d for d in self._devices[slot] if d not in sent)
        self._loaded[slot] = self.generation
        return results

    def client_states(self) -> dict[int, ClientState]:
        self._check_started("client_states")
        states = {device: client.state() for device, client in self._local.items()}
        calls = [a.states.remote(self.generation, [self._shards[slot]]) for slot, a in self.actors.items()]
        for actor_states in self.ray.get(calls):
            states.update(actor_states)
        return dict(sorted(states.items()))

    def restore(self, states: Mapping[int, ClientState], frozen: FrozenWeights) -> None:
        self._check_started("restore")
        payloads: dict[SubModelSpec, dict[str, torch.Tensor] | None] = {}
        for state in states.values():
            if state.spec is not None and state.spec not in payloads:
                payloads[state.spec] = frozen(state.spec)
        per_slot: dict[int, dict[int, ClientState]] = {}
        for device, state in states.items():
            per_slot.setdefault(self.worker_of(device), {})[device] = state
        local = per_slot.pop(0, {}) if self.driver_slot else {}
        for device, state in local.items():
            self._local[device].restore(state, payloads.get(state.spec) if state.spec is not None else None)
        self.ray.get([self.actors[slot].restore.remote(
            self.generation, [self._shards[slot]], slot_states,
            {s.spec: payloads[s.spec] for s in slot_states.values() if s.spec is not None})
            for slot, slot_states in per_slot.items()])
        for slot in per_slot:
            self._loaded[slot] = self.generation

    def _check_started(self, name: str) -> None:
        if not self._started:
            raise RuntimeError(f"RayExecutor.{name} called before start")

    def _await_restarts(self) -> None:
        """Wait (up to ``restart_timeout_s``) for actors that died in an earlier round to be back; one that is not
        fails its jobs again."""
        errors = self.ray.exceptions
        deadline = time.monotonic() + self.restart_timeout_s
        for w in sorted(self._restarting):
            while (left := deadline - time.monotonic()) > 0:
                try:
                    self.ray.get(self.actors[w].pid.remote(), timeout=left)
                    self._restarting.discard(w)
                    break
                except errors.ActorUnavailableError:  # still restarting
                    time.sleep(0.2)
                except (errors.RayActorError, errors.GetTimeoutError):  # gone for good, or not back in time
                    break

    def lost_devices(self) -> list[int]:
        lost, self._lost = sorted(self._lost), set()
        return lost

    def shutdown(self) -> None:
        for actor in self.actors.values():
            self.ray.kill(actor)
        self.actors, self._shards, self._local, self._started = {}, {}, {}, False
