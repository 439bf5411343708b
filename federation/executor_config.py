"""Which executor runs the clients: a small picklable config, importable without torch (the env's options use it)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from federation.executors import Executor

ExecutorKind = Literal["local", "ray"]
EXECUTORS: tuple[str, ...] = get_args(ExecutorKind)


@dataclass(frozen=True)
class ExecutorConfig:
    """Which executor runs the clients, and its resources. Picklable, so run specs can carry it."""

    kind: ExecutorKind = "local"
    """"local": in this process (default, no Ray needed); "ray": long-lived client actors on a Ray cluster."""
    address: str | None = None
    """Ray: the cluster to join (``ray.init(address=...)``, e.g. "auto" or "ray://host:10001"); None starts a local Ray."""
    workers: int | None = None
    """Ray: client actors (devices are spread over them); None: the cluster's CPUs ÷ ``cpus_per_worker``."""
    cpus_per_worker: float = 1.0
    """Ray: CPUs reserved per actor (also its torch threads, rounded, at least 1)."""
    driver_slot: bool | None = None
    """Ray: this process trains the devices of slot 0 while the actors train theirs (one torch process fewer); None:
    on when Ray runs on this machine (``address`` None), off when joining a cluster."""

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.kind!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers must be an integer >= 1 (or None: one per CPU), got {self.workers!r}")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if self.kind == "local" and (self.address is not None or self.workers is not None or self.driver_slot is not None):
            raise ValueError("ray address, workers and driver_slot apply to executor 'ray' only, not 'local'")
        if self.kind == "ray" and importlib.util.find_spec("ray") is None:
            raise ValueError("executor 'ray' needs Ray: pip install -e '.[ray]' (or pip install 'ray[default]')")

    def make(self) -> Executor:
        """A new executor (Ray is imported, and started or joined, only for kind "ray")."""
        if self.kind == "local":
            from federation.executors import LocalExecutor

            return LocalExecutor()
        from federation.ray_executor import RayExecutor

        return RayExecutor(address=self.address, workers=self.workers, cpus_per_worker=self.cpus_per_worker,
                           driver_slot=self.driver_slot)
