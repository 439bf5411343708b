"""``fedpeat run``: a federated run of one method with a per-round table, written as CSV + JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin, get_type_hints

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from federation.checkpoint import check_resumable, checkpoints
from federation.engine import EngineConfig, RoundResult, RoundRunner
from federation.executors import Executor
from federation.methods import DeviceDecision, MethodConfig, make_method

MB = 1e6


MULTI_TASK_DOMAINS = ("pydocs", "licenses", "docstrings")
"""Default tasks of multi-task methods (fltac): the three held-out tuning domains."""


def default_domains(methods: Sequence[str], domains: Sequence[str] = ()) -> tuple[str, ...]:
    """The tuning domains shared by ``methods``: ``domains`` if given; otherwise pydocs, or the three tuning domains
    if one of them is multi-task."""
    if domains:
        return tuple(domains)
    return MULTI_TASK_DOMAINS if any(make_method(m).multi_task for m in methods) else ("pydocs",)


def parse_options(items: Sequence[str]) -> dict[str, str]:
    """``["key=value", ...]`` → dict (ValueError naming the item without ``=``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"method option must look like key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _convert(name: str, raw: str, hint):
    """A CLI string as the type ``hint`` of config field ``name`` (int, float, bool, str, Literal, tuple[...], X | None)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        if raw.lower() == "none" and type(None) in args:
            return None
        return _convert(name, raw, next(a for a in args if a is not type(None)))
    if origin is tuple:
        return tuple(_convert(name, item.strip(), args[0]) for item in raw.split(","))
    if origin is Literal:
        if raw not in args:
            raise ValueError(f"{name} must be one of {args}, got {raw!r}")
        return raw
    if hint is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name} must be true or false, got {raw!r}")
        return raw.lower() in ("true", "1")
    try:
        value = hint(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or (hint is float and not math.isfinite(value)):  # "nan" and "inf" parse as floats
        kind = {int: "an integer", float: "a finite number"}.get(hint, getattr(hint, "__name__", str(hint)))
        raise ValueError(f"{name} must be {kind}, got {raw!r}")
    return value


def build_method_config(method: str, local_steps: int, lora_aggregation: str = "naive", case: int = 1,
                        distill_steps: int | None = None, compression: Sequence[float] = (),
                        options: Mapping[str, str] | None = None) -> MethodConfig:
    """A method's config from CLI-style options (the method's defaults otherwise); options that do not apply to the
    method are errors. fedot's shared emulator takes the single ``compression`` value given (default 0.5).
    ``options`` sets any other field of the method's config class by name (e.g. ``keep_ratio`` of fedpft)."""
    default = make_method(method)  # validates the name
    config_cls = type(default.config)
    hints = get_type_hints(config_cls)
    settable = sorted(f.name for f in fields(config_cls) if f.name not in ("train", "lora", "lora_aggregation"))
    values: dict = {"train": replace(default.train_config, steps=local_steps), "lora_aggregation": lora_aggregation}
    if method != "fedpeat" and case != 1:
        raise ValueError(f"--case applies to method 'fedpeat' only, not {method!r}")
    if method == "fedpeat":
        values["case"] = case
    if distill_steps is not None:
        if "distill_steps" not in hints:
            raise ValueError(f"--distill-steps applies to methods 'fedpeat', 'fedot' and 'fedpft' only, not {method!r}")
        values["distill_steps"] = distill_steps
    if method == "fedot":
        values["compression"] = compression[0] if len(set(compression)) == 1 else 0.5
    for key, raw in (options or {}).items():
        if key not in settable:
            raise ValueError(f"method option {key!r} is not a setting of {method!r}; allowed: {settable}")
        values[key] = _convert(key, raw, hints[key])
    return config_cls(**values)


def _per_device(name: str, values: Sequence, num_devices: int, default) -> list:
    """One value per device from a CLI list: empty → ``default`` for all, one value → for all, else one each."""
    values = list(values) or [default]
    if len(values) == 1:
        values = values * num_devices
    if len(values) != num_devices:
        raise ValueError(f"{name} takes 1 value or one per device ({num_devices}), got {len(values)}")
    return values


def decisions_for(num_devices: int, compression: Sequence[float],
                  lora_rank: Sequence[int | None] = ()) -> list[DeviceDecision]:
    """Per-device decisions from ``--compression`` (default 0) and ``--lora-rank`` (default: the global rank)."""
    eps = _per_device("compression", compression, num_devices, 0.0)
    ranks = _per_device("lora_rank", lora_rank, num_devices, None)
    return [DeviceDecision(True, float(e), None if r is None else int(r)) for e, r in zip(eps, ranks)]


DEVICES_REMEDY = "use fewer devices, a smaller --block-size or more --domain"


def check_devices(num_devices: int, domains: Sequence[str] = ("pydocs",), block_size: int = 128,
                  server_fraction: float = 0.0, foundation: str | None = None, remedy: str = "use fewer devices") -> None:
    """``ValueError`` naming --devices when the tuning data cannot give every device a training block. Needs only the
    tokenizer and the tokenised blocks (cached for the run), not the model."""
    from federation.data import device_capacity
    from federation.foundation import load_tokenizer

    limit = device_capacity(load_tokenizer(foundation), tuple(domains), block_size, server_fraction)
    if num_devices > limit:
        share = f" after the server's share of {server_fraction:g}" if server_fraction else ""
        raise ValueError(f"--devices must be at most {limit}, the training blocks of {'+'.join(domains)} at {block_size} "
                         f"tokens{share}; got {num_devices}: {remedy}")


FALLBACK_BLOCK_SIZES = (64, 32)
"""Shorter blocks ``fitting_block_size`` tries, in order, when the default gives too few blocks for the devices."""


def fitting_block_size(num_devices: int, domains: Sequence[str] = ("pydocs",), server_fraction: float = 0.0,
                       foundation: str | None = None) -> int:
    """``EngineConfig.block_size`` (128), or the largest of ``FALLBACK_BLOCK_SIZES`` whose training blocks give every
    device one (the default if none does: ``check_devices`` then names the limit)."""
    from federation.data import device_capacity
    from federation.foundation import load_tokenizer

    tokenizer = load_tokenizer(foundation)
    for size in (EngineConfig.block_size, *FALLBACK_BLOCK_SIZES):
        if device_capacity(tokenizer, tuple(domains), size, server_fraction) >= num_devices:
            return size
    return EngineConfig.block_size


def check_decisions(config: EngineConfig, decisions: Sequence[DeviceDecision]) -> None:
    """``RoundRunner.validate``'s checks, made before the model is loaded: the method's own
    (``Method.check_decisions``) and, for emulator methods, that every ε keeps a middle block of the model (its
    number of blocks read from its config)."""
    from federation.architecture import keep_for_compression
    from federation.foundation import foundation_layers

    method = make_method(config.method, config.method_config)
    method.check_decisions(decisions)
    layers, adapter = foundation_layers(config.foundation), method.config.num_adapter_layers
    if layers - 2 * adapter < 1:
        raise ValueError(f"num_adapter_layers must leave a middle block of the {layers}-block model: at most "
                         f"{(layers - 1) // 2}, got {adapter}")
    if method.uses_emulator:
        middle = layers - 2 * adapter
        shared = getattr(method.config, "compression", None)  # fedot: one emulator for every device
        for eps in sorted({d.compression for d in decisions if d.selected} | ({shared} if shared is not None else set())):
            keep_for_compression(middle, eps)  # ValueError naming the largest ε the model can realise


def plan_run(config: EngineConfig, rounds: int, compression: Sequence[float] = (), lora_rank: Sequence[int | None] = (),
             remedy: str = "use fewer devices") -> list[DeviceDecision]:
    """The fixed decisions of a run, checked before anything is loaded (``check_devices``, ``check_decisions``);
    ``remedy`` ends the message of too many devices. Without ``lora_rank`` the method's own per-device ranks apply."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not lora_rank:
        lora_rank = [d.lora_rank for d in make_method(config.method, config.method_config).device_decisions(config.num_devices)]
    decisions = decisions_for(config.num_devices, compression, lora_rank)
    check_devices(config.num_devices, config.domains, config.block_size, config.server_fraction, config.foundation, remedy)
    check_decisions(config, decisions)
    return decisions


def run_federated(
    config: EngineConfig, rounds: int, compression: Sequence[float] = (), console: Console | None = None,
    lora_rank: Sequence[int] = (), checkpoint_dir: Path | None = None, resume: bool = False,
    executor: Executor | None = None,
) -> tuple[RoundRunner, list[RoundResult]]:
    """Run ``rounds`` rounds with fixed decisions, showing a progress bar. Without ``lora_rank`` the method's own
    per-device ranks apply (e.g. hetlora's ``ranks``). ``executor`` runs the clients (default: in this process).

    ``checkpoint_dir``: checkpoint the run there after every round (``federation.checkpoint``; a new run needs a
    directory without a checkpoint). ``resume``: continue the checkpoint in ``checkpoint_dir`` up to ``rounds``
    (same config and decisions) with exactly the numbers of an uninterrupted run; the rounds returned include the
    checkpoint's (all of them when it already has ``rounds`` or more)."""
    decisions = plan_run(config, rounds, compression, lora_rank)
    console = console or Console()
    if resume and checkpoint_dir is None:
        raise ValueError("--resume needs --checkpoint-dir (the directory of the checkpointed run)")
    if resume:
        assert checkpoint_dir is not None  # checked above
        done = check_resumable(checkpoint_dir, config, decisions)  # before building anything
        if done >= rounds:
            console.print(f"the checkpoint in {checkpoint_dir} already has {done} rounds (--rounds {rounds}): nothing to run")
    elif checkpoint_dir is not None and (existing := checkpoints(checkpoint_dir)):
        raise ValueError(f"--checkpoint-dir {checkpoint_dir} already holds a checkpoint ({existing[-1].name}): pass --resume "
                         "to continue it, or choose another directory")
    runner = RoundRunner(config, executor)
    runner.validate(decisions)  # fail before any training on a bad decision
    results = runner.resume(checkpoint_dir, decisions) if resume and checkpoint_dir is not None else []
    columns = (TextColumn(f"{config.method} rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ppl {task.fields[ppl]:.1f}"))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("rounds", total=max(rounds, len(results)), completed=len(results),
                                 ppl=runner.last_perplexity)
        for _ in range(rounds - len(results)):
            results.append(runner.run_round(decisions))
            if checkpoint_dir is not None:
                runner.save_checkpoint(checkpoint_dir, results, decisions)
            progress.update(task, advance=1, ppl=results[-1].full_perplexity)
    runner.close()
    return runner, results


def rounds_frame(results: Sequence[RoundResult]) -> pd.DataFrame:
    return pd.DataFrame([r.summary() for r in results])


def devices_frame(results: Sequence[RoundResult]) -> pd.DataFrame:
    return pd.DataFrame([{"round": r.round, **asdict(d)} for r in results for d in r.devices])


def round_table(runner: RoundRunner, results: Sequence[RoundResult]) -> Table:
    table = Table(title=f"{runner.config.method} · {runner.config.num_devices} devices · seed {runner.config.seed} "
                        f"· initial full-model ppl {runner.initial_perplexity:.1f}")
    for column in ("round", "full ppl", "emu ppl", "latency s", "down MB", "up MB", "exch.", "mem MB", "loss"):
        table.add_column(column, justify="right")
    for r in results:
        emu = "–" if math.isnan(r.emulator_perplexity) else f"{r.emulator_perplexity:.1f}"
        table.add_row(str(r.round), f"{r.full_perplexity:.1f}", emu, f"{r.round_latency_s:.3f}", f"{r.bytes_down / MB:.3f}",
                      f"{r.bytes_up / MB:.3f}", str(r.exchanges), f"{r.peak_memory_bytes / MB:.1f}", f"{r.train_loss:.3f}")
    return table


def metrics_table(runner: RoundRunner, results: Sequence[RoundResult]) -> Table | None:
    """The method-specific metrics per round (e.g. fltac's clustering accuracy), or None if the method has none."""
    names = list(dict.fromkeys(name for r in results for name in r.metrics))
    if not names:
        return None
    table = Table(title=f"{runner.config.method} metrics")
    for column in ("round", *names):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(str(r.round), *(f"{r.metrics[m]:.4g}" if m in r.metrics else "–" for m in names))
    return table


def write_tensorboard(results: Sequence[RoundResult], log_dir: Path) -> Path:
    """Every round's numbers as tensorboard scalars ``fed/<name>`` at step = round (the env's are ``env/``, SB3's
    ``train/``), so that tensorboard groups them."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        for r in results:
            for key, value in r.summary().items():
                if key != "round" and isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(f"fed/{key}", value, r.round)
    return log_dir


def write_outputs(runner: RoundRunner, results: Sequence[RoundResult], out_dir: Path) -> list[Path]:
    """Write rounds.csv, devices.csv, messages.csv, run.json (config + every round) and tb/ (``fed/`` scalars) into
    ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "rounds.csv", out_dir / "devices.csv", out_dir / "messages.csv", out_dir / "run.json"]
    rounds_frame(results).to_csv(paths[0], index=False)
    devices_frame(results).to_csv(paths[1], index=False)
    runner.log.to_frame().to_csv(paths[2], index=False)
    record = {
        "config": asdict(runner.config),
        "initial_perplexity": runner.initial_perplexity,
        "rounds": [asdict(r) for r in results],
    }
    paths[3].write_text(json.dumps(record, indent=2, default=str) + "\n")
    return [*paths, write_tensorboard(results, out_dir / "tb")]
