"""The shared federated round: server configures jobs, an executor trains clients, the method aggregates,
the server evaluates the plugged-in full model. Every method and the Gymnasium env run on this loop."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from federation.client import SERVER_DEVICE, Client, ClientFailure, ClientJob, ClientUpdate
from federation.data import DOMAINS, PRETRAIN_DOMAINS, PartitionKind, build_federated_data
from federation.emulator import SubModelSpec
from federation.evaluation import PlugInEvaluator
from federation.executors import Executor, LocalExecutor
from federation.foundation import load_foundation
from federation.messages import MessageLog
from federation.methods import METHODS, make_method
from federation.methods.base import DeviceDecision, Method, MethodConfig
from federation.seeding import child_seed, seed_everything
from federation.submodels import SubModels
from federation.system import (
    LATENCY_AGGREGATIONS,
    ChannelConfig,
    LatencyAggregation,
    WirelessChannel,
    downlink_share,
    round_latency_s,
    transmission_latency_s,
)

CLIENT_SAMPLING_STREAM = 1
"""Second word of the client sampler's seed ``[seed, CLIENT_SAMPLING_STREAM]``."""


@dataclass(frozen=True)
class EngineConfig:
    """A federated run. Defaults run in seconds per round on the embedded model."""

    method: str = "fedpeat"
    """Method name (see ``federation.methods.METHODS``)."""
    num_devices: int = 4
    """Devices N."""
    seed: int = 0
    """Seed of every random draw of the run (data split, channel, local batches, adapter init)."""
    foundation: str | None = None
    """None: the embedded tiny GPT-2; otherwise a local path or hub name for ``from_pretrained``."""
    domains: tuple[str, ...] = ("pydocs",)
    """Fine-tuning domains (held out from pretraining)."""
    partition: PartitionKind = "iid"
    """How train blocks are split across devices."""
    dirichlet_alpha: float = 0.5
    """Concentration of the Dirichlet split (partition="dirichlet")."""
    device_shares: tuple[float, ...] | None = None
    """The devices' shares of the training data (one per device; normalised), replacing ``partition`` (e.g. the env's
    drawn shares, so that both fidelities see the same data split)."""
    device_domain_shares: tuple[tuple[float, ...], ...] | None = None
    """Per device, its share of each domain's training blocks ((N, len(domains)), columns normalised), replacing
    ``partition`` by a content-skewed split (e.g. the env's per-domain Dirichlet draws)."""
    server_fraction: float = 0.0
    """Share of the tuning data held by the server, which then trains on the full model every round and
    joins the aggregation (FedPEAT server–device collaborative tuning). 0 disables it."""
    block_size: int = 128
    """Tokens per training sequence."""
    max_eval_blocks: int = 64
    """Held-out blocks for perplexity (split equally between the domains)."""
    evaluate_emulators: bool = True
    """Also evaluate the global adapter inside each participant's emulator every round
    (``RoundResult.emulator_perplexity``); False: only the full model (the env's engine needs only that)."""
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    """Wireless channel of the devices."""
    latency_aggregation: LatencyAggregation = "sum"
    """"sum": the round's latency is Σ_i Q_i, devices download in turn at the whole downlink rate (FedPEAT's total
    latency); "max": max_i Q_i, the downlink split equally between the devices downloading in the round
    (``federation.system.LATENCY_AGGREGATIONS``)."""
    method_config: MethodConfig = field(default_factory=MethodConfig)
    """Settings passed to the method (adapter blocks, LoRA, local training)."""
    clients_per_round: int | float | None = None
    """Client sampling, as FL frameworks do: each round draws this many of the N devices (an int K in [1, N]) or this
    share of them (a float in (0, 1], at least one device), with the run's seed; the round's decisions apply to the
    drawn devices and the others sit out. Sampled devices free their built model after training (they are unlikely
    to be drawn next round), so memory stays bounded with many devices. None: no sampling."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {self.method!r}")
        if self.num_devices < 1:
            raise ValueError(f"num_devices must be >= 1, got {self.num_devices}")
        if not 0.0 <= self.server_fraction < 1.0:
            raise ValueError(f"server_fraction must be in [0, 1), got {self.server_fraction}")
        tuning = tuple(d for d in DOMAINS if d not in PRETRAIN_DOMAINS)
        if not self.domains or any(d not in tuning for d in self.domains):
            raise ValueError(f"domains must be tuning domains {tuning} (the others were pretrained on), got {self.domains}")
        if METHODS[self.method].multi_task and (len(self.domains) < 2 or self.server_fraction > 0):
            raise ValueError(f"method {self.method!r} trains one adapter per task: domains must name >= 2 tasks and "
                             f"server_fraction must be 0, got domains={self.domains}, server_fraction={self.server_fraction}")
        if not self.dirichlet_alpha > 0:
            raise ValueError(f"dirichlet_alpha must be > 0, got {self.dirichlet_alpha}")
        if self.block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {self.block_size}")
        if self.latency_aggregation not in LATENCY_AGGREGATIONS:
            raise ValueError(f"latency_aggregation must be one of {LATENCY_AGGREGATIONS}, got {self.latency_aggregation!r}")
        k = self.clients_per_round
        if not (k is None or (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= self.num_devices)
                or (isinstance(k, float) and 0.0 < k <= 1.0)):
            raise ValueError(f"clients_per_round must be an integer in [1, num_devices={self.num_devices}], a share in "
                             f"(0, 1] or None, got {k!r}")

    @property
    def sampled_clients(self) -> int | None:
        """Devices drawn per round (None: no client sampling)."""
        k = self.clients_per_round
        return k if k is None or isinstance(k, int) else max(1, round(k * self.num_devices))


@dataclass(frozen=True)
class DeviceRound:
    """One device's record of one round (zeros where it was not selected)."""

    device: int
    selected: bool
    compression: float
    kept_blocks: int
    emulator_exchanged: bool
    bytes_down: int
    bytes_up: int
    latency_s: float
    memory_bytes: int
    train_loss: float
    emulator_perplexity: float
    channel_gain_db: float
    uplink_rate_bps: float
    downlink_rate_bps: float
    failure: str = ""
    """Why the device sent no update this round (its jobs' errors, "; "-joined); empty when it did not fail."""


@dataclass(frozen=True)
class RoundResult:
    round: int
    full_perplexity: float
    """Plug-in perplexity of the full model with the aggregated adapter, on held-out tuning-domain data."""
    emulator_perplexity: float
    """Mean over participants of the global adapter's perplexity inside their emulator (NaN without emulators)."""
    round_latency_s: float
    """Σ_i Q_i or max_i Q_i over the selected devices (``EngineConfig.latency_aggregation``; 0 when none is)."""
    bytes_down: int
    bytes_up: int
    exchanges: int
    """Devices that downloaded a new emulator this round."""
    peak_memory_bytes: int
    """Largest training footprint among the selected devices."""
    participants: int
    """Devices whose update was aggregated (selected and not failed)."""
    train_loss: float
    wall_time_s: float
    devices: tuple[DeviceRound, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    """Method-specific numbers (e.g. FL-TAC clustering accuracy, per-task perplexity ``ppl_<domain>``)."""
    failures: int = 0
    """Devices dropped from the round because they failed (``DeviceRound.failure``). When every selected device
    fails, nothing is aggregated: the global state and the perplexity stay as they were."""

    def summary(self) -> dict:
        """Flat dict of the round-level fields and the metrics (no per-device records)."""
        out = asdict(self)
        out.pop("devices")
        return {**out, **out.pop("metrics")}


class Server:
    """The model owner: holds the full model, its sub-models and the global trainable state; configures the round's
    jobs with the method, aggregates with it and evaluates the plugged-in state."""

    def __init__(self, method: Method, full_model, tokenizer, eval_blocks: torch.Tensor, seed: int,
                 eval_labels: np.ndarray | None = None, device_tasks: Sequence[tuple[int, ...]] = (), num_tasks: int = 1):
        self.method = method
        self.models = SubModels(full_model, tokenizer, method.build_submodel)
        self.num_layers = self.models.num_layers
        self.device_tasks = list(device_tasks)
        method.setup(self.models, device_tasks, num_tasks)
        self.evaluator = PlugInEvaluator(self.models, eval_blocks, eval_labels, method.lora, method.server_spec())
        self.global_state = method.init_global_state(seed)
        self.device_specs: dict[int, SubModelSpec] = {}
        self.task_perplexity: dict[int, float] = {}
        """Per-task perplexities of the last full-model evaluation (methods with per-task states)."""

    def frozen_payload(self, spec: SubModelSpec) -> dict[str, torch.Tensor]:
        """Frozen weights a holder of ``spec`` needs (none when the method trains every weight)."""
        return {} if self.method.lora is None else self.models.payload(spec)

    def held_payload(self, spec: SubModelSpec) -> dict[str, torch.Tensor] | None:
        """``frozen_payload`` of a sub-model a device already holds (a resumed run puts it back on the device, not
        logged), or None when the server no longer has its weights (an older revision: the device's next job
        brings the current one anyway)."""
        return self.frozen_payload(spec) if self.method.lora is None or self.models.available(spec) else None

    def configure(
        self, round_idx: int, decisions: Sequence[DeviceDecision], seeds: np.ndarray, log: MessageLog,
        keep_models: bool = True,
    ) -> tuple[list[ClientJob], dict[int, bool]]:
        """The method's jobs for the selected devices, with the frozen weights of a device's new sub-model on its
        first job; logs the downlink. ``keep_models`` False: devices free their built model after training. Returns
        (jobs, device -> emulator exchanged)."""
        jobs, exchanged = [], {}
        per_device: dict[int, int] = {}
        for config in self.method.configure(round_idx, decisions, self.global_state):
            device, spec = config.device, config.spec
            frozen = None
            if device not in exchanged:
                if self.device_specs.get(device) != spec:
                    frozen = self.frozen_payload(spec)
                    self.device_specs[device] = spec
                    if frozen:
                        log.record(round_idx, device, "down", "frozen" if spec.is_full else "emulator", frozen)
                exchanged[device] = bool(frozen)
            log.record(round_idx, device, "down", self.method.trainable_kind, config.trainable)
            n = per_device[device] = per_device.get(device, -1) + 1  # the device's n-th job this round
            jobs.append(ClientJob(device, round_idx, spec, frozen, config.trainable, config.lora,
                                  self.method.train_config, int(seeds[device]) + n, config.objective, config.task,
                                  keep_models))
        return jobs, exchanged

    def aggregate(self, updates: Sequence[ClientUpdate]) -> None:
        if updates:
            self.global_state = self.method.aggregate(self.global_state, updates)

    def evaluate(self, spec: SubModelSpec | None = None) -> float:
        """Perplexity of the global state in the full model (spec None) or in the sub-model ``spec``; a method with
        per-task states pools its tasks' tokens (``PlugInEvaluator.perplexity``; the full model's per-task values
        are kept in ``task_perplexity``)."""
        ppl, per_task = self.evaluator.perplexity(self.method.evaluation_states(self.global_state), spec)
        if spec is None and per_task:
            self.task_perplexity = per_task
        return ppl


class RoundRunner:
    """Runs federated rounds of one method: the unit shared by the CLI, the benchmarks and the env."""

    def __init__(self, config: EngineConfig = EngineConfig(), executor: Executor | None = None) -> None:
        """``executor``: runs the clients (default: a new ``LocalExecutor``); it is started with this run's data, so
        one executor serves several runs one after another (e.g. the env's episodes)."""
        self.config = config
        self.rng = seed_everything(config.seed)
        self.model, self.tokenizer = load_foundation(config.foundation)
        self.method = make_method(config.method, config.method_config)
        self.data = build_federated_data(
            self.tokenizer, config.num_devices, self.rng, domains=config.domains, block_size=config.block_size,
            partition=config.partition, alpha=config.dirichlet_alpha, server_fraction=config.server_fraction,
            max_eval_blocks=config.max_eval_blocks, device_shares=config.device_shares,
            device_domain_shares=config.device_domain_shares,
        )
        self.channel = WirelessChannel(config.num_devices, config.channel, np.random.default_rng(child_seed(self.rng)))
        self.log = MessageLog()
        device_tasks = [tuple(int(t) for t in np.unique(labels)) for labels in self.data.device_labels]
        self.server = Server(self.method, self.model, self.tokenizer, self.data.eval_blocks, child_seed(self.rng),
                             self.data.eval_labels, device_tasks, len(config.domains))
        self.server_client = (
            Client(SERVER_DEVICE, self.data.server_blocks, self.model.config) if len(self.data.server_blocks) else None
        )
        self._owns_executor = executor is None
        self.executor = executor or LocalExecutor()
        self.executor.start(self.data.device_blocks, self.model.config, self.data.device_labels)
        self.sampler = np.random.default_rng([config.seed, CLIENT_SAMPLING_STREAM])
        """Draws each round's devices under client sampling (its own stream: the run's other draws do not move)."""
        self.round = 0
        self.initial_perplexity = self.server.evaluate()
        self.last_perplexity = self.initial_perplexity

    def default_decisions(self, compression: float = 0.0) -> list[DeviceDecision]:
        return [DeviceDecision(True, compression) for _ in range(self.config.num_devices)]

    def run_round(self, decisions: Sequence[DeviceDecision] | None = None, evaluate: bool = True) -> RoundResult:
        """One federated round with the given per-device decisions (default: all devices, compression 0).

        ``evaluate=False`` skips the perplexity evaluations (the result then reports NaN perplexities)."""
        started = time.perf_counter()
        decisions = list(decisions) if decisions is not None else self.default_decisions()
        self.validate(decisions)
        decisions = self._sample(decisions)
        self.round += 1
        channel = self.channel.step()
        seeds = self.rng.integers(0, 2**31 - 1, size=self.config.num_devices + 1)  # drawn every round for all
        first_message = len(self.log.messages)
        jobs, exchanged = self.server.configure(self.round, decisions, seeds, self.log,
                                                keep_models=self.config.clients_per_round is None)
        updates = self._train(jobs, seeds[-1])
        self.server.aggregate(updates)
        full_ppl, device_ppl = self._evaluate(updates) if evaluate and updates else (
            self.last_perplexity if evaluate else math.nan, {})
        records = self._device_records(decisions, updates, exchanged, channel, device_ppl, first_message)
        return self._result(records, updates, full_ppl, device_ppl, time.perf_counter() - started,
                            evaluated=evaluate and bool(updates))

    def _sample(self, decisions: list[DeviceDecision]) -> list[DeviceDecision]:
        """Under client sampling, the decisions with every device that was not drawn this round sitting out."""
        k = self.config.sampled_clients
        if k is None:
            return decisions
        drawn = set(self.sampler.choice(self.config.num_devices, size=k, replace=False).tolist())
        return [d if i in drawn else replace(d, selected=False) for i, d in enumerate(decisions)]

    def _train(self, jobs: list[ClientJob], server_seed: int) -> list[ClientUpdate]:
        """The devices' jobs on the executor (their uploads logged), then the collaborating server's own update."""
        results = self.executor.run(jobs)
        updates = [r for r in results if isinstance(r, ClientUpdate)]
        for failure in (r for r in results if isinstance(r, ClientFailure)):
            self.server.device_specs.pop(failure.device, None)  # it holds nothing now: re-send its sub-model next time
            self.log.record_failure(self.round, failure.device, failure.reason)
        for device in self.executor.lost_devices():  # e.g. its worker restarted: re-send its sub-model next time
            self.server.device_specs.pop(device, None)
        for update in updates:
            self.log.record(self.round, update.device, "up", self.method.trainable_kind, update.state)
        if self.server_client is not None:
            updates.append(self.server_client.run(self._server_job(server_seed)))
        return updates

    def _evaluate(self, updates: list[ClientUpdate]) -> tuple[float, dict[int, float]]:
        """(plug-in perplexity of the full model, perplexity of each device's sub-model for emulator methods)."""
        self.last_perplexity = self.server.evaluate()
        device_ppl: dict[int, float] = {}
        if self.method.uses_emulator and self.config.evaluate_emulators:
            by_spec: dict[SubModelSpec, float] = {}
            for u in updates:
                if u.device != SERVER_DEVICE:
                    spec = self.server.device_specs[u.device]
                    by_spec.setdefault(spec, self.server.evaluate(spec))
                    device_ppl[u.device] = by_spec[spec]
        return self.last_perplexity, device_ppl

    def _result(self, records: list[DeviceRound], updates: list[ClientUpdate], full_ppl: float,
                device_ppl: dict[int, float], wall_time_s: float, evaluated: bool) -> RoundResult:
        selected = [r for r in records if r.selected]
        return RoundResult(
            round=self.round,
            full_perplexity=full_ppl,
            emulator_perplexity=float(np.mean(list(device_ppl.values()))) if device_ppl else math.nan,
            round_latency_s=round_latency_s((r.latency_s for r in selected), self.config.latency_aggregation),
            bytes_down=sum(r.bytes_down for r in records),
            bytes_up=sum(r.bytes_up for r in records),
            exchanges=sum(r.emulator_exchanged for r in records),
            peak_memory_bytes=max((r.memory_bytes for r in selected), default=0),
            participants=len(selected),
            train_loss=float(np.mean([u.train_loss for u in updates])) if updates else math.nan,
            wall_time_s=wall_time_s,
            devices=tuple(records),
            metrics=self._metrics(evaluated),
            failures=sum(bool(r.failure) for r in records),
        )

    def _metrics(self, evaluated: bool) -> dict[str, float]:
        metrics = dict(self.method.round_metrics())
        if evaluated:
            metrics |= {f"ppl_{self.data.domains[t]}": p for t, p in self.server.task_perplexity.items()}
        return metrics

    def validate(self, decisions: Sequence[DeviceDecision]) -> None:
        """Raise ``ValueError`` for decisions the method cannot run, before anything is sent or trained."""
        if len(decisions) != self.config.num_devices:
            raise ValueError(f"decisions must have one entry per device ({self.config.num_devices}), got {len(decisions)}")
        self.method.validate(decisions)

    def _server_job(self, seed: int) -> ClientJob:
        assert self.server_client is not None  # called for a collaborative run only
        spec = self.method.server_spec()
        frozen = self.server.frozen_payload(spec) if self.server_client.spec != spec else None
        return ClientJob(SERVER_DEVICE, self.round, spec, frozen, self.server.global_state, self.method.lora_for(),
                         self.method.train_config, int(seed), self.method.objective())

    def _device_records(self, decisions, updates, exchanged, channel, device_ppl, first_message: int) -> list[DeviceRound]:
        by_device: dict[int, list[ClientUpdate]] = {}
        for u in updates:  # several per device for multi-task methods (one per task, trained one after another)
            by_device.setdefault(u.device, []).append(u)
        down, up = np.zeros(len(decisions), dtype=np.int64), np.zeros(len(decisions), dtype=np.int64)
        failures: dict[int, list[str]] = {}
        for m in self.log.messages[first_message:]:  # this round's messages only, one pass
            (down if m.direction == "down" else up)[m.device] += m.num_bytes
            if m.kind == "failure":
                failures.setdefault(m.device, []).append(m.note)
        share = downlink_share(self.config.latency_aggregation == "max", int((down > 0).sum()))
        gain_db = 10.0 * np.log10(channel.gain)
        records = []
        for i, decision in enumerate(decisions):
            device_updates = by_device.get(i, [])
            latency = float(transmission_latency_s(down[i], up[i], share * channel.downlink_rate_bps[i],
                                                   channel.uplink_rate_bps[i]))
            spec = self.server.device_specs.get(i)
            records.append(DeviceRound(
                device=i,
                selected=bool(device_updates),
                compression=decision.compression if decision.selected else math.nan,
                kept_blocks=len(spec.layers) if spec is not None and decision.selected else 0,
                emulator_exchanged=exchanged.get(i, False),
                bytes_down=int(down[i]),
                bytes_up=int(up[i]),
                latency_s=latency,
                memory_bytes=max((u.memory.total_bytes for u in device_updates), default=0),
                train_loss=float(np.mean([u.train_loss for u in device_updates])) if device_updates else math.nan,
                emulator_perplexity=device_ppl.get(i, math.nan),
                channel_gain_db=float(gain_db[i]),
                uplink_rate_bps=float(channel.uplink_rate_bps[i]),
                downlink_rate_bps=float(channel.downlink_rate_bps[i]),
                failure="; ".join(failures.get(i, [])),
            ))
        return records

    def run(self, rounds: int, decisions: Sequence[DeviceDecision] | None = None, progress=None) -> list[RoundResult]:
        """``rounds`` rounds with fixed decisions; ``progress(result)`` is called after each round."""
        results = []
        for _ in range(rounds):
            results.append(self.run_round(decisions))
            if progress is not None:
                progress(results[-1])
        return results

    def save_checkpoint(self, directory: str | Path, results: Sequence[RoundResult],
                        decisions: Sequence[DeviceDecision] | None = None) -> Path:
        """Checkpoint the run after its last round into ``directory`` (``federation.checkpoint``): ``results`` are
        the rounds so far, ``decisions`` the fixed decisions of the run if any (a resume must use the same).
        Returns the checkpoint's JSON file."""
        from federation.checkpoint import save_checkpoint

        return save_checkpoint(self, Path(directory), results, decisions)

    def resume(self, directory: str | Path, decisions: Sequence[DeviceDecision] | None = None) -> list[RoundResult]:
        """Continue from the latest checkpoint in ``directory`` (this runner fresh, with the checkpoint's config and
        ``decisions``, else ``ValueError`` naming what differs); returns the checkpoint's rounds. The next
        ``run_round`` gives the numbers the interrupted run would have given."""
        from federation.checkpoint import load_checkpoint

        return load_checkpoint(self, Path(directory), decisions)

    def close(self) -> None:
        """Shut the executor down if this runner created it (one passed in stays up for its owner's next run)."""
        if self._owns_executor:
            self.executor.shutdown()
