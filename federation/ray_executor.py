"""``RayExecutor``: the devices' clients in long-lived Ray actors (the ``ray`` extra).

Each actor (``ClientWorker``) holds the clients of many devices (device d lives on actor d mod W), with their data, held
sub-models and private state, across rounds: nothing is reloaded per round. A round ships each distinct payload once
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
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from transformers import GPT2Config

from federation.client import ClientFailure, ClientJob, ClientUpdate
from federation.executors import Executor, make_clients

Shard = tuple[list[int], list[torch.Tensor], GPT2Config, list[np.ndarray | None]]
"""One actor's devices: (device ids, their blocks, the model config, their labels)."""


def import_ray():
    """The ``ray`` module, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("executor 'ray' needs Ray: pip install -e '.[ray]' (or pip install 'ray[default]')") from err
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

        ``shard`` is ``[ObjectRef of a Shard]``, fetched only when this actor does not hold ``generation`` yet (a new
        run, or a restart). Returns (whether it had to load, one result per job)."""
        loaded = self.generation != generation
        if loaded:
            import ray

            devices, blocks, config, labels = ray.get(shard[0])
            self.clients = dict(zip(devices, make_clients(devices, blocks, config, labels)))
            self.generation, self.frozen = generation, {}
        results = []
        for job, frozen, trainable in jobs:
            held = self.frozen.setdefault(job.spec, payloads[frozen]) if frozen >= 0 else None
            job = replace(job, frozen_payload=held, trainable_payload=payloads[trainable])
            results.append(self.clients[job.device].run_safely(job))
        return loaded, results

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(Executor):
    """Clients in ``workers`` long-lived Ray actors with ``cpus_per_worker`` CPUs each.

    ``address`` joins an existing cluster (``ray.init(address=...)``); None starts a local Ray (without dashboard) if
    none is running in this process. ``workers`` None: one actor per ``cpus_per_worker`` of the cluster's CPUs. The
    actors reserve their CPUs until ``shutdown``; a dead actor is restarted and waited for up to ``restart_timeout_s``
    at the next round."""

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1.0,
                 restart_timeout_s: float = 120.0, startup_timeout_s: float = 120.0) -> None:
        self.ray = import_ray()
        if not self.ray.is_initialized():
            self.ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        cpus = self.ray.cluster_resources().get("CPU", 1.0)
        self.num_workers = workers or max(1, int(cpus // cpus_per_worker))
        actor = self.ray.remote(num_cpus=cpus_per_worker, max_restarts=-1)(ClientWorker)
        threads = max(1, math.floor(cpus_per_worker))
        self.workers = [actor.remote(threads) for _ in range(self.num_workers)]
        try:  # up, with torch imported, before the first round
            self.ray.get([w.pid.remote() for w in self.workers], timeout=startup_timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            self.shutdown()
            free = self.ray.available_resources().get("CPU", 0.0)
            raise RuntimeError(f"{self.num_workers} client actors of {cpus_per_worker} CPU each did not start within "
                               f"{startup_timeout_s:g} s; the cluster has {free:g} of {cpus:g} CPUs free (other "
                               f"executors' actors hold the rest?)") from None
        self.restart_timeout_s = restart_timeout_s
        self._restarting: set[int] = set()
        self.generation = 0
        self._shards: list = []
        self._loaded: list[int | None] = [None] * self.num_workers
        """The generation each actor is known to hold (None: unknown, it restarted or never loaded)."""
        self._devices: list[list[int]] = [[] for _ in self.workers]
        self._lost: set[int] = set()

    def worker_of(self, device: int) -> int:
        """Index of the actor that holds ``device``."""
        return device % self.num_workers

    def start(self, device_blocks: Sequence[torch.Tensor], model_config: GPT2Config,
              device_labels: Sequence[np.ndarray] | None = None) -> None:
        labels = list(device_labels) if device_labels is not None else [None] * len(device_blocks)
        self.generation += 1
        self._devices = [list(range(w, len(device_blocks), self.num_workers)) for w in range(self.num_workers)]
        self._shards = [self.ray.put((devices, [device_blocks[d] for d in devices], model_config,
                                      [labels[d] for d in devices])) for devices in self._devices]
        self._lost.clear()

    def run(self, jobs: Sequence[ClientJob]) -> list[ClientUpdate | ClientFailure]:
        if not self._shards:
            raise RuntimeError("RayExecutor.run called before start")
        self._await_restarts()
        refs: dict[int, object] = {}  # id(payload) -> ObjectRef: each distinct payload is put once
        payloads: dict[int, dict] = {}
        per_worker: dict[int, list[tuple[int, ClientJob, int, int]]] = {}
        for index, job in enumerate(jobs):
            slots = []
            for payload in (job.frozen_payload, job.trainable_payload):
                if payload is None:
                    slots.append(-1)
                    continue
                if id(payload) not in refs:
                    refs[id(payload)], payloads[id(payload)] = self.ray.put(payload), payload
                slots.append(id(payload))
            stripped = replace(job, frozen_payload=None, trainable_payload={})
            per_worker.setdefault(self.worker_of(job.device), []).append((index, stripped, *slots))
        calls = {}
        for w, items in per_worker.items():
            keys = list(dict.fromkeys(k for _, _, f, t in items for k in (f, t) if k != -1))
            position = {k: i for i, k in enumerate(keys)}
            worker_jobs = [(job, position.get(f, -1), position[t]) for _, job, f, t in items]
            calls[w] = self.workers[w].run.remote(self.generation, [self._shards[w]], worker_jobs, *(refs[k] for k in keys))
        results: list = [None] * len(jobs)
        for w, call in calls.items():
            items = per_worker[w]
            try:
                loaded, worker_results = self.ray.get(call)
            except self.ray.exceptions.RayActorError as err:  # died (or is restarting) during the call
                reason = f"{type(err).__name__}: worker {w} died"
                for index, job, _, _ in items:
                    results[index] = ClientFailure(job.device, job.round, reason, job.task)
                self._loaded[w] = None  # it restarts and reloads its data: every device it held lost its sub-model
                self._restarting.add(w)
                self._lost.update(self._devices[w])
                continue
            if loaded and self._loaded[w] == self.generation:  # it restarted between rounds: its devices hold nothing,
                sent = {job.device for (_, job, f, _), r in zip(items, worker_results)  # but those just sent one
                        if f != -1 and isinstance(r, ClientUpdate)}
                self._lost.update(d for d in self._devices[w] if d not in sent)
            self._loaded[w] = self.generation
            for (index, _, _, _), result in zip(items, worker_results):
                results[index] = result
        return results

    def _await_restarts(self) -> None:
        """Wait (up to ``restart_timeout_s``) for actors that died in an earlier round to be back; one that is not
        fails its jobs again."""
        errors = self.ray.exceptions
        deadline = time.monotonic() + self.restart_timeout_s
        for w in sorted(self._restarting):
            while (left := deadline - time.monotonic()) > 0:
                try:
                    self.ray.get(self.workers[w].pid.remote(), timeout=left)
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
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []
        self._shards = []
