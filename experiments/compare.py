"""``fedpeat compare``: every chosen method on the same engine, seeds and data; one table (markdown + CSV)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from agents.stats import bootstrap_ci, to_markdown
from federation.engine import EngineConfig

EMULATOR_METHODS = ("fedpeat", "fedot")


def compare(methods: Sequence[str], rounds: int, seeds: Sequence[int], devices: int = 4, local_steps: int = 10,
            compression: float = 0.5, say: Callable[[str], None] = print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-run rows, per-method summary). Emulator methods train through emulators of ratio ``compression``."""
    from experiments.run import build_method_config, run_federated

    runs = []
    for method in methods:
        eps = [compression] if method in EMULATOR_METHODS else [0.0]
        for seed in seeds:
            say(f"{method} seed {seed}")
            config = EngineConfig(method=method, num_devices=devices, seed=seed,
                                  method_config=build_method_config(method, local_steps, compression=[compression]))
            runner, results = run_federated(config, rounds, eps)
            runs.append({
                "method": method, "seed": seed, "initial perplexity": runner.initial_perplexity,
                "final perplexity": results[-1].full_perplexity,
                "bytes down (MB)": sum(r.bytes_down for r in results) / 1e6,
                "bytes up (MB)": sum(r.bytes_up for r in results) / 1e6,
                "peak device memory (MB)": max(r.peak_memory_bytes for r in results) / 1e6,
                "wall time (s)": sum(r.wall_time_s for r in results),
            })
    df = pd.DataFrame(runs)
    rows = []
    for method, group in df.groupby("method", sort=False):
        ppl = group["final perplexity"].to_numpy()
        low, high = bootstrap_ci(ppl) if len(ppl) > 1 else (float(ppl[0]), float(ppl[0]))
        rows.append({"method": method, "final perplexity": float(np.mean(ppl)), "CI low": low, "CI high": high,
                     **{c: group[c].mean() for c in df.columns[5:]}})
    return df, pd.DataFrame(rows).sort_values("final perplexity", ignore_index=True)


def write_comparison(runs: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "compare.md", out_dir / "compare.csv", out_dir / "compare_runs.csv"]
    paths[0].write_text(to_markdown(summary, digits=2))
    summary.to_csv(paths[1], index=False)
    runs.to_csv(paths[2], index=False)
    return paths
