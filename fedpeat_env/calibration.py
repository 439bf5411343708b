"""``fedpeat calibrate``: real engine rounds under every control the agent has, for the surrogate fit.

A calibration *plan* is a list of ``RunSpec``: one engine run each, a few rounds of FedPEAT in which every round a
random subset of the devices (``fraction`` of them) trains, each with an ε and a LoRA rank drawn from the run's
choices. The runs cover the conditions the env's agent meets (``CONDITIONS``): the share of devices selected, the
data partition (IID, Dirichlet), rounds of mixed ε, the LoRA rank, and a server that trains beside the devices. Fit
and held-out runs use different seeds (data split, channel, selections). ``run_plan`` executes a plan on worker
processes (one torch thread each); every run is deterministic given its spec, so the result does not depend on the
number of workers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from typing import Literal

import numpy as np

Condition = Literal["fraction", "partition", "mixed", "rank", "server"]
CONDITIONS: tuple[str, ...] = ("fraction", "partition", "mixed", "rank", "server")
"""What a run varies: the share of devices selected (IID, one ε per run), the data partition (Dirichlet α),
mixed ε within rounds, the LoRA rank, and server–device collaborative tuning."""


@dataclass(frozen=True)
class RunSpec:
    """One calibration run of the engine (FedPEAT case 1)."""

    condition: Condition
    """The condition this run tests (``CONDITIONS``)."""
    seed: int
    """Engine seed: data split, channel, local batches, adapter init; and the selections of this run."""
    fraction: float
    """Share of the devices that train each round, drawn at random every round (at least one if > 0)."""
    compression: tuple[float, ...]
    """ε of a selected device, drawn per device and round from these (one value: every device uses it)."""
    ranks: tuple[int, ...] = (8,)
    """LoRA rank of a selected device, drawn per device and round from these."""
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = 1.0
    """Dirichlet concentration (partition "dirichlet"; one domain, so a quantity skew)."""
    server_fraction: float = 0.0
    """Share of the data the server holds and trains on (full model) every round."""

    @property
    def label(self) -> str:
        parts = [f"f={self.fraction:g}", "ε=" + "/".join(f"{e:g}" for e in self.compression)]
        if self.ranks != (8,):
            parts.append("r=" + "/".join(str(r) for r in self.ranks))
        if self.partition == "dirichlet":
            parts.append(f"Dir({self.alpha:g})")
        if self.server_fraction:
            parts.append(f"server={self.server_fraction:g}")
        return " ".join(parts)


@dataclass(frozen=True)
class Trajectory:
    """An engine run: its spec, the full model's perplexity before round 1 and after each round, and who trained
    with which ε and rank."""

    spec: RunSpec
    perplexity: tuple[float, ...]
    """(R + 1,) plug-in perplexity of the full model on the held-out tuning blocks."""
    device_share: tuple[float, ...]
    """(N,) each device's share of all training data (devices and server)."""
    server_share: float
    """The server's share of all training data (0 without collaborative tuning)."""
    compression: tuple[tuple[float, ...], ...]
    """(R, N) ε of each device per round, NaN where it did not train."""
    rank: tuple[tuple[int, ...], ...]
    """(R, N) LoRA rank of each device per round, 0 where it did not train."""
    wall_time_s: float = 0.0


@dataclass(frozen=True)
class EngineSettings:
    """The engine settings shared by every run of a plan."""

    num_devices: int = 10
    rounds: int = 8
    local_steps: int = 10
    max_rank: int = 8
    """Global LoRA rank (the largest of the env's ``rank_levels``)."""
    foundation: str | None = None

    def __post_init__(self) -> None:
        for name in ("num_devices", "rounds", "local_steps", "max_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def calibration_plan(levels: Sequence[float] = (0.0, 0.25, 0.5, 0.75), ranks: Sequence[int] = (2, 4, 8),
                     fit_seed: int = 0, heldout_seed: int = 1) -> tuple[list[RunSpec], list[RunSpec]]:
    """(fit runs, held-out runs). The fit runs cover every level at a tenth, 40% and all of the devices (IID),
    Dirichlet α = 0.1 and 1, mixed ε, every rank and a collaborating server; the held-out runs, with another seed,
    test each condition at settings the fit did not use."""
    levels, ranks = tuple(levels), tuple(ranks)
    if len(levels) < 2 or list(levels) != sorted(set(levels)) or not all(0.0 <= e < 1.0 for e in levels):
        raise ValueError(f"levels must be >= 2 increasing compression ratios in [0, 1), got {levels}")
    if not ranks or list(ranks) != sorted(set(ranks)) or ranks[0] < 1:
        raise ValueError(f"ranks must be increasing integers >= 1, got {ranks}")
    lo, hi = levels[0], levels[-1]
    mid = levels[len(levels) // 2]
    fit = [RunSpec("fraction", fit_seed, f, (e,)) for f in (0.1, 0.4, 1.0) for e in levels]
    fit += [RunSpec("partition", fit_seed, f, (e,), partition="dirichlet", alpha=a)
            for a in (0.1, 1.0) for f, e in ((0.3, lo), (0.7, mid))]
    fit += [RunSpec("mixed", fit_seed, f, levels) for f in (0.3, 0.8)]
    fit += [RunSpec("rank", fit_seed, 0.5, (e,), ranks=(r,)) for r in ranks[:-1] for e in (lo, mid)]
    fit += [RunSpec("server", fit_seed, f, (lo,), server_fraction=0.2) for f in (0.0, 0.4)]
    heldout = [RunSpec("fraction", heldout_seed, 0.2, (levels[1],)), RunSpec("fraction", heldout_seed, 0.7, (hi,))]
    heldout += [RunSpec("partition", heldout_seed, 0.5, levels, partition="dirichlet", alpha=a) for a in (0.1, 1.0)]
    heldout += [RunSpec("mixed", heldout_seed, f, levels) for f in (0.2, 0.6)]
    heldout += [RunSpec("rank", heldout_seed, 0.6, levels[:2], ranks=ranks), RunSpec("rank", heldout_seed, 0.3, (mid,), ranks=ranks[:1])]
    heldout += [RunSpec("server", heldout_seed, f, levels, server_fraction=s) for f, s in ((0.2, 0.1), (0.6, 0.3))]
    return fit, heldout


def fedpeat_engine(num_devices: int, seed: int, local_steps: int, max_rank: int, **options):
    """The engine behind the env: ``EngineConfig`` of FedPEAT (case 1) with its adapter at global rank ``max_rank`` and
    ``local_steps`` local steps; ``options`` are further ``EngineConfig`` fields (partition, server share, …). Shared by
    the calibration runs and the env's engine fidelity, so both run the same engine."""
    from federation.engine import EngineConfig
    from federation.methods import FedPEAT, FedPEATConfig
    from federation.training import LocalTrainConfig

    method_config = FedPEATConfig(train=LocalTrainConfig(steps=local_steps), lora=replace(FedPEAT.default_lora, rank=max_rank))
    return EngineConfig(method="fedpeat", num_devices=num_devices, seed=seed, method_config=method_config, **options)


def engine_trajectory(spec: RunSpec, settings: EngineSettings, on_round: Callable[[], None] | None = None,
                      executor=None) -> Trajectory:
    """Run ``settings.rounds`` FedPEAT rounds of ``spec``; ``on_round()`` after each round. ``executor``
    (``federation.executors.Executor``) runs the clients (default: in this process)."""
    from federation.engine import RoundRunner
    from federation.methods import DeviceDecision

    runner = RoundRunner(fedpeat_engine(settings.num_devices, spec.seed, settings.local_steps, settings.max_rank,
                                        foundation=settings.foundation, partition=spec.partition,
                                        dirichlet_alpha=spec.alpha, server_fraction=spec.server_fraction), executor)
    n = settings.num_devices
    sizes = runner.data.device_sizes.astype(float)
    total = sizes.sum() + len(runner.data.server_blocks)
    rng = np.random.default_rng([spec.seed, 1 + CONDITIONS.index(spec.condition)])  # this run's selections
    chosen = 0 if spec.fraction == 0 else max(1, round(spec.fraction * n))
    ppl, eps_rows, rank_rows = [runner.initial_perplexity], [], []
    for _ in range(settings.rounds):
        selected = set(rng.choice(n, size=chosen, replace=False).tolist())
        eps = rng.choice(spec.compression, size=n)
        ranks = rng.choice(spec.ranks, size=n)
        decisions = [DeviceDecision(i in selected, float(eps[i]) if i in selected else 0.0,
                                    int(ranks[i]) if i in selected else None) for i in range(n)]
        result = runner.run_round(decisions)
        ppl.append(result.full_perplexity)
        eps_rows.append(tuple(float(eps[i]) if i in selected else math.nan for i in range(n)))
        rank_rows.append(tuple(int(ranks[i]) if i in selected else 0 for i in range(n)))
        if on_round is not None:
            on_round()
    runner.close()
    return Trajectory(spec, tuple(ppl), tuple(float(x) for x in sizes / total),
                      float(len(runner.data.server_blocks) / total), tuple(eps_rows), tuple(rank_rows))


def _run_in_worker(spec: RunSpec, settings: EngineSettings, executor=None) -> Trajectory:
    import time

    from federation.foundation import worker_setup

    worker_setup()
    started = time.perf_counter()
    trajectory = engine_trajectory(spec, settings, executor=executor)
    return Trajectory(**{**trajectory.__dict__, "wall_time_s": time.perf_counter() - started})


def run_plan(specs: Sequence[RunSpec], settings: EngineSettings, workers: int = 2,
             on_run: Callable[[Trajectory], None] | None = None, executor=None) -> list[Trajectory]:
    """Every run of ``specs`` (in that order), on ``workers`` processes (1: in this process); ``on_run`` after each.
    With an ``executor`` (e.g. Ray's client actors) the runs go one after another in this process, their clients on
    it (``workers`` is then ignored)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: dict[int, Trajectory] = {}
    if workers == 1 or executor is not None:
        for k, spec in enumerate(specs):
            results[k] = _run_in_worker(spec, settings, executor)
            if on_run is not None:
                on_run(results[k])
        return [results[k] for k in range(len(specs))]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_run_in_worker, spec, settings): k for k, spec in enumerate(specs)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if on_run is not None:
                on_run(results[futures[future]])
    return [results[k] for k in range(len(specs))]


def trajectory_to_dict(run: Trajectory) -> dict:
    """A JSON-ready dict of ``run`` (NaN ε of devices that did not train as null)."""
    out = asdict(run)
    out["compression"] = [[None if math.isnan(e) else e for e in row] for row in run.compression]
    return out


def trajectory_from_dict(data: dict) -> Trajectory:
    """The inverse of ``trajectory_to_dict``."""
    spec = data["spec"]
    spec = RunSpec(**{**spec, "compression": tuple(spec["compression"]), "ranks": tuple(spec["ranks"])})
    return Trajectory(spec, tuple(data["perplexity"]), tuple(data["device_share"]), float(data["server_share"]),
                      tuple(tuple(math.nan if e is None else float(e) for e in row) for row in data["compression"]),
                      tuple(tuple(int(r) for r in row) for row in data["rank"]), float(data.get("wall_time_s", 0.0)))
