"""``fedpeat compare``: every chosen method on the same engine, seeds and data; one table (markdown + CSV).

A method entry is a name with optional config settings, ``NAME[:key=value[:key=value…]]`` — e.g.
``hetlora:ranks=2,4,8:aggregation=zero-pad`` — so variants of one method compare side by side under that label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from agents.stats import bootstrap_ci, to_markdown
from federation.data import PartitionKind
from federation.engine import EngineConfig
from federation.executors import Executor
from federation.methods import make_method

RUN_COLUMNS = ("bytes down (MB)", "bytes up (MB)", "peak device memory (MB)", "wall time (s)")


def parse_method_entry(entry: str) -> tuple[str, dict[str, str]]:
    """``"hetlora:ranks=2,4,8:lam=0"`` → ("hetlora", {"ranks": "2,4,8", "lam": "0"})."""
    from experiments.run import parse_options

    name, *settings = entry.split(":")
    make_method(name.strip())  # ValueError listing the known names
    return name.strip(), parse_options([s for s in settings if s.strip()])


def plan_comparison(methods: Sequence[str], rounds: int, seeds: Sequence[int], devices: int = 4, local_steps: int = 10,
                    compression: float = 0.5, partition: PartitionKind = "iid", alpha: float = 0.5,
                    domains: Sequence[str] = ()) -> list[tuple[str, EngineConfig, list[float]]]:
    """(entry, engine config at seed 0, ε of its devices) per method entry, every one checked before any run
    (``experiments.run.plan_run``: the data and the model can realise it). Emulator methods with a controllable
    ratio (fedpeat case 1, fedot) train through emulators of ratio ``compression``. Without ``domains``, all entries
    tune on pydocs — or all on the three tuning domains when one entry is multi-task."""
    from experiments.run import build_method_config, default_domains, plan_run

    if not seeds:
        raise ValueError("seeds must be >= 1, got 0")
    entries = []
    for entry in methods:
        name, options = parse_method_entry(entry)
        method_config = build_method_config(name, local_steps, compression=[compression], options=options)
        controllable = name in ("fedpeat", "fedot") and make_method(name, method_config).uses_emulator  # not case 2/3
        entries.append((entry, name, method_config, [compression] if controllable else [0.0]))
    domains = default_domains([name for _, name, _, _ in entries], domains)  # every entry on the same data
    plans = []
    for entry, name, method_config, eps in entries:
        config = EngineConfig(method=name, num_devices=devices, partition=partition, dirichlet_alpha=alpha,
                              domains=tuple(domains), method_config=method_config)
        plan_run(config, rounds, eps, remedy="use fewer devices or more --domain")
        plans.append((entry, config, eps))
    return plans


def compare(methods: Sequence[str], rounds: int, seeds: Sequence[int], devices: int = 4, local_steps: int = 10,
            compression: float = 0.5, partition: PartitionKind = "iid", alpha: float = 0.5, domains: Sequence[str] = (),
            say: Callable[[str], None] = print, executor: Executor | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-run rows, per-entry summary sorted by final perplexity) of the runs ``plan_comparison`` plans (every
    entry validated before any run). Method-specific metrics of the last round (e.g. fltac's clustering accuracy)
    become extra columns. ``executor`` runs every run's clients (default: in this process)."""
    from experiments.run import run_federated

    plans = plan_comparison(methods, rounds, seeds, devices, local_steps, compression, partition, alpha, domains)
    runs = []
    for entry, config, eps in plans:
        for seed in seeds:
            say(f"{entry} seed {seed}")
            runner, results = run_federated(replace(config, seed=seed), rounds, eps, executor=executor)
            runs.append({
                "method": entry, "seed": seed, "initial perplexity": runner.initial_perplexity,
                "final perplexity": results[-1].full_perplexity,
                RUN_COLUMNS[0]: sum(r.bytes_down for r in results) / 1e6,
                RUN_COLUMNS[1]: sum(r.bytes_up for r in results) / 1e6,
                RUN_COLUMNS[2]: max(r.peak_memory_bytes for r in results) / 1e6,
                RUN_COLUMNS[3]: sum(r.wall_time_s for r in results),
                **results[-1].metrics,
            })
    df = pd.DataFrame(runs)
    extra = [c for c in df.columns if c not in ("method", "seed", "initial perplexity", "final perplexity", *RUN_COLUMNS)]
    rows = []
    for entry, group in df.groupby("method", sort=False):
        ppl = group["final perplexity"].to_numpy()
        low, high = bootstrap_ci(ppl) if len(ppl) > 1 else (float(ppl[0]), float(ppl[0]))
        rows.append({"method": entry, "final perplexity": float(np.mean(ppl)), "CI low": low, "CI high": high,
                     **{c: group[c].mean() for c in (*RUN_COLUMNS, *extra)}})
    return df, pd.DataFrame(rows).sort_values("final perplexity", ignore_index=True)


def write_comparison(runs: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "compare.md", out_dir / "compare.csv", out_dir / "compare_runs.csv"]
    paths[0].write_text(to_markdown(summary, digits=2))
    summary.to_csv(paths[1], index=False)
    runs.to_csv(paths[2], index=False)
    return paths
