"""Scale-out benchmarks: ``fedpeat bench executors`` (local vs Ray client actors, one run) and ``fedpeat bench
devices`` (FedPEAT-v1 steps/s as the number of devices grows). Ratios from one process, as in ``experiments.bench``."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from rich.table import Table

if TYPE_CHECKING:
    from federation.ray_executor import RayExecutor

GIB = 2**30


class PeakMemory:
    """Samples the resident memory of this process and all its descendants (Ray's raylet, GCS and actors included)
    every ``interval_s`` in a thread; ``peak_bytes`` is the largest sum seen since ``reset``."""

    def __init__(self, interval_s: float = 0.05) -> None:
        import psutil

        self._root = psutil.Process()
        self._psutil = psutil
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def tree_bytes(self) -> int:
        total = 0
        for proc in (self._root, *self._root.children(recursive=True)):
            try:
                total += proc.memory_info().rss
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.tree_bytes())
            time.sleep(self.interval_s)

    def reset(self) -> None:
        self.peak_bytes = self.tree_bytes()

    def __enter__(self) -> PeakMemory:
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.tree_bytes())


LAYOUTS = {"local": None, "local-1-thread": None, "ray": True, "ray-actors": False}
"""The executors compared: in-process with torch's threads (all cores) and with one thread (a plain loop); Ray with this
process as slot 0 (``driver_slot``); Ray with actors only."""


def bench_executors(clients: int = 8, workers: int = 2, rounds: int = 5, local_steps: int = 10,
                    evaluate: bool = False) -> list[dict]:
    """Round wall time of ``clients`` FedPEAT clients (embedded model, ε = 0.5, ``local_steps`` local steps) on each
    executor of ``LAYOUTS`` (Ray with ``workers`` slots of one CPU), median of ``rounds`` rounds after one warm-up
    round, the executors one after another (Ray started afresh for each layout); Ray's start-up (``ray.init`` to its
    actors ready) and the peak resident memory of the whole process tree (Ray's processes included) during each. ``evaluate``: time the rounds
    with the server's perplexity evaluation (serial in all) instead of without it."""
    for name, value in (("clients", clients), ("workers", workers), ("rounds", rounds), ("local_steps", local_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    import gc

    import torch

    from federation.engine import EngineConfig, RoundRunner
    from federation.executor_config import ExecutorConfig
    from federation.methods import DeviceDecision, FedPEATConfig
    from federation.training import LocalTrainConfig

    ExecutorConfig("ray", workers=workers)  # Ray installed? (before any work)
    config = EngineConfig(num_devices=clients, method_config=FedPEATConfig(train=LocalTrainConfig(steps=local_steps)))
    decisions = [DeviceDecision(True, 0.5)] * clients
    rows: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    for layout, driver_slot in LAYOUTS.items():
        torch.set_num_threads(1 if layout == "local-1-thread" else threads)
        with PeakMemory() as memory:
            started = time.perf_counter()
            executor = None if driver_slot is None else ExecutorConfig("ray", workers=workers, driver_slot=driver_slot).make()
            startup_s = time.perf_counter() - started
            runner = RoundRunner(config, executor)
            runner.run_round(decisions, evaluate=evaluate)  # warm-up: emulator exchange, model builds
            times = [runner.run_round(decisions, evaluate=evaluate).wall_time_s for _ in range(rounds)]
            if executor is not None:
                executor.shutdown()
                cast("RayExecutor", executor).ray.shutdown()
        del runner
        gc.collect()
        rows.append({"executor": layout, "round_s": statistics.median(times), "startup_s": startup_s if executor else 0.0,
                     "peak_bytes": memory.peak_bytes, "threads": 1 if layout == "local-1-thread" else threads})
    torch.set_num_threads(threads)
    for row in rows:
        row["speedup"] = rows[0]["round_s"] / row["round_s"]
        row["speedup_vs_1_thread"] = rows[1]["round_s"] / row["round_s"]
    return rows


def executors_table(rows: list[dict], clients: int, workers: int, rounds: int, evaluate: bool) -> Table:
    what = "with" if evaluate else "without"
    table = Table(title=f"{clients} clients: in-process vs Ray with {workers} slots of one CPU (median of {rounds} rounds "
                        f"{what} server evaluation; one run)")
    for column in ("executor", "round (s)", "speed-up", "vs 1-thread loop (≥ 1.6×)", "start-up (s, ≤ 11.5)",
                   "peak memory GiB (≤ 1.5)"):
        table.add_column(column, justify="right")
    names = {"local": f"local ({rows[0]['threads']} torch threads)", "local-1-thread": "local (1 torch thread)",
             "ray": "ray (this process + actors)", "ray-actors": "ray (actors only)"}
    for row in rows:
        table.add_row(names[row["executor"]], f"{row['round_s']:.3f}", f"{row['speedup']:.2f}×",
                      f"{row['speedup_vs_1_thread']:.2f}×", f"{row['startup_s']:.1f}" if row["startup_s"] else "–",
                      f"{row['peak_bytes'] / GIB:.2f}")
    return table


def bench_devices(num_devices: Sequence[int] = (10, 100, 1000), steps: int = 2000) -> list[dict]:
    """FedPEAT-v1 steps/s with random valid actions and the action masks read every step (as MaskablePPO does), at
    each N; cost per device-step relative to the smallest N."""
    for n in num_devices:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_devices must be integers >= 1, got {n!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 10:
        raise ValueError(f"steps must be an integer >= 10, got {steps!r}")
    import gymnasium as gym
    from gymnasium import spaces

    import fedpeat_env  # noqa: F401
    from agents.policy import as_fedpeat

    rows = []
    for n in num_devices:
        env = gym.make("FedPEAT-v1", num_devices=n)
        env.reset(seed=0)
        sample = MaskedSampler(cast(spaces.MultiDiscrete, env.action_space).nvec, np.random.default_rng(0))

        def step(k: int, env=env, sample=sample) -> None:
            for _ in range(k):
                if any(env.step(sample(as_fedpeat(env.unwrapped).action_masks()))[2:4]):
                    env.reset()

        step(10)  # warm-up
        started = time.perf_counter()
        step(steps)
        rate = steps / (time.perf_counter() - started)
        env.close()
        rows.append({"num_devices": n, "steps_per_s": rate, "device_steps_per_s": rate * n})
    base = rows[0]["device_steps_per_s"]
    for row in rows:
        row["cost_per_device_vs_first"] = base / row["device_steps_per_s"]
    return rows


class MaskedSampler:
    """Random valid actions of a MultiDiscrete space with ``nvec``: each component uniform among the values its mask
    allows (masks: the concatenation of the per-component boolean masks, as ``action_masks()`` returns them)."""

    def __init__(self, nvec: np.ndarray, rng: np.random.Generator) -> None:
        width = int(nvec.max())
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        self.valid = np.arange(width) < nvec[:, None]  # (components, width)
        self.index = (offsets[:, None] + np.arange(width))[self.valid]
        self.rng = rng

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        allowed = np.zeros(self.valid.shape, dtype=bool)
        allowed[self.valid] = masks[self.index]
        keys = self.rng.random(allowed.shape)
        keys[~allowed] = -1.0
        return keys.argmax(axis=1)


def devices_table(rows: list[dict]) -> Table:
    table = Table(title="FedPEAT-v1 with action masks, random valid actions (one process, one run)")
    for column in ("devices N", "env steps/s", "device-steps/s", "cost per device vs first N"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["num_devices"]), f"{row['steps_per_s']:,.0f}", f"{row['device_steps_per_s']:,.0f}",
                      f"{row['cost_per_device_vs_first']:.2f}×")
    return table

