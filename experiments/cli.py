"""``fedpeat`` command line (typer). Also reachable as ``python -m experiments``."""

from __future__ import annotations

import importlib
import json
import math
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer
from rich.console import Console

if TYPE_CHECKING:
    from agents.policy import Policy
    from federation.data import PartitionKind
    from federation.executor_config import ExecutorKind
    from federation.system import LatencyAggregation

app = typer.Typer(no_args_is_help=True, add_completion=False, help="FedPEAT-Gym: federated emulator-assisted tuning.")
console = Console()


def registry_name(registry: str, option: str):
    """A typer parser that accepts a name of ``registry`` ("module:NAME", a dict or tuple), imported on first use, so
    validation follows a new registry entry and ``fedpeat --help`` stays fast; any other value is refused with the
    list of names."""

    def parse(value: str) -> str:
        module, name = registry.split(":")
        names = tuple(getattr(importlib.import_module(module), name))
        if value not in names:
            raise typer.BadParameter(f"{option} must be one of {names}, got {value!r}")
        return value

    return parse


def writable_dir(path: Path | None) -> Path | None:
    """Typer callback of output-directory options: at parse time, before any work, ``path`` must be a directory
    that exists or can be created, and that this process can write to (None passes: the command's default). Writing
    is tried (a temporary directory made and removed in the nearest existing one): permission bits do not tell, e.g.
    for root in ``/proc`` or on a read-only mount."""
    if path is None:
        return None
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())  # would hold the new ones
    why = "is not a directory" if not existing.is_dir() else None
    if why is None:
        try:
            Path(tempfile.mkdtemp(prefix=".fedpeat-probe-", dir=existing)).rmdir()
        except OSError as err:
            why = f"is not writable ({err.strerror or err})"
    if why is not None:
        raise typer.BadParameter(f"must be a directory that can be created and written; {str(existing)!r} {why}")
    return path


def writable_file(path: Path | None) -> Path | None:
    """Typer callback of output-file options: the file's directory must pass ``writable_dir``, the file must not be
    a directory."""
    if path is None:
        return None
    if path.is_dir():
        raise typer.BadParameter(f"must be a file, got the directory {str(path)!r}")
    writable_dir(path.parent)
    return path


def finite_number(value) -> float:
    """Typer parser of number options: a finite float ("nan" and "inf" parse as floats and would slip through every
    range check written as a comparison); anything else is refused with the option's name."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise typer.BadParameter(f"must be a finite number, got {value!r}")
    return number


NUMBER: dict[str, Any] = {"parser": finite_number, "metavar": "NUMBER"}
"""Keyword arguments of a number option: ``typer.Option(0.5, **NUMBER, help=...)``."""

METHOD = registry_name("federation.methods:METHODS", "method")
EXECUTOR = registry_name("federation.executor_config:EXECUTORS", "executor")
ALGO = registry_name("agents.train:ALGOS", "algo")
PARTITION = registry_name("federation.data:PARTITIONS", "partition")


def command_line(ctx: typer.Context) -> str:
    """The command as a user would type it again: ``fedpeat <command>`` and every option that differs from its
    default (repeatable options repeated), then the extra Zoo-style arguments."""
    parts = [ctx.command_path.replace(ctx.find_root().info_name or "", "fedpeat", 1)]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if not getattr(param, "opts", None) or value == param.default or value in (None, [], ()):
            continue
        flag = max(param.opts, key=len)
        if isinstance(value, bool):
            parts.append(flag if value else max(getattr(param, "secondary_opts", None) or [f"--no-{flag[2:]}"], key=len))
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            text = str(item)
            parts.append(f"{flag} {repr(text) if any(c in text for c in ' [],') else text}")
    return " ".join(parts + list(ctx.args))


def check_policy_names(option: str, names: list[str]) -> None:
    """``ValueError`` naming ``--option`` and ``agents.make_policy``'s reason for the first name it does not know."""
    from agents import make_policy

    for name in names:
        try:
            make_policy(name)
        except ValueError as err:
            raise ValueError(f"--{option}: {err}") from None


@contextmanager
def user_errors():
    """Bad input (a ``ValueError`` from validation) becomes one red line naming the problem and exit code 2."""
    try:
        yield
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err


def at_least(minimum: int, **options: int | float | None) -> None:
    """``ValueError`` naming the first option below ``minimum`` (keyword ``local_steps`` is ``--local-steps``; None
    passes: the command's default). The first check of a command, before any work."""
    for name, value in options.items():
        if value is not None and value < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


EXECUTOR_OPTION = typer.Option("local", parser=EXECUTOR, metavar="NAME", help="Where the clients train: local (this "
                                "process) or ray (long-lived client actors on Ray; needs the ray extra).")
RAY_ADDRESS_OPTION = typer.Option(None, help="With --executor ray: the cluster to join (e.g. auto, ray://host:10001); "
                                            "default: start a local Ray.")
RAY_WORKERS_OPTION = typer.Option(None, min=1, help="With --executor ray: client actors (devices spread over them); default: "
                                            "one per --ray-cpus-per-worker of the cluster's CPUs.")
RAY_CPUS_OPTION = typer.Option(1.0, **NUMBER, help="With --executor ray: CPUs reserved per client actor (its torch threads).")


@contextmanager
def executor_scope(kind: str, address: str | None, workers: int | None, cpus_per_worker: float):
    """The executor the options name, shut down on exit; None for "local" (each run then makes its own in-process
    one). Bad options raise ``ValueError`` before any work."""
    from federation.executor_config import ExecutorConfig

    if kind == "local":
        if address is not None or workers is not None:
            raise ValueError("--ray-address and --ray-workers apply to --executor ray only")
        yield None
        return
    executor = ExecutorConfig(cast("ExecutorKind", kind), address, workers, cpus_per_worker).make()  # parsed: EXECUTOR
    try:
        yield executor
    finally:
        executor.shutdown()


@app.command("build-corpus")
def build_corpus_cmd(
    out: Path = typer.Option(None, callback=writable_dir, help="Directory for the splits (default: the committed federation/assets/corpus)."),
) -> None:
    """Rebuild the committed offline corpus splits from their sources (needs the `corpus` extra); byte-identical."""
    from experiments.build_corpus import build_corpus
    from federation.data import CORPUS_DIR

    console.print(build_corpus(out or CORPUS_DIR))


@app.command()
def pretrain(
    steps: int = typer.Option(1500, help="Optimiser steps."),
    seed: int = typer.Option(0, help="Seed of every random draw."),
    out: Path = typer.Option(None, callback=writable_dir, help="Output directory (default: the embedded checkpoint folder)."),
) -> None:
    """Pretrain the embedded tiny GPT-2 (tokenizer + model) on the offline corpus (one torch thread, as the committed
    checkpoint was: the same seed then gives the same weights)."""
    import torch

    from experiments.pretrain import PretrainConfig
    from experiments.pretrain import pretrain as run_pretrain
    from federation.foundation import EMBEDDED_DIR

    with user_errors():
        at_least(1, steps=steps)
        at_least(0, seed=seed)
    torch.set_num_threads(1)
    record = run_pretrain(replace(PretrainConfig(), steps=steps, seed=seed), out or EMBEDDED_DIR)
    console.print_json(json.dumps(record))


@app.command()
def run(
    method: str = typer.Option("fedpeat", parser=METHOD, metavar="NAME", help="Method (the registry federation.methods.METHODS)."),
    devices: int = typer.Option(4, help="Number of devices N."),
    rounds: int = typer.Option(5, help="Federated rounds."),
    seed: int = typer.Option(0, help="Seed of every random draw."),
    compression: list[float] = typer.Option([], **NUMBER, help="Emulator compression ε: once for all devices, or once per device."),
    lora_rank: list[int] = typer.Option([], help="LoRA rank: once for all devices, or once per device (≤ 8)."),
    lora_aggregation: str = typer.Option("naive", help="LoRA aggregation: naive (mean of A, B) or exact (mean of B·A)."),
    case: int = typer.Option(1, help="FedPEAT frozen-weight case (1, 2 or 3)."),
    server_fraction: float = typer.Option(0.0, **NUMBER, help="Share of data on the server, which then also trains (collaborative)."),
    local_steps: int = typer.Option(10, help="Local optimiser steps per round."),
    partition: str = typer.Option("iid", parser=PARTITION, metavar="NAME", help="Data split (federation.data.PARTITIONS: iid, dirichlet)."),
    alpha: float = typer.Option(0.5, **NUMBER, help="Dirichlet concentration (partition=dirichlet)."),
    latency_aggregation: str = typer.Option("sum", help="Round latency: sum (devices served in turn, FedPEAT's total) "
                                                        "or max (served at once, the downlink split between them)."),
    distill_steps: int = typer.Option(None, help="Sub-model distillation steps (fedpeat: default 0, fedot/fedpft: 50)."),
    domain: list[str] = typer.Option([], help="Tuning domain (repeatable; tasks of fltac). Default: pydocs; fltac: "
                                              "pydocs, licenses, docstrings."),
    option: list[str] = typer.Option([], "--option", "-o", help="Any other setting of the method's config as key=value "
                                     "(repeatable), e.g. -o keep_ratio=0.25 (fedpft), -o aggregation=zero-pad (hetlora)."),
    clients_per_round: str = typer.Option(None, help="Client sampling: devices drawn per round, a count K (e.g. 10) or a "
                                                     "share (e.g. 0.01); the others sit out. Default: all devices."),
    block_size: int = typer.Option(None, min=8, help="Tokens per training sequence. Default: 128, or the larger of 64 "
                                                     "and 32 that gives every device a training block (said when used)."),
    out: Path = typer.Option(None, callback=writable_dir, help="Directory for rounds.csv, devices.csv, messages.csv and run.json."),
    checkpoint_dir: Path = typer.Option(None, callback=writable_dir, help="Checkpoint the run into this directory after "
                                        "every round (server, devices, RNGs, rounds so far; the previous checkpoint is "
                                        "kept until the new one is written). A new run needs a directory without one."),
    resume: bool = typer.Option(False, help="Continue the run checkpointed in --checkpoint-dir up to --rounds, with the "
                                            "numbers of an uninterrupted run; the other options must be the ones it used."),
    executor: str = EXECUTOR_OPTION,
    ray_address: str = RAY_ADDRESS_OPTION,
    ray_workers: int = RAY_WORKERS_OPTION,
    ray_cpus_per_worker: float = RAY_CPUS_OPTION,
) -> None:
    """Run a federated tuning method and print its per-round table."""
    from experiments.run import (
        DEVICES_REMEDY,
        build_method_config,
        default_domains,
        fitting_block_size,
        metrics_table,
        parse_options,
        plan_run,
        round_table,
        run_federated,
        write_outputs,
    )
    from federation.engine import EngineConfig

    _quiet_libraries()
    with user_errors():
        at_least(1, devices=devices, rounds=rounds, local_steps=local_steps)
        at_least(0, seed=seed)
        method_config = build_method_config(method, local_steps, lora_aggregation, case, distill_steps, compression,
                                            parse_options(option))
        split = cast("PartitionKind", partition)  # PARTITION parsed it
        latency = cast("LatencyAggregation", latency_aggregation)  # EngineConfig checks it
        config = EngineConfig(method=method, num_devices=devices, seed=seed, server_fraction=server_fraction,
                              partition=split, dirichlet_alpha=alpha, domains=default_domains([method], domain),
                              latency_aggregation=latency, method_config=method_config,
                              clients_per_round=_count_or_share("--clients-per-round", clients_per_round, devices),
                              block_size=block_size or EngineConfig.block_size)
        if block_size is None and (fitting := fitting_block_size(devices, config.domains, server_fraction)) != config.block_size:
            console.print(f"block size {fitting}: blocks of {config.block_size} tokens are too few for {devices} devices "
                          "(--block-size sets it)")
            config = replace(config, block_size=fitting)
        plan_run(config, rounds, compression, lora_rank, DEVICES_REMEDY)  # the data and the model can realise it
        with executor_scope(executor, ray_address, ray_workers, ray_cpus_per_worker) as clients:
            runner, results = run_federated(config, rounds, compression, console, lora_rank, checkpoint_dir, resume,
                                            clients)
    console.print(round_table(runner, results))
    if (extra := metrics_table(runner, results)) is not None:
        console.print(extra)
    if out is not None:
        for path in write_outputs(runner, results, out):
            console.print(f"wrote {path}")


def _count_or_share(option: str, raw: str | None, count_max: int) -> int | float | None:
    """"10" → 10, "0.1" → 0.1, None → None; anything else (or a count outside [1, ``count_max``], a share outside
    (0, 1]) a ValueError naming ``option``."""
    if raw is None:
        return None
    try:
        value = float(raw) if any(c in raw for c in ".eE") else int(raw)
    except ValueError:
        value = None
    if value is None or (isinstance(value, int) and not 1 <= value <= count_max) or (
            isinstance(value, float) and not 0.0 < value <= 1.0):
        raise ValueError(f"{option} must be a count in [1, {count_max}] or a share in (0, 1], got {raw!r}")
    return value


def _quiet_libraries() -> None:
    from federation.foundation import quiet_libraries

    quiet_libraries()


bench_app = typer.Typer(no_args_is_help=True, help="Speed benchmarks, printed as ratios measured in one run.")
app.add_typer(bench_app, name="bench")
# No spinner while timing: rich redraws it from a thread, whose GIL hand-offs slowed the single env by a third.


@bench_app.command("env")
def bench_env_cmd(
    steps: int = typer.Option(20_000, help="Single-env steps per measurement."),
    num_envs: int = typer.Option(1024, help="Sub-envs of the vectorised surrogate."),
    vector_steps: int = typer.Option(500, help="Batched steps of the vectorised surrogate."),
    ppo_timesteps: int = typer.Option(8192, help="Steps of the PPO run whose time share in the env is measured."),
    blocks: int = typer.Option(5, help="Timed blocks per measurement (best block; blocks of compared envs interleaved)."),
) -> None:
    """FedPEAT-v1 vs CartPole-v1 steps/s, the vectorised surrogate, and PPO's share of time in the env."""
    from experiments.bench import bench_env, env_table

    _quiet_libraries()
    console.print("measuring env speed (≈ 1 min)")
    with user_errors():
        result = bench_env(steps, num_envs, vector_steps, ppo_timesteps, blocks)
    console.print(env_table(result))


@bench_app.command("engine")
def bench_engine(
    steps: int = typer.Option(20, help="Local training steps per measurement."),
    batch_size: int = typer.Option(8, help="Sequences per step."),
) -> None:
    """Engine overhead vs a bare torch loop; emulator vs full-model tokens/s and memory at ε = 0.5, 0.75."""
    from experiments.bench import bench_emulator, bench_engine_overhead, engine_tables

    with user_errors():
        at_least(1, steps=steps, batch_size=batch_size)
    _quiet_libraries()
    console.print("measuring engine overhead, then emulators")
    overhead = bench_engine_overhead(steps, batch_size)
    rows = bench_emulator(steps, batch_size)
    for table in engine_tables(overhead, rows):
        console.print(table)


@bench_app.command("executors")
def bench_executors_cmd(
    clients: int = typer.Option(8, help="Clients (devices) of the embedded model, all training every round."),
    workers: int = typer.Option(2, help="Ray slots of one CPU each (this process + actors, or actors only)."),
    rounds: int = typer.Option(5, help="Timed rounds per executor (after one warm-up round; median)."),
    local_steps: int = typer.Option(10, help="Local steps per client per round."),
    evaluate: bool = typer.Option(False, help="Time rounds with the server's perplexity evaluation (serial in all)."),
) -> None:
    """Round wall time on the in-process executor vs Ray (this process + actors, and actors only), Ray's start-up and
    the process tree's peak memory, measured in one run."""
    from experiments.bench_scale import bench_executors, executors_table

    _quiet_libraries()
    console.print("measuring in-process, then Ray rounds (≈ 2 min)")
    with user_errors():
        rows = bench_executors(clients, workers, rounds, local_steps, evaluate)
    console.print(executors_table(rows, clients, workers, rounds, evaluate))


@bench_app.command("devices")
def bench_devices_cmd(
    devices: list[int] = typer.Option([10, 100, 1000], "--devices", help="Numbers of devices N (repeatable)."),
    steps: int = typer.Option(2000, help="Env steps per N."),
) -> None:
    """FedPEAT-v1 steps/s with action masks as the number of devices grows, and the cost per device."""
    from experiments.bench_scale import bench_devices, devices_table

    with user_errors():
        rows = bench_devices(devices, steps)
    console.print(devices_table(rows))


@app.command()
def demo(
    algo: str = typer.Option("maskable-ppo", parser=ALGO, metavar="NAME",
                             help="RL algorithm (agents.train.ALGOS): maskable-ppo is PPO with the env's memory masks."),
    timesteps: int = typer.Option(1_000_000, help="Training steps (≈ 3 minutes on one core)."),
    check_every: int = typer.Option(100_000, help="Validation checks every this many steps; the best checkpoint is "
                                                  "evaluated (0: no checks, the final policy)."),
    check_episodes: int = typer.Option(500, help="Validation episodes of each check."),
    seeds: int = typer.Option(10, help="Evaluation seeds."),
    episodes: int = typer.Option(10, help="Episodes per seed."),
    out: Path = typer.Option(Path("runs/demo"), callback=writable_dir, help="Output directory."),
) -> None:
    """Train an RL controller on FedPEAT-v1 for a few minutes, then print adaptive vs the best static policy vs fixed vs
    the (clairvoyant) oracle on common random numbers, with the paired verdict against the best static policy."""
    from experiments.benchmark import BenchmarkConfig, run_benchmark

    _quiet_libraries()
    with user_errors():
        config = BenchmarkConfig(seeds=seeds, episodes_per_seed=episodes, timesteps=timesteps, algo=algo, out_dir=str(out),
                                 check_every=check_every, check_episodes=check_episodes,
                                 checkpoint="best" if check_every else "final",
                                 baselines=("fixed-1", "fixed-2", "fixed-3", "fixed-4", "best-static", "random",
                                            "oracle"))
    _print_benchmark(run_benchmark(config, say=console.log))


@app.command("regime")
def regime_cmd(
    devices: int = typer.Option(4, help="Devices of the federated runs."),
    rounds: int = typer.Option(8, help="Federated rounds."),
    local_steps: int = typer.Option(10, help="Local steps per device per round."),
    out: Path = typer.Option(Path("runs/regime"), callback=writable_dir, help="Directory for regime.md and regime.csv."),
) -> None:
    """How far tuning gets on the held-out domain: unigram reference, zero-shot, federated plug-in per ε, emulators,
    centralised LoRA and full fine-tuning with the same budget (Offsite-Tuning's table)."""
    from rich.table import Table

    from agents.stats import to_markdown
    from experiments.regime import RegimeConfig, formatted, plugin_goal, regime_table
    from experiments.run import check_devices

    with user_errors():
        config = RegimeConfig(devices=devices, rounds=rounds, local_steps=local_steps)
        check_devices(devices)  # the engine runs of the table split pydocs
    _quiet_libraries()
    table = regime_table(config, say=console.print)
    shown = formatted(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "regime.md").write_text(to_markdown(shown))
    table.to_csv(out / "regime.csv", index=False)
    rich_table = Table(title="perplexity on the held-out tuning domain (pydocs valid)")
    for column in shown.columns:
        rich_table.add_column(column, justify="left" if column == "setting" else "right")
    for row in shown.itertuples(index=False):
        rich_table.add_row(*row)
    console.print(rich_table)
    plugin, bound, met = plugin_goal(table)
    console.print(f"plug-in perplexity at ε = 0: {plugin:.1f}; 0.5 × unigram = {bound:.1f}: {'met' if met else 'NOT met'}")
    console.print(f"wrote {out / 'regime.md'} and {out / 'regime.csv'}")


@app.command("demo-federated")
def demo_federated(
    rounds: int = typer.Option(5, help="Federated rounds."),
    seed: int = typer.Option(0, help="Seed of every random draw."),
) -> None:
    """Short FedPEAT run: 4 devices with heterogeneous emulators (ε = 0, 0.5, 0.75, 0.75) on the embedded model."""
    from experiments.run import round_table, run_federated
    from federation.engine import EngineConfig

    _quiet_libraries()
    with user_errors():
        at_least(1, rounds=rounds)
        at_least(0, seed=seed)
    config = EngineConfig(method="fedpeat", num_devices=4, seed=seed)
    runner, results = run_federated(config, rounds, [0.0, 0.5, 0.75, 0.75], console)
    console.print(round_table(runner, results))
    drop = 1 - results[-1].full_perplexity / runner.initial_perplexity
    console.print(f"full-model perplexity on the held-out tuning domain: {runner.initial_perplexity:.1f} → "
                  f"{results[-1].full_perplexity:.1f} ({drop:.0%} lower) after {rounds} rounds; "
                  f"{sum(r.bytes_down + r.bytes_up for r in results) / 1e6:.1f} MB exchanged")

@app.command()
def calibrate(
    rounds: int = typer.Option(20, help="Engine rounds per calibration run (the benchmark's horizon)."),
    local_steps: int = typer.Option(10, help="Local steps per device per round."),
    levels: list[float] = typer.Option([0.0, 0.25, 0.5, 0.75], **NUMBER, help="Compression ratios ε to calibrate."),
    ranks: str = typer.Option("2,4,8", help="LoRA ranks of the engine runs, comma-separated; the last is the global rank."),
    workers: int = typer.Option(2, help="Engine runs in parallel (worker processes, one torch thread each)."),
    refit: Path = typer.Option(None, help="Refit from the engine runs stored in this calibration file (no engine runs)."),
    add_runs: list[Path] = typer.Option([], "--add-runs", help="JSON file of engine episodes to add to the fit runs "
                                                                "(repeatable), e.g. engine_runs.json of fedpeat sim2real."),
    out: Path = typer.Option(None, callback=writable_file, help="Calibration file (default: the committed embedded-v3.json)."),
    executor: str = EXECUTOR_OPTION,
    ray_address: str = RAY_ADDRESS_OPTION,
    ray_workers: int = RAY_WORKERS_OPTION,
    ray_cpus_per_worker: float = RAY_CPUS_OPTION,
) -> None:
    """Fit the FedPEAT-v1 surrogate to real engine rounds and write the versioned calibration file.

    The engine runs go where the env's policies go: the same devices held for a whole run (small, median and large
    shares), random subsets, content skew over three domains and one-domain splits, N = 5 / 10 / 20, mixed ε, LoRA
    ranks, a collaborating server. The report shows every fitted parameter with its bounds and the fit errors per
    condition on held-out runs. With --executor ray the runs go one after another, their clients on Ray's actors
    (--workers is then not used)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from experiments.run import check_decisions, check_devices
    from federation.methods import DeviceDecision
    from fedpeat_env.calibration import EngineSettings, calibration_plan, fedpeat_engine, trajectory_from_dict
    from fedpeat_env.fit import calibrate as run_calibration
    from fedpeat_env.fit import fit_runs, stored_runs
    from fedpeat_env.surrogate import DEFAULT_CALIBRATION, Calibration

    with user_errors():
        at_least(1, rounds=rounds, local_steps=local_steps, workers=workers)
        rank_levels = tuple(_int_list("ranks", ranks))
        fit_plan, heldout_plan = calibration_plan(levels, rank_levels)  # checks --levels
        extra = _added_runs(add_runs, trajectory_from_dict)
        path = out or DEFAULT_CALIBRATION
        if refit is not None:
            try:
                fit, heldout, settings, data = stored_runs(Calibration.load(refit))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"--refit must be a calibration file that stores its engine runs: {err}") from None
            calibration = fit_runs([*fit, *extra], heldout, tuple(levels), settings, data)
        else:
            settings = EngineSettings(rounds=rounds, local_steps=local_steps, max_rank=rank_levels[-1])
            check_decisions(fedpeat_engine(1, 0, local_steps, rank_levels[-1]),  # the model realises every ε
                            [DeviceDecision(True, e, r) for e in levels for r in rank_levels])
            plan = fit_plan + heldout_plan
            check_devices(max(s.num_devices for s in plan), server_fraction=max(s.server_fraction for s in plan))
            _quiet_libraries()
            columns = (TextColumn("engine runs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.fields[last]}"))
            with (executor_scope(executor, ray_address, ray_workers, ray_cpus_per_worker) as clients,
                  Progress(*columns, console=console) as progress):
                task = progress.add_task("runs", total=len(fit_plan) + len(heldout_plan), last="")

                def on_run(run) -> None:
                    progress.update(task, advance=1, last=f"{run.spec.condition}: {run.spec.label}")

                calibration = run_calibration(settings, tuple(levels), rank_levels, workers, on_run=on_run,
                                              executor=clients, extra_runs=extra)
    calibration.save(path)
    _print_calibration(calibration)
    console.print(f"wrote {path}")


def _added_runs(paths: list[Path], parse) -> list:
    """The engine episodes of ``--add-runs`` files (JSON lists of trajectories), checked before any work."""
    runs = []
    for path in paths:
        try:
            runs += [parse(item) for item in json.loads(Path(path).read_text())]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--add-runs must be a JSON file of engine runs (engine_runs.json of fedpeat sim2real), "
                             f"got {path}: {err}") from None
    return runs


def _print_calibration(calibration) -> None:
    """The engine runs (what each reached, and the surrogate's open-loop rollout of it), every fitted parameter with
    its bounds (flagged when on one) and the errors per condition."""
    from rich.markup import escape
    from rich.table import Table

    from fedpeat_env.fit import run_summaries

    if "fit_runs" in calibration.meta:
        runs = Table(title="engine runs: full-model perplexity after the last round (surrogate rollout beside it)")
        for column in ("set", "condition", "run", "rounds", "engine", "surrogate", "error", *calibration.domains):
            runs.add_column(column, justify="left" if column in ("set", "condition", "run") else "right")
        for row in run_summaries(calibration):
            runs.add_row(row["set"], row["condition"], row["run"], str(row["rounds"]), f"{row['engine']:.1f}",
                         f"{row['surrogate']:.1f}", f"{100 * row['error']:+.1f}%",
                         *(f"{row[d]:.1f}" if d in row else "" for d in calibration.domains))
        console.print(runs)

    params = Table(title="fitted parameters")
    for column in ("parameter", "value", "low", "high", "note"):
        params.add_column(column, justify="left" if column in ("parameter", "note") else "right")
    for name, p in calibration.parameters.items():
        note = p.get("fixed") or ("[red]at a bound[/red]" if p["at_bound"] else "")
        params.add_row(escape(name), f"{p['value']:.4g}", f"{p['low']:.4g}", f"{p['high']:.4g}", note)
    console.print(params)
    errors = Table(title="mean absolute % error of perplexity (one-step / open-loop rollout)")
    for column in ("condition", "fit runs", "one-step", "rollout", "held-out runs", "one-step ", "rollout "):
        errors.add_column(column, justify="left" if column == "condition" else "right")
    fit, heldout = calibration.fit_error.get("fit", {}), calibration.fit_error.get("heldout", {})
    rows = [("all", fit, heldout)] + [(c, fit.get("by_condition", {}).get(c, {}), heldout.get("by_condition", {}).get(c, {}))
                                      for c in sorted(set(fit.get("by_condition", {})) | set(heldout.get("by_condition", {})))]

    def cells(report: dict, runs: str) -> list[str]:
        if not report:
            return ["0", "-", "-"]
        return [runs, f"{100 * report['one_step']:.1f}%", f"{100 * report['rollout']:.1f}%"]

    for name, f, h in rows:
        n_fit = str(f.get("runs", len(calibration.meta.get("fit_runs", []))))
        n_held = str(h.get("runs", len(calibration.meta.get("heldout_runs", []))))
        errors.add_row(name, *cells(f, n_fit), *cells(h, n_held))
    for domain in calibration.domains:  # each domain's own perplexity, over every run that holds it
        f, h = fit.get("by_domain", {}).get(domain, {}), heldout.get("by_domain", {}).get(domain, {})
        errors.add_row(f"domain {domain}", *cells(f, "") if f else ["", "-", "-"], *cells(h, "") if h else ["", "-", "-"])
    console.print(errors)
    worst = [f"{label} {100 * report['rollout_max_round']:.1f}%" for label, report in (("fit", fit), ("held-out", heldout))
             if "rollout_max_round" in report]
    if worst:
        console.print(f"largest rollout error of any run at any round: {', '.join(worst)}")


def _int_list(name: str, raw: str) -> list[int]:
    try:
        values = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers, got {raw!r}") from None
    if not values or values != sorted(set(values)) or values[0] < 1:
        raise ValueError(f"--{name} must be increasing integers >= 1, got {raw!r}")
    return values


def _env_kwargs(options: list[str]) -> dict:
    """``--env-option key=value`` pairs (values parsed as JSON when possible) into env keyword arguments."""
    kwargs = {}
    for option in options:
        if "=" not in option:
            raise ValueError(f"--env-option must look like key=value, got {option!r}")
        key, value = option.split("=", 1)
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def check_env_id(env: str, fedpeat_only: bool = False) -> None:
    """``ValueError`` naming --env unless ``env`` is a registered Gymnasium id (``fedpeat_only``: a FedPEAT one); its
    options are checked when it is made."""
    import gymnasium as gym

    import fedpeat_env  # noqa: F401  (registers the FedPEAT ids)

    try:
        spec = gym.spec(env)
    except gym.error.Error as err:
        raise ValueError(f"--env must be a registered Gymnasium id (FedPEAT-v1, FedPEAT-Engine-v1, ...), got {env!r}: "
                         f"{err}") from None
    if fedpeat_only and not str(spec.entry_point).startswith("fedpeat_env"):
        raise ValueError(f"--env must be a FedPEAT env (FedPEAT-v1, FedPEAT-Engine-v1), got {env!r}")


def _zoo_hyperparams(hyperparams: list[str], ctx: typer.Context) -> list[str]:
    """``--hyperparams a:1 b:2`` as the Zoo spells it: the words after the flag come to the command as extra
    arguments; each must be key:value."""
    stray = [word for word in ctx.args if ":" not in word or word.startswith("-")]
    if stray:
        raise ValueError(f"unexpected argument(s) {stray}; --hyperparams takes key:value words")
    return [*hyperparams, *ctx.args]


@app.command("train", context_settings={"allow_extra_args": True})
def train_cmd(
    ctx: typer.Context,
    algo: str = typer.Option("ppo", parser=ALGO, metavar="NAME", help="RL algorithm (the registry agents.train.ALGOS)."),
    env: str = typer.Option("FedPEAT-v1", help="Gymnasium id."),
    timesteps: int = typer.Option(None, help="Training env steps (default: n_timesteps of agents/hyperparams/ALGO.yml)."),
    n_envs: int = typer.Option(None, "--n-envs", help="Parallel envs (default: n_envs of agents/hyperparams/ALGO.yml, or 8)."),
    hyperparams: list[str] = typer.Option([], "--hyperparams", help="Override a setting of agents/hyperparams/ALGO.yml as "
                                          "key:value (RL Zoo spelling, repeatable), e.g. n_steps:64 ent_coef:0.0."),
    policy: str = typer.Option(None, help="mlp (a flat MLP) or device-set (one network shared by the devices; "
                                          "evaluates at any num_devices). Default: agents/hyperparams/ALGO.yml's, else mlp."),
    seed: int = typer.Option(0, help="Seed of the run."),
    check_every: int = typer.Option(0, help="Every this many env steps, the policy against the best static policy on "
                                            "--check-episodes validation episodes; metrics.json reports the time to "
                                            "beat it (0: off)."),
    check_episodes: int = typer.Option(500, help="Validation episodes of each check."),
    out: Path = typer.Option(Path("runs/agent"), callback=writable_dir, help="Output directory (model, VecNormalize stats, logs)."),
    env_option: list[str] = typer.Option([], help="Env option key=value (repeatable), e.g. num_devices=6."),
    checkpoint_every: int = typer.Option(100_000, min=0, help="Every this many env steps (at the next rollout boundary) "
                                         "and at the end, a checkpoint in OUT/checkpoints/ for --resume (0: off)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT from its last checkpoint; give the "
                                "same settings (--timesteps may grow)."),
) -> None:
    """Train an RL controller (SB3) on a FedPEAT env with the tuned settings of agents/hyperparams/ALGO.yml (RL Baselines3
    Zoo's format); tensorboard logs in OUT/tb."""
    from agents.checkpoint import last_checkpoint
    from agents.hyperparams import parse_hyperparams
    from agents.train import POLICIES, TrainConfig, train

    _quiet_libraries()
    with user_errors():
        check_env_id(env)
        if policy is not None and policy not in POLICIES:
            raise ValueError(f"--policy must be one of {tuple(POLICIES)}, got {policy!r}")
        config = TrainConfig.from_hyperparams(algo, env, overrides=parse_hyperparams(_zoo_hyperparams(hyperparams, ctx)),
                                              env_kwargs=_env_kwargs(env_option), timesteps=timesteps, n_envs=n_envs,
                                              seed=seed, out_dir=str(out), policy=POLICIES.get(policy),
                                              check_every=check_every, check_episodes=check_episodes)
        import gymnasium as gym

        import fedpeat_env  # noqa: F401

        gym.make(env, **config.env_kwargs).close()  # validate the env options before training
        if resume:
            last_checkpoint(config)  # no checkpoint, other settings or a corrupt file: one message before any work
    console.print(_tuned_settings(algo, env), markup=False)
    path = train(config, checkpoint_every=checkpoint_every, resume=resume)
    console.print_json((path / "metrics.json").read_text())
    console.print(f"saved to {path}")


def _tuned_settings(algo: str, env: str) -> str:
    """One line naming the tuned settings a command starts from (the package's file and its entry for ``env``)."""
    from agents.hyperparams import hyperparams_file, load_hyperparams

    path, tuned = hyperparams_file(algo), load_hyperparams(algo, env)
    if not tuned:
        return f"no tuned settings for {env} in {path}: the algorithm's defaults and the options given"
    return f"tuned settings for {env} from {path}: " + ", ".join(f"{key}={value}" for key, value in tuned.items())


@app.command("evaluate")
def evaluate_cmd(
    policy: str = typer.Option(..., help="A trained agent's directory, or a baseline: fixed-k, full-model, random, greedy, ucb, oracle."),
    env: str = typer.Option("FedPEAT-v1", help="Gymnasium id."),
    seeds: int = typer.Option(10, help="Evaluation seeds."),
    episodes: int = typer.Option(1, help="Episodes per seed (the seed's stream continues)."),
    env_option: list[str] = typer.Option([], help="Env option key=value (repeatable)."),
    checkpoint: str = typer.Option("final", help="Of a trained agent: final (end of training) or best (the best on "
                                                 "its validation checks, --check-every)."),
) -> None:
    """Evaluate a policy on common random numbers and print per-episode results and their mean."""
    from agents import POLICY_NAMES, evaluate, make_policy
    from agents.train import CHECKPOINTS, load_policy
    from experiments.benchmark import EVAL_SEED_OFFSET

    _quiet_libraries()
    with user_errors():
        at_least(1, seeds=seeds, episodes=episodes)
        check_env_id(env, fedpeat_only=True)  # the episodes report perplexity, latency, exchanges
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"--checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
        if Path(policy).is_dir():
            chosen: Policy = load_policy(policy, checkpoint=checkpoint)
        else:
            try:
                chosen = make_policy(policy)
            except ValueError:
                raise ValueError(f"--policy must be a trained agent's directory or a baseline {POLICY_NAMES} (fixed-k: "
                                 f"k = 0..K), got {policy!r}") from None
        df = evaluate(chosen, env_id=env, env_kwargs=_env_kwargs(env_option),
                      seeds=[EVAL_SEED_OFFSET + s for s in range(seeds)], episodes_per_seed=episodes)

    console.print(df.to_string(index=False))
    console.print(f"mean return {df['return'].mean():.3f} over {len(df)} episodes")


@app.command("benchmark", context_settings={"allow_extra_args": True})
def benchmark_cmd(
    ctx: typer.Context,
    seeds: int = typer.Option(10, help="Evaluation seeds (same channels for every policy)."),
    episodes: int = typer.Option(10, help="Episodes per seed (the seed's stream continues)."),
    timesteps: int = typer.Option(None, help="Agent training steps (default: agents/hyperparams/ALGO.yml's: 700k for PPO, "
                                             "≈ 4.5 min on one core)."),
    algo: list[str] = typer.Option(["ppo"], parser=ALGO, metavar="NAME", help="RL algorithm (the registry agents.train.ALGOS; "
                                                                  "repeatable: several in one benchmark)."),
    train_seeds: int = typer.Option(1, help="Training seeds per algorithm (> 1: IQM over runs with bootstrap CIs, "
                                            "probability of improvement; finished runs are reused)."),
    hyperparams: list[str] = typer.Option([], "--hyperparams", help="Override a setting of agents/hyperparams/ALGO.yml as "
                                          "key:value (repeatable)."),
    check_every: int = typer.Option(0, help="Every this many training steps, each agent against the best static policy "
                                            "on --check-episodes validation episodes; the per-seed table reports the "
                                            "time to beat it."),
    check_episodes: int = typer.Option(500, help="Validation episodes of each check."),
    workers: int = typer.Option(1, help="Training runs at once (worker processes, one core each; --train-seeds > 1)."),
    executor: str = typer.Option("local", parser=EXECUTOR, metavar="NAME", help="Where the training runs go: local "
                                 "(this process, or --workers processes) or ray (one Ray task per run, one CPU each)."),
    ray_address: str = RAY_ADDRESS_OPTION,
    checkpoint: str = typer.Option("final", help="Policy of each run to evaluate: final (end of training) or best (the "
                                                 "best on the validation checks; needs --check-every)."),
    agent: Path = typer.Option(None, help="Evaluate this trained agent's directory instead of training one."),
    out: Path = typer.Option(Path("runs/benchmark"), callback=writable_dir, help="Output directory."),
    env_option: list[str] = typer.Option([], help="Env option key=value (repeatable)."),
    train_env_option: list[str] = typer.Option([], help="Env option key=value of training only, over --env-option "
                                               "(repeatable), e.g. 'episode_devices=[5,10]'."),
    baseline: list[str] = typer.Option([], help="Baselines to compare (repeatable; default: all)."),
) -> None:
    """Adaptive vs fixed: train the agent (or take --agent), evaluate it and every baseline, write table (md + CSV)
    and plots."""
    from agents import POLICY_NAMES, make_policy
    from agents.hyperparams import parse_hyperparams
    from experiments.benchmark import BenchmarkConfig, run_benchmark, run_seeds_benchmark

    _quiet_libraries()
    with user_errors():
        for name in baseline:
            try:
                make_policy(name)
            except ValueError:
                raise ValueError(f"--baseline must be one of {POLICY_NAMES} (fixed-k with k = 0..K, largest-k and "
                                 f"smallest-k with k >= 1), got {name!r}") from None
        config = BenchmarkConfig(seeds=seeds, episodes_per_seed=episodes, timesteps=timesteps, algo=algo[0],
                                 algos=tuple(algo) if len(algo) > 1 else (), train_seeds=train_seeds,
                                 hyperparams=parse_hyperparams(_zoo_hyperparams(hyperparams, ctx)),
                                 env_kwargs=_env_kwargs(env_option), train_env_kwargs=_env_kwargs(train_env_option),
                                 check_every=check_every, check_episodes=check_episodes, workers=workers,
                                 checkpoint=checkpoint,
                                 executor=cast("ExecutorKind", executor), ray_address=ray_address, out_dir=str(out),
                                 agent_dir=None if agent is None else str(agent))
        for name in config.algo_list:
            config.train_config(name)  # validate the settings before any work
        if config.multi_run and agent is not None:
            raise ValueError("--agent evaluates one trained agent; it cannot be combined with --train-seeds > 1 or "
                             "several --algo")
        if baseline:
            config = replace(config, baselines=tuple(baseline))
        if config.multi_run:
            seeds_result = run_seeds_benchmark(config, say=console.log)
        else:
            result = run_benchmark(config, say=console.log)
    if config.multi_run:
        (out / "command.txt").write_text(command_line(ctx) + "\n")  # for `fedpeat report`
        console.print(seeds_result.table.to_string(index=False))
        console.print(seeds_result.per_seed.to_string(index=False))
        _print_headroom(seeds_result.headroom)
        for path in seeds_result.paths.values():
            console.print(f"wrote {path}")
    else:
        _print_benchmark(result)


def _print_headroom(headroom: dict) -> None:
    """The room an adaptive controller has over the best static policy (paired differences)."""
    for name, d in headroom.items():
        bound = " (an upper bound: the oracle knows the future)" if name.startswith("oracle") else ""
        console.print(f"{name}, paired over {d['episodes']} episodes: {d['mean']:+.3f} [{d['CI low']:+.3f}, "
                      f"{d['CI high']:+.3f}]{bound}")


def _print_benchmark(result) -> None:
    from rich.table import Table

    table = Table(title="FedPEAT-v1: adaptive vs static vs fixed (mean return over episodes, 95% bootstrap CI; "
                        "* knows the realised future; full table in the .md)")
    for column in ("policy", "return", "95% CI", "ppl", "latency s", "exch.", "viol.", "score"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for row in result.table.to_dict("records"):
        name = f"{row['policy']}*" if row.get("knows the future") == "yes" else row["policy"]
        table.add_row(name, f"{row['mean return']:.2f}", f"[{row['CI low']:.2f}, {row['CI high']:.2f}]",
                      f"{row['final perplexity']:.0f}", f"{row['total latency (s)']:.0f}", f"{row['exchanges']:.1f}",
                      f"{row['memory violations']:.1f}", f"{row['normalised score']:.3f}")
    console.print(table)
    if result.oracle_margin_pct == result.oracle_margin_pct:  # NaN without the oracle
        console.print(f"oracle* margin over the best fixed policy: {result.oracle_margin_pct:.1f}%")
    _print_headroom(result.headroom)
    agent = result.agent
    score = result.agent_normalised_score
    score_text = "n/a (needs the random and oracle baselines)" if score != score else f"{score:.3f}"  # NaN: not both
    console.print(f"{agent}: normalised score {score_text}")
    diff = result.agent_minus_best_fixed
    console.print(f"{agent} − best fixed, paired over {diff['episodes']} episodes on the same channels: "
                  f"{diff['mean']:+.3f} [{diff['CI low']:+.3f}, {diff['CI high']:+.3f}]")
    versus, rival = (result.agent_minus_best_static, "the best static policy") if result.agent_minus_best_static \
        else (diff, "the best fixed policy")
    if result.agent_minus_best_static:
        console.print(f"{agent} − best static, paired over {versus['episodes']} episodes on the same channels: "
                      f"{versus['mean']:+.3f} [{versus['CI low']:+.3f}, {versus['CI high']:+.3f}]")
    verdict = ("yes: the 95% CI of the paired difference lies above 0" if versus["CI low"] > 0 else
               "no: the 95% CI of the paired difference reaches 0 or below")
    console.print(f"{agent} beats {rival} on the paired test: {verdict}")
    for name, path in result.paths.items():
        console.print(f"{name}: {path}")


marl_app = typer.Typer(no_args_is_help=True, help="The multi-agent face (fedpeat_env.parallel_env, one agent per "
                                                   "device): parameter-shared PPO, and its comparison with the "
                                                   "single-agent device-set policy.")
app.add_typer(marl_app, name="marl")


@marl_app.command("train", context_settings={"allow_extra_args": True})
def marl_train_cmd(
    ctx: typer.Context,
    timesteps: int = typer.Option(200_000, help="Agent-steps over all agents (rounds played: timesteps / devices)."),
    n_envs: int = typer.Option(8, "--n-envs", help="Episodes played at once (each gives every device an agent)."),
    seed: int = typer.Option(0, help="Seed of the episodes, the network and torch."),
    hyperparams: list[str] = typer.Option([], "--hyperparams", help="A PPO argument as key:value (repeatable), e.g. "
                                          "n_steps:64 ent_coef:0.0; default: agents.marl.MARL_DEFAULTS."),
    env_option: list[str] = typer.Option([], help="Env option key=value (repeatable), e.g. num_devices=6."),
    out: Path = typer.Option(Path("runs/marl"), callback=writable_dir, help="Output directory (model, config, metrics)."),
) -> None:
    """Train one network for every device of fedpeat_env.parallel_env (SuperSuit + SB3 PPO, shared parameters, the
    shared reward)."""
    from agents.hyperparams import parse_hyperparams
    from agents.marl import MARL_DEFAULTS, MARLConfig, train_marl

    _quiet_libraries()
    with user_errors():
        at_least(1, timesteps=timesteps, n_envs=n_envs)
        at_least(0, seed=seed)
        config = MARLConfig(timesteps=timesteps, n_envs=n_envs, seed=seed, env_kwargs=_env_kwargs(env_option),
                            algo_kwargs={**MARL_DEFAULTS, **parse_hyperparams(_zoo_hyperparams(hyperparams, ctx))},
                            out_dir=str(out))
    path = train_marl(config)
    console.print_json((path / "metrics.json").read_text())
    console.print(f"saved to {path}")


@marl_app.command("compare")
def marl_compare_cmd(
    marl: Path = typer.Option(..., help="A MARL run's directory (fedpeat marl train)."),
    agent: Path = typer.Option(..., help="A single-agent run's directory (fedpeat train; a device-set policy runs at "
                                         "the MARL run's number of devices)."),
    checkpoint: str = typer.Option("final", help="Of --agent: final or best."),
    seeds: int = typer.Option(10, help="Evaluation seeds (the benchmark's test seeds from 10000)."),
    episodes: int = typer.Option(10, help="Episodes per seed."),
    baseline: list[str] = typer.Option(["fixed-1"], help="Baselines beside them (repeatable)."),
    out: Path = typer.Option(None, callback=writable_dir, help="Directory for marl_compare.csv (default: not written)."),
) -> None:
    """The MARL run and the single-agent agent on the same episodes (common random numbers, the MARL run's env
    options): mean returns with 95% CIs and the paired difference MARL − agent."""
    from rich.table import Table

    from agents.marl import MARLPolicy, compare_marl
    from agents.train import checked_checkpoint
    from experiments.benchmark import EVAL_SEED_OFFSET

    _quiet_libraries()
    with user_errors():
        at_least(1, seeds=seeds, episodes=episodes)
        MARLPolicy.load(marl)  # a MARL run's directory, before any episode
        checked_checkpoint(agent, checkpoint)
        check_policy_names("baseline", baseline)
        table, diff = compare_marl(marl, agent, [EVAL_SEED_OFFSET + s for s in range(seeds)], episodes, checkpoint,
                                   tuple(baseline))
    view = Table(title="MARL (parameter-shared PPO) vs the single-agent policy, same episodes")
    for column in ("policy", "mean return", "95% CI", "episodes"):
        view.add_column(column, justify="left" if column == "policy" else "right")
    for row in table.to_dict("records"):
        view.add_row(row["policy"], f"{row['mean return']:.3f}", f"[{row['CI low']:.3f}, {row['CI high']:.3f}]",
                     str(row["episodes"]))
    console.print(view)
    console.print(f"marl − {diff['agent']}, paired over {diff['episodes']} episodes: {diff['mean']:+.3f} "
                  f"[{diff['CI low']:+.3f}, {diff['CI high']:+.3f}]")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        table.assign(**{"paired diff marl - agent": diff["mean"]}).to_csv(out / "marl_compare.csv", index=False)
        console.print(f"wrote {out / 'marl_compare.csv'}")


@app.command("sim2real")
def sim2real_cmd(
    agent: Path = typer.Option(None, help="Trained agent directory, compared beside the baselines (its env options)."),
    policy: list[str] = typer.Option([], help="Baseline to compare (repeatable; default: best-static, mpc, fixed-1..4, "
                                              "largest-1..3, smallest-1)."),
    seeds: int = typer.Option(10, help="Episodes per policy and fidelity (the benchmark's test seeds from 10000)."),
    horizon: int = typer.Option(None, help="Rounds per episode (default: the agent's, i.e. the benchmark's horizon)."),
    env_option: list[str] = typer.Option([], help="Env option key=value (repeatable; over the agent's)."),
    workers: int = typer.Option(2, help="Engine episodes at once (worker processes)."),
    checkpoint: str = typer.Option("final", help="Of --agent: final (end of training) or best (its best validation "
                                                 "check)."),
    out: Path = typer.Option(Path("runs/sim2real"), callback=writable_dir, help="Directory for sim2real.md/.csv/.png, "
                             "trajectories.csv, summary.json, engine_runs.json and the cached engine episodes."),
) -> None:
    """The policies on the surrogate and on real engine rounds, same seeds: the perplexity trajectory error per policy
    (round by round, against a 5% tolerance; 10% for the smallest-share device alone), returns, and whether the
    policies rank the same on both fidelities (Kendall τ). Finished engine episodes are reused by a rerun."""
    from agents.train import checked_checkpoint
    from experiments.benchmark import EVAL_SEED_OFFSET
    from experiments.sim2real import SIM2REAL_POLICIES, Sim2RealConfig, sim_to_real, write_results
    from fedpeat_env import EnvConfig

    with user_errors():
        at_least(1, seeds=seeds, workers=workers, horizon=horizon)
        if agent is not None:
            checked_checkpoint(agent, checkpoint)
        check_policy_names("policy", policy)
        config = Sim2RealConfig(policies=tuple(policy) or SIM2REAL_POLICIES,
                                seeds=tuple(EVAL_SEED_OFFSET + s for s in range(seeds)), horizon=horizon,
                                env_kwargs=_env_kwargs(env_option), agent_dir=None if agent is None else str(agent),
                                checkpoint=checkpoint, workers=workers, out_dir=str(out))
        EnvConfig.from_kwargs(**config.resolved()[0])  # the env options, before any work
    _quiet_libraries()
    table, summary, trajectories = sim_to_real(config, say=console.print)
    for path in write_results(table, summary, trajectories, out):
        console.print(f"wrote {path}")
    _print_sim2real(table, summary)


def _print_sim2real(table, summary: dict) -> None:
    from rich.table import Table

    view = Table(title="sim-to-real: surrogate (FedPEAT-v1) vs engine (FedPEAT-Engine-v1), same seeds")
    for column in ("policy", "return sur.", "return eng.", "final ppl sur.", "final ppl eng.", "ppl error worst",
                   "round", "tol.", "within", "rank sur./eng."):
        view.add_column(column, justify="left" if column == "policy" else "right")
    for _, r in table.iterrows():
        view.add_row(r["policy"], f"{r['FedPEAT-v1 return']:.2f}", f"{r['FedPEAT-Engine-v1 return']:.2f}",
                     f"{r['FedPEAT-v1 final ppl']:.1f}", f"{r['FedPEAT-Engine-v1 final ppl']:.1f}",
                     f"{100 * r['ppl error, worst round']:.1f}%", str(r["worst round"]), f"{100 * r['tolerance']:.0f}%",
                     "yes" if r["within"] else "[red]no[/red]",
                     f"{r['FedPEAT-v1 rank']} / {r['FedPEAT-Engine-v1 rank']}")
    console.print(view)
    console.print(f"every policy within its tolerance: {'yes' if summary['all_within'] else 'no'}; Kendall τ of the "
                  f"returns = {summary['kendall_tau']:.2f} (same ranking: {'yes' if summary['same_ranking'] else 'no'}); "
                  f"mean return gap surrogate − engine: {summary['return_gap']:+.3f}")


@app.command("compare")
def compare_cmd(
    methods: list[str] = typer.Option([], "--method", help="Method entry NAME[:key=value...] (repeatable), e.g. "
                                                           "hetlora:ranks=2,4,8:aggregation=zero-pad. Default: every "
                                                           "method of the registry (federation.methods.METHODS)."),
    rounds: int = typer.Option(5, help="Federated rounds per run."),
    seeds: int = typer.Option(3, help="Seeds per method."),
    devices: int = typer.Option(4, help="Devices N."),
    local_steps: int = typer.Option(10, help="Local steps per device per round."),
    compression: float = typer.Option(0.5, **NUMBER, help="Emulator compression ε of fedpeat and fedot."),
    partition: str = typer.Option("iid", parser=PARTITION, metavar="NAME", help="Data split (federation.data.PARTITIONS: iid, dirichlet)."),
    alpha: float = typer.Option(0.5, **NUMBER, help="Dirichlet concentration (partition=dirichlet)."),
    domain: list[str] = typer.Option([], help="Tuning domains (repeatable). Default: pydocs, or the three tuning "
                                              "domains when a multi-task method (fltac) is compared."),
    out: Path = typer.Option(Path("runs/compare"), callback=writable_dir, help="Output directory."),
    executor: str = EXECUTOR_OPTION,
    ray_address: str = RAY_ADDRESS_OPTION,
    ray_workers: int = RAY_WORKERS_OPTION,
    ray_cpus_per_worker: float = RAY_CPUS_OPTION,
) -> None:
    """Federated methods on one engine: final full-model perplexity (mean, 95% CI over seeds), bytes, memory, time."""
    from experiments.compare import compare, plan_comparison, write_comparison

    _quiet_libraries()
    with user_errors():
        at_least(1, rounds=rounds, seeds=seeds, devices=devices, local_steps=local_steps)
        if not methods:
            from federation.methods import METHODS

            methods = list(METHODS)
        split = cast("PartitionKind", partition)  # PARTITION parsed it
        plan_comparison(methods, rounds, range(seeds), devices, local_steps, compression, split, alpha, domain)
        with executor_scope(executor, ray_address, ray_workers, ray_cpus_per_worker) as clients:
            runs, summary = compare(methods, rounds, list(range(seeds)), devices, local_steps, compression, split,
                                    alpha, domain, say=console.log, executor=clients)
    console.print(summary.to_string(index=False))
    for path in write_comparison(runs, summary, out):
        console.print(f"wrote {path}")


@app.command("claims")
def claims_cmd(
    claim: list[str] = typer.Option([], help="Claim to check (repeatable): emulator, plug-in, control, fedpft, hetlora, "
                                             "feddat, fltac. Default: all."),
    rounds: int = typer.Option(6, help="Federated rounds per run."),
    seeds: int = typer.Option(3, help="Seeds per side of each perplexity claim (>= 2)."),
    devices: int = typer.Option(4, help="Devices N."),
    local_steps: int = typer.Option(5, help="Local steps per device per round."),
    env_seeds: int = typer.Option(10, help="Env evaluation seeds of the control claim."),
    env_episodes: int = typer.Option(10, help="Episodes per env seed of the control claim."),
    agent: Path = typer.Option(None, help="A trained agent's directory, added to the control claim beside mpc (with the "
                                          "reward-weight sensitivity of its verdict)."),
    checkpoint: str = typer.Option("final", help="Of --agent: final (end of training) or best (its best validation "
                                                 "check)."),
    static_episodes: int = typer.Option(500, help="Validation episodes of the best-static search."),
    out: Path = typer.Option(Path("runs/claims"), callback=writable_dir, help="Output directory."),
    executor: str = EXECUTOR_OPTION,
    ray_address: str = RAY_ADDRESS_OPTION,
    ray_workers: int = RAY_WORKERS_OPTION,
    ray_cpus_per_worker: float = RAY_CPUS_OPTION,
) -> None:
    """Check the papers' claims on the shared engine and the env: emulator ladder, plug-in, adaptive control,
    FedPFT ≥ FedOT, HetLoRA sparsity ≥ zero-pad, FedDAT ≥ FedAvg under non-IID, FL-TAC clustering. A verdict per
    claim, computed from the runs (95% CIs)."""
    from experiments.claims import ClaimSettings, check_claims, run_claims, write_claims

    _quiet_libraries()
    with user_errors():
        settings = ClaimSettings(rounds, seeds, devices, local_steps, env_seeds, env_episodes,
                                 None if agent is None else str(agent), checkpoint, static_episodes)
        check_claims(settings, claim)
        with executor_scope(executor, ray_address, ray_workers, ray_cpus_per_worker) as clients:
            table, runs = run_claims(settings, claim, say=console.log, executor=clients)
    console.print(table.drop(columns=["statement", "detail"]).to_string(index=False))
    command = (f"`fedpeat claims --rounds {rounds} --seeds {seeds} --devices {devices} --local-steps {local_steps} "
               f"--env-seeds {env_seeds} --env-episodes {env_episodes}"
               + (f" --static-episodes {static_episodes}" if static_episodes != 500 else "")
               + (f" --agent {agent}" + (f" --checkpoint {checkpoint}" if checkpoint != "final" else "") if agent else "")
               + "`")
    for path in write_claims(table, runs, out, command):
        console.print(f"wrote {path}")


@app.command("report")
def report_cmd(
    results: Path = typer.Option(Path("results"), help="Directory of the committed result files (sim2real/, ...)."),
    calibration: Path = typer.Option(Path("fedpeat_env/calibrations/embedded-v3.json"), help="Calibration file."),
    out: Path = typer.Option(Path("docs/generated"), callback=writable_dir,
                             help="Directory for the generated tables (the docs include them)."),
    readme: Path = typer.Option(Path("README.md"), help="README whose results block (between its report:headline "
                                                        "markers) is rewritten."),
) -> None:
    """Regenerate the docs' result tables and the README's results block from the committed result files, so that no
    number is typed by hand."""
    from experiments.report import write_reports

    if not readme.is_file():
        console.print(f"[red]error:[/red] --readme must be an existing file, got {str(readme)!r}")
        raise typer.Exit(2)
    try:
        written = write_reports(calibration, results, out, readme)
    except FileNotFoundError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    for path in written:
        console.print(f"wrote {path}")
