"""Scale-out benchmarks: ``fedpeat bench executors`` (local vs Ray client actors, one run) and ``fedpeat bench
devices`` (FedPEAT-v0 steps/s as the number of devices grows). Ratios from one process, as in ``experiments.bench``."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence

import numpy as np
from rich.table import Table

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


def bench_executors(clients: int = 8, workers: int = 2, rounds: int = 3, local_steps: int = 10,
                    evaluate: bool = False) -> dict:
    """Round wall time of ``clients`` FedPEAT clients (embedded model, ε = 0.5, ``local_steps`` local steps) on the
    in-process executor vs ``workers`` Ray client actors (one CPU each), after one warm-up round each; the timed rounds
    of the two alternate (same load). Also Ray's start-up (``ray.init`` to actors ready) and the peak resident memory
    of the whole process tree in each phase. ``evaluate``: time the rounds with the server's perplexity evaluation
    (serial in both) instead of without it."""
    for name, value in (("clients", clients), ("workers", workers), ("rounds", rounds), ("local_steps", local_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    from federation.engine import EngineConfig, RoundRunner
    from federation.executor_config import ExecutorConfig
    from federation.methods import DeviceDecision, FedPEATConfig
    from federation.training import LocalTrainConfig

    ExecutorConfig("ray", workers=workers)  # Ray installed? (before any work)
    config = EngineConfig(num_devices=clients, method_config=FedPEATConfig(train=LocalTrainConfig(steps=local_steps)))
    decisions = [DeviceDecision(True, 0.5)] * clients
    with PeakMemory() as memory:
        local = RoundRunner(config)
        local.run_round(decisions, evaluate=evaluate)  # warm-up: emulator exchange, model builds
        local_peak = memory.peak_bytes
        started = time.perf_counter()
        executor = ExecutorConfig("ray", workers=workers).make()
        startup_s = time.perf_counter() - started
        remote = RoundRunner(config, executor)
        remote.run_round(decisions, evaluate=evaluate)
        local_s, ray_s = [], []
        for _ in range(rounds):
            for runner, times in ((local, local_s), (remote, ray_s)):
                times.append(runner.run_round(decisions, evaluate=evaluate).wall_time_s)
        ray_peak = memory.peak_bytes
        executor.shutdown()
    import ray

    ray.shutdown()
    local_round, ray_round = statistics.median(local_s), statistics.median(ray_s)
    return {"clients": clients, "workers": workers, "rounds": rounds, "evaluate": evaluate,
            "local_round_s": local_round, "ray_round_s": ray_round, "speedup": local_round / ray_round,
            "ray_startup_s": startup_s, "local_peak_bytes": local_peak, "ray_peak_bytes": ray_peak}


def executors_table(result: dict) -> Table:
    what = "with" if result["evaluate"] else "without"
    table = Table(title=f"{result['clients']} clients, local vs {result['workers']} Ray actors (median of "
                        f"{result['rounds']} alternating rounds, {what} server evaluation)")
    for column in ("measure", "value", "target"):
        table.add_column(column, justify="right")
    table.add_row("local round (s)", f"{result['local_round_s']:.3f}", "")
    table.add_row("Ray round (s)", f"{result['ray_round_s']:.3f}", "")
    table.add_row("speed-up local / Ray", f"{result['speedup']:.2f}×", "≥ 1.6×")
    table.add_row("Ray start-up (s)", f"{result['ray_startup_s']:.1f}", "≤ 11.5")
    table.add_row("peak memory, local phase (GiB)", f"{result['local_peak_bytes'] / GIB:.2f}", "")
    table.add_row("peak memory with Ray, process tree (GiB)", f"{result['ray_peak_bytes'] / GIB:.2f}", "≤ 1.5")
    return table


def bench_devices(num_devices: Sequence[int] = (10, 100, 1000), steps: int = 2000) -> list[dict]:
    """FedPEAT-v0 steps/s with random valid actions and the action masks read every step (as MaskablePPO does), at
    each N; cost per device-step relative to the smallest N."""
    for n in num_devices:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_devices must be integers >= 1, got {n!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 10:
        raise ValueError(f"steps must be an integer >= 10, got {steps!r}")
    import gymnasium as gym

    import fedpeat_env  # noqa: F401

    rows = []
    for n in num_devices:
        env = gym.make("FedPEAT-v0", num_devices=n)
        env.reset(seed=0)
        sample = MaskedSampler(env.action_space.nvec, np.random.default_rng(0))

        def step(k: int, env=env, sample=sample) -> None:
            for _ in range(k):
                if any(env.step(sample(env.unwrapped.action_masks()))[2:4]):
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
    table = Table(title="FedPEAT-v0 with action masks, random valid actions (one process, one run)")
    for column in ("devices N", "env steps/s", "device-steps/s", "cost per device vs first N"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["num_devices"]), f"{row['steps_per_s']:,.0f}", f"{row['device_steps_per_s']:,.0f}",
                      f"{row['cost_per_device_vs_first']:.2f}×")
    return table

