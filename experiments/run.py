"""``fedpeat run``: a federated run of one method with a per-round table, written as CSV + JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from federation.engine import EngineConfig, RoundResult, RoundRunner
from federation.methods import DeviceDecision, FedOTConfig, FedPEATConfig, MethodConfig, make_method

MB = 1e6


def build_method_config(method: str, local_steps: int, lora_aggregation: str = "naive", case: int = 1,
                        distill_steps: int | None = None, compression: Sequence[float] = ()) -> MethodConfig:
    """A method's config from CLI-style options (the method's defaults otherwise); options that do not apply to the
    method are errors. fedot's shared emulator takes the single ``compression`` value given (default 0.5)."""
    train = replace(make_method(method).train_config, steps=local_steps)  # validates the name; the method's lr
    if method != "fedpeat" and case != 1:
        raise ValueError(f"--case applies to method 'fedpeat' only, not {method!r}")
    if method not in ("fedpeat", "fedot") and distill_steps is not None:
        raise ValueError(f"--distill-steps applies to methods 'fedpeat' and 'fedot' only, not {method!r}")
    if method == "fedpeat":
        return FedPEATConfig(train=train, lora_aggregation=lora_aggregation, case=case, distill_steps=distill_steps or 0)
    if method == "fedot":
        shared = compression[0] if len(set(compression)) == 1 else 0.5
        return FedOTConfig(train=train, lora_aggregation=lora_aggregation, compression=shared,
                           distill_steps=50 if distill_steps is None else distill_steps)
    return MethodConfig(train=train, lora_aggregation=lora_aggregation)


def _per_device(name: str, values: Sequence, num_devices: int, default) -> list:
    """One value per device from a CLI list: empty → ``default`` for all, one value → for all, else one each."""
    values = list(values) or [default]
    if len(values) == 1:
        values = values * num_devices
    if len(values) != num_devices:
        raise ValueError(f"{name} takes 1 value or one per device ({num_devices}), got {len(values)}")
    return values


def decisions_for(num_devices: int, compression: Sequence[float], lora_rank: Sequence[int] = ()) -> list[DeviceDecision]:
    """Per-device decisions from ``--compression`` (default 0) and ``--lora-rank`` (default: the global rank)."""
    eps = _per_device("compression", compression, num_devices, 0.0)
    ranks = _per_device("lora_rank", lora_rank, num_devices, None)
    return [DeviceDecision(True, float(e), None if r is None else int(r)) for e, r in zip(eps, ranks)]


def run_federated(
    config: EngineConfig, rounds: int, compression: Sequence[float] = (), console: Console | None = None,
    lora_rank: Sequence[int] = (),
) -> tuple[RoundRunner, list[RoundResult]]:
    """Run ``rounds`` rounds with fixed decisions, showing a progress bar."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    decisions = decisions_for(config.num_devices, compression, lora_rank)
    runner = RoundRunner(config)
    runner.validate(decisions)  # fail before any training on a bad decision
    console = console or Console()
    columns = (TextColumn(f"{config.method} rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ppl {task.fields[ppl]:.1f}"))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("rounds", total=rounds, ppl=runner.initial_perplexity)
        results = runner.run(rounds, decisions, progress=lambda r: progress.update(task, advance=1, ppl=r.full_perplexity))
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


def write_outputs(runner: RoundRunner, results: Sequence[RoundResult], out_dir: Path) -> list[Path]:
    """Write rounds.csv, devices.csv, messages.csv and run.json (config + every round) into ``out_dir``."""
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
    return paths
