"""``fedpeat calibrate``: real engine rounds where the env's policies go, for the surrogate fit.

A calibration *plan* is a list of ``RunSpec``: one engine run each, ``EngineSettings.rounds`` rounds of FedPEAT (the
benchmark's horizon, 20) on a data split like the env's (one domain in equal or Dirichlet shares, or three domains
with content skew), in which every round either a random subset of the devices trains or the *same* devices train
(held for the whole run, chosen by data share: the smallest, the median or the largest), each with an ε and a LoRA
rank drawn from the run's choices. The runs cover the conditions the env's agent meets (``CONDITIONS``). Fit and
held-out runs use different seeds (data split, channel, selections). ``run_plan`` executes a plan on worker
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

from fedpeat_env.costs import TRAIN_BATCH_SIZE
from fedpeat_env.surrogate import DOMAINS

CONDITIONS: tuple[str, ...] = ("fraction", "partition", "held", "domains", "mixed", "rank", "server", "devices",
                                "policy")
"""What a run tests: random subsets of one-domain IID devices ("fraction"), of Dirichlet quantity-skewed devices
("partition"), the same devices held for the whole run ("held"), content skew over the three domains ("domains"),
mixed ε within rounds, the LoRA rank, server–device collaborative tuning, other numbers of devices, and a policy's
engine episode (``fedpeat sim2real``, added to a fit with ``fedpeat calibrate --add-runs``)."""
Select = Literal["random", "small", "median", "large"]
RunPartition = Literal["iid", "dirichlet", "domains"]
EVAL_BLOCKS_PER_DOMAIN = 64
"""The engine behind the env evaluates the full model on up to this many held-out blocks of each domain (all of the
committed corpus's)."""
DOMAIN_SPLIT_STREAM = 7
"""Second word of the seed of a content-skewed run's per-domain Dirichlet draws ``[seed, DOMAIN_SPLIT_STREAM]``."""


@dataclass(frozen=True)
class RunSpec:
    """One calibration run of the engine (FedPEAT case 1)."""

    condition: str
    """The condition this run tests (``CONDITIONS``)."""
    seed: int
    """Engine seed: data split, channel, local batches, adapter init; and the selections of this run."""
    compression: tuple[float, ...]
    """ε of a selected device, drawn per device and round from these (one value: every device uses it)."""
    select: Select = "random"
    """"random": each round a random subset (``fraction`` of the devices); "small" / "median" / "large": the ``held``
    devices of smallest / median / largest data share, every round."""
    fraction: float = 0.0
    """Share of the devices that train each round (``select="random"``; at least one if > 0)."""
    held: int = 1
    """Devices held for the whole run (``select`` other than "random")."""
    ranks: tuple[int, ...] = (8,)
    """LoRA rank of a selected device, drawn per device and round from these."""
    partition: RunPartition = "iid"
    """"iid" / "dirichlet": pydocs in equal / Dirichlet(α) shares; "domains": the three tuning domains, each split
    over the devices in shares ~ Dirichlet(α) (the env's content skew)."""
    alpha: float = 1.0
    """Dirichlet concentration of the split ("dirichlet", "domains")."""
    num_devices: int = 10
    server_fraction: float = 0.0
    """Share of the data the server holds and trains on (full model) every round."""

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {self.condition!r}")
        if self.select not in ("random", "small", "median", "large"):
            raise ValueError(f"select must be one of ('random', 'small', 'median', 'large'), got {self.select!r}")
        if self.select != "random" and not 1 <= self.held <= self.num_devices:
            raise ValueError(f"held must be in [1, num_devices], got {self.held}")

    @property
    def domains(self) -> tuple[str, ...]:
        return DOMAINS if self.partition == "domains" else ("pydocs",)

    @property
    def label(self) -> str:
        parts = [f"N={self.num_devices}"]
        parts.append(f"f={self.fraction:g}" if self.select == "random" else f"hold {self.held} {self.select}")
        parts.append("ε=" + "/".join(f"{e:g}" for e in self.compression))
        if self.ranks != (8,):
            parts.append("r=" + "/".join(str(r) for r in self.ranks))
        if self.partition != "iid":
            parts.append(f"{'domains' if self.partition == 'domains' else 'Dir'}({self.alpha:g})")
        if self.server_fraction:
            parts.append(f"server={self.server_fraction:g}")
        return " ".join(parts)


@dataclass(frozen=True)
class Trajectory:
    """An engine run: its spec, the full model's perplexity (overall and per domain) before round 1 and after each
    round, the data each device held, and who trained with which ε and rank."""

    spec: RunSpec
    perplexity: tuple[float, ...]
    """(R + 1,) plug-in perplexity of the full model on the held-out blocks of the run's domains."""
    domain_perplexity: tuple[tuple[float, ...], ...]
    """(R + 1, D) the same per domain (``DOMAINS`` order; NaN for domains the run does not hold)."""
    device_share: tuple[float, ...]
    """(N,) each device's share of all training data (devices and server)."""
    device_mix: tuple[tuple[float, ...], ...]
    """(N, D) the share of each device's data in each domain."""
    server_share: float
    """The server's share of all training data (0 without collaborative tuning)."""
    blocks: int
    """Training blocks of the run's data (devices and server)."""
    compression: tuple[tuple[float, ...], ...]
    """(R, N) ε of each device per round, NaN where it did not train."""
    rank: tuple[tuple[int, ...], ...]
    """(R, N) LoRA rank of each device per round, 0 where it did not train."""
    wall_time_s: float = 0.0


@dataclass(frozen=True)
class EngineSettings:
    """The engine settings shared by every run of a plan."""

    rounds: int = 20
    local_steps: int = 10
    max_rank: int = 8
    """Global LoRA rank (the largest of the env's ``rank_levels``)."""
    foundation: str | None = None

    def __post_init__(self) -> None:
        for name in ("rounds", "local_steps", "max_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    @property
    def local_sequences(self) -> int:
        """Sequences a trainer trains on per round."""
        return self.local_steps * TRAIN_BATCH_SIZE


def calibration_plan(levels: Sequence[float] = (0.0, 0.25, 0.5, 0.75), ranks: Sequence[int] = (2, 4, 8),
                     fit_seed: int = 0, heldout_seed: int = 1) -> tuple[list[RunSpec], list[RunSpec]]:
    """(fit runs, held-out runs), where the env's policies go: the same 1, 2 or 3 devices of small, median or large
    share held for the whole run and random subsets, on the default content-skewed split (α = 0.5) and on the
    one-domain splits, at N = 5, 10 and 20, every level, mixed ε, every rank and a collaborating server. The held-out
    runs, with another seed, test each condition at settings the fit did not use."""
    levels, ranks = tuple(levels), tuple(ranks)
    if len(levels) < 2 or list(levels) != sorted(set(levels)) or not all(0.0 <= e < 1.0 for e in levels):
        raise ValueError(f"levels must be >= 2 increasing compression ratios in [0, 1), got {levels}")
    if not ranks or list(ranks) != sorted(set(ranks)) or ranks[0] < 1:
        raise ValueError(f"ranks must be increasing integers >= 1, got {ranks}")
    lo, hi = levels[0], levels[-1]
    mid, low_mid = levels[len(levels) // 2], levels[1]
    dom = {"partition": "domains", "alpha": 0.5}

    def plan(seed: int, runs: list[tuple]) -> list[RunSpec]:
        return [RunSpec(condition, seed, compression, **options) for condition, compression, options in runs]

    fit = plan(fit_seed, [
        ("held", (lo,), {"select": "large", "held": 1, **dom}),
        ("held", (lo,), {"select": "large", "held": 2, **dom}),
        ("held", (low_mid,), {"select": "large", "held": 3, **dom}),
        ("held", (lo,), {"select": "median", "held": 1, **dom}),
        ("held", (mid,), {"select": "median", "held": 2, **dom}),
        ("held", (lo,), {"select": "small", "held": 1, **dom}),
        ("held", (hi,), {"select": "small", "held": 2, **dom}),
        ("domains", levels, {"fraction": 0.3, **dom}),
        ("domains", (hi,), {"fraction": 0.5, **dom}),
        ("domains", (mid,), {"fraction": 0.3, "partition": "domains", "alpha": 0.2}),
        ("domains", (lo,), {"select": "large", "held": 2, "partition": "domains", "alpha": 2.0}),
        ("mixed", levels, {"fraction": 0.2, **dom}),
        ("rank", (mid,), {"fraction": 0.2, "ranks": ranks[:-1], **dom}),
        ("server", levels, {"fraction": 0.2, "server_fraction": 0.2, **dom}),
        ("held", (lo,), {"select": "small", "held": 1, "partition": "dirichlet"}),
        ("held", (lo,), {"select": "large", "held": 2, "partition": "dirichlet"}),
        ("partition", (mid,), {"fraction": 0.3, "partition": "dirichlet", "alpha": 0.3}),
        ("fraction", (lo,), {"fraction": 0.1}),
        ("fraction", (hi,), {"fraction": 0.4}),
        ("devices", (lo,), {"select": "large", "held": 1, "num_devices": 5, **dom}),
        ("devices", levels, {"fraction": 0.4, "num_devices": 5, **dom}),
        ("devices", (low_mid,), {"fraction": 0.15, "num_devices": 20, **dom}),
        ("devices", (lo,), {"select": "large", "held": 2, "num_devices": 20, **dom}),
    ])
    heldout = plan(heldout_seed, [
        ("held", (lo,), {"select": "large", "held": 1, **dom}),
        ("held", (low_mid,), {"select": "median", "held": 2, **dom}),
        ("held", (lo,), {"select": "small", "held": 1, **dom}),
        ("held", (mid,), {"select": "large", "held": 3, **dom}),
        ("domains", levels, {"fraction": 0.2, **dom}),
        ("mixed", levels, {"fraction": 0.3, **dom}),
        ("rank", levels[:2], {"fraction": 0.2, "ranks": ranks, **dom}),
        ("server", (lo,), {"select": "large", "held": 1, "server_fraction": 0.3, **dom}),
        ("held", (lo,), {"select": "median", "held": 1, "partition": "dirichlet"}),
        ("fraction", (mid,), {"fraction": 0.3}),
        ("devices", (lo,), {"select": "large", "held": 2, "num_devices": 5, **dom}),
        ("devices", levels, {"fraction": 0.1, "num_devices": 20, **dom}),
    ])
    return fit, heldout


def fedpeat_engine(num_devices: int, seed: int, local_steps: int, max_rank: int, domains: Sequence[str] = ("pydocs",),
                   **options):
    """The engine behind the env: ``EngineConfig`` of FedPEAT (case 1) with its adapter at global rank ``max_rank`` and
    ``local_steps`` local steps, on ``domains`` (the full model evaluated on up to ``EVAL_BLOCKS_PER_DOMAIN`` held-out
    blocks of each; no emulator evaluations); ``options`` are further ``EngineConfig`` fields (partition, server share,
    …). Shared by the calibration runs and the env's engine fidelity, so both run the same engine."""
    from federation.engine import EngineConfig
    from federation.methods import FedPEAT, FedPEATConfig
    from federation.training import LocalTrainConfig

    method_config = FedPEATConfig(train=LocalTrainConfig(steps=local_steps), lora=replace(FedPEAT.default_lora, rank=max_rank))
    return EngineConfig(method="fedpeat", num_devices=num_devices, seed=seed, method_config=method_config,
                        domains=tuple(domains), max_eval_blocks=EVAL_BLOCKS_PER_DOMAIN * len(domains),
                        evaluate_emulators=False, **options)


def domain_split(spec: RunSpec) -> tuple[tuple[float, ...], ...]:
    """A content-skewed run's (N, D) per-domain device shares: per domain, Dirichlet(α) over the devices (the env's
    construction), drawn from the run's own stream."""
    rng = np.random.default_rng([spec.seed, DOMAIN_SPLIT_STREAM])
    draws = rng.dirichlet(np.full(spec.num_devices, spec.alpha), size=len(spec.domains))  # (D, N)
    return tuple(map(tuple, draws.T.tolist()))


def real_data(runner) -> tuple[np.ndarray, np.ndarray, float]:
    """The data of an engine run (``federation.engine.RoundRunner``) as the env sees it: each device's share of all
    training blocks (N,), its domain histogram (N, D) in ``DOMAINS`` order, the server's share."""
    data = runner.data
    columns = [DOMAINS.index(d) for d in data.domains]
    counts = np.zeros((data.num_devices, len(DOMAINS)))
    for i, labels in enumerate(data.device_labels):
        counts[i, columns] = np.bincount(labels, minlength=len(data.domains))
    total = counts.sum() + len(data.server_blocks)
    return counts.sum(axis=1) / total, counts / counts.sum(axis=1, keepdims=True), float(len(data.server_blocks) / total)


def domain_perplexities(runner, missing: float = 1.0) -> np.ndarray:
    """(D,) the engine's last full-model perplexity on each domain (``missing`` for domains it does not hold)."""
    out = np.full(len(DOMAINS), missing)
    domains = runner.data.domains
    if len(domains) == 1:
        out[DOMAINS.index(domains[0])] = runner.last_perplexity
    else:
        for task, ppl in runner.server.task_perplexity.items():
            out[DOMAINS.index(domains[task])] = ppl
    return out


def _selection(spec: RunSpec, sizes: np.ndarray, rng: np.random.Generator) -> set[int]:
    """The devices that train this round."""
    n = spec.num_devices
    if spec.select == "random":
        chosen = 0 if spec.fraction == 0 else max(1, round(spec.fraction * n))
        return set(rng.choice(n, size=chosen, replace=False).tolist())
    order = np.argsort(sizes, kind="stable")
    start = {"small": 0, "median": (n - spec.held) // 2, "large": n - spec.held}[spec.select]
    return set(order[start:start + spec.held].tolist())


def engine_trajectory(spec: RunSpec, settings: EngineSettings, on_round: Callable[[], None] | None = None,
                      executor=None) -> Trajectory:
    """Run ``settings.rounds`` FedPEAT rounds of ``spec``; ``on_round()`` after each round. ``executor``
    (``federation.executors.Executor``) runs the clients (default: in this process)."""
    from federation.engine import RoundRunner
    from federation.methods import DeviceDecision

    split: dict = {"partition": "iid"}
    if spec.partition == "domains":
        split = {"device_domain_shares": domain_split(spec)}
    elif spec.partition == "dirichlet":
        split = {"partition": "dirichlet", "dirichlet_alpha": spec.alpha}
    runner = RoundRunner(fedpeat_engine(spec.num_devices, spec.seed, settings.local_steps, settings.max_rank,
                                        domains=spec.domains, foundation=settings.foundation,
                                        server_fraction=spec.server_fraction, **split), executor)
    n = spec.num_devices
    shares, mix, server_share = real_data(runner)
    rng = np.random.default_rng([spec.seed, 1 + CONDITIONS.index(spec.condition)])  # this run's selections
    ppl, domain_ppl = [runner.initial_perplexity], [domain_perplexities(runner, math.nan)]
    eps_rows, rank_rows = [], []
    for _ in range(settings.rounds):
        selected = _selection(spec, shares, rng)
        eps = rng.choice(spec.compression, size=n)
        ranks = rng.choice(spec.ranks, size=n)
        decisions = [DeviceDecision(i in selected, float(eps[i]) if i in selected else 0.0,
                                    int(ranks[i]) if i in selected else None) for i in range(n)]
        result = runner.run_round(decisions)
        ppl.append(result.full_perplexity)
        domain_ppl.append(domain_perplexities(runner, math.nan))
        eps_rows.append(tuple(float(eps[i]) if i in selected else math.nan for i in range(n)))
        rank_rows.append(tuple(int(ranks[i]) if i in selected else 0 for i in range(n)))
        if on_round is not None:
            on_round()
    blocks = int(sum(len(b) for b in runner.data.device_blocks) + len(runner.data.server_blocks))
    runner.close()
    return Trajectory(spec, tuple(ppl), tuple(tuple(float(x) for x in row) for row in domain_ppl),
                      tuple(float(x) for x in shares), tuple(map(tuple, mix.tolist())), server_share, blocks,
                      tuple(eps_rows), tuple(rank_rows))


def episode_trajectory(trace: Sequence[dict], seed: int, env_config) -> Trajectory:
    """An env episode as a calibration run (condition "policy"): ``trace`` from ``agents.evaluate.run_episode`` (its
    start, then one record per round) on an env with ``env_config`` (``EnvConfig``)."""
    start, rounds = trace[0], trace[1:]
    held = np.asarray(start["eval_weight"]) > 0
    compression = tuple(tuple(float(e) for e in r["compression"]) for r in rounds)
    ranks = tuple(tuple(int(k) for k in r["rank"]) for r in rounds)
    used = sorted({e for row in compression for e in row if not math.isnan(e)}) or [0.0]
    used_ranks = sorted({k for row in ranks for k in row if k}) or [max(env_config.rank_levels)]
    partition = env_config.partition
    spec = RunSpec("policy", seed, tuple(used), fraction=0.0, ranks=tuple(used_ranks), partition=partition,
                   alpha=env_config.domain_alpha if partition == "domains" else env_config.dirichlet_alpha,
                   num_devices=env_config.num_devices, server_fraction=env_config.server_fraction)
    domain_ppl = tuple(tuple(float(p) if h else math.nan for p, h in zip(r["domain_ppl"], held)) for r in trace)
    return Trajectory(spec, tuple(float(r["perplexity"]) for r in trace), domain_ppl, tuple(start["share"]),
                      tuple(map(tuple, start["mix"])), float(start["server_share"]), int(round(start["blocks"])),
                      compression, ranks)


def _run_in_worker(spec: RunSpec, settings: EngineSettings, executor=None) -> Trajectory:
    import time

    from federation.foundation import worker_setup

    worker_setup()
    started = time.perf_counter()
    trajectory = engine_trajectory(spec, settings, executor=executor)
    return replace(trajectory, wall_time_s=time.perf_counter() - started)


def run_plan(specs: Sequence[RunSpec], settings: EngineSettings, workers: int = 2,
             on_run: Callable[[Trajectory], None] | None = None, executor=None) -> list[Trajectory]:
    """Every run of ``specs`` (in that order), on ``workers`` processes (1: in this process); ``on_run`` after each.
    With an ``executor`` (e.g. Ray's client actors) the runs go one after another in this process, their clients on
    it (``workers`` is then ignored). Runs start longest first (by their device-rounds), so the workers finish
    together."""
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
    order = sorted(range(len(specs)), key=lambda k: -_work(specs[k]))
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_run_in_worker, specs[k], settings): k for k in order}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if on_run is not None:
                on_run(results[futures[future]])
    return [results[k] for k in range(len(specs))]


def _work(spec: RunSpec) -> float:
    """Devices trained per round, weighted by the emulator's size: a run's relative cost."""
    devices = spec.held if spec.select != "random" else max(1, round(spec.fraction * spec.num_devices))
    return devices * (1.0 - 0.6 * float(np.mean(spec.compression))) + 0.3


def trajectory_to_dict(run: Trajectory) -> dict:
    """A JSON-ready dict of ``run`` (NaN entries as null)."""
    out = asdict(run)
    out["compression"] = [[None if math.isnan(e) else e for e in row] for row in run.compression]
    out["domain_perplexity"] = [[None if math.isnan(p) else p for p in row] for row in run.domain_perplexity]
    return out


def trajectory_from_dict(data: dict) -> Trajectory:
    """The inverse of ``trajectory_to_dict``."""
    spec = data["spec"]
    spec = RunSpec(**{**spec, "compression": tuple(spec["compression"]), "ranks": tuple(spec["ranks"])})

    def floats(rows) -> tuple[tuple[float, ...], ...]:
        return tuple(tuple(math.nan if x is None else float(x) for x in row) for row in rows)

    return Trajectory(spec, tuple(data["perplexity"]), floats(data["domain_perplexity"]), tuple(data["device_share"]),
                      floats(data["device_mix"]), float(data["server_share"]), int(data["blocks"]),
                      floats(data["compression"]), tuple(tuple(int(r) for r in row) for row in data["rank"]),
                      float(data.get("wall_time_s", 0.0)))
