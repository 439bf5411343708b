"""``fedpeat claims``: do the papers' claims reproduce on the embedded model?

One ``experiments.compare`` run per claim (same engine, seeds and data for both sides), final full-model
perplexity (lower is better) with bootstrap 95% CIs over seeds, and a verdict per claim, as markdown + CSV.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from agents.stats import to_markdown
from experiments.compare import compare
from experiments.run import MULTI_TASK_DOMAINS


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    method: str
    """Compare entry claimed to be at least as good (``experiments.compare`` syntax)."""
    baseline: str
    partition: str = "iid"
    alpha: float = 0.5
    domains: tuple[str, ...] = ()


CLAIMS = (
    Claim("fedpft", "FedPFT ≥ FedOT at equal sub-model size (25% FFN neurons in 8 middle blocks ≈ ε = 0.5 layer drop)",
          "fedpft:refresh_every=3", "fedot"),
    Claim("hetlora", "HetLoRA sparsity-weighted aggregation ≥ plain zero-padded average (device ranks 2/4/8)",
          "hetlora:ranks=2,4,8", "hetlora:ranks=2,4,8:aggregation=zero-pad"),
    Claim("feddat", "FedDAT ≥ FedAvg of one adapter under Dirichlet α = 0.1 over three domains",
          "feddat", "fedpetuning", partition="dirichlet", alpha=0.1, domains=MULTI_TASK_DOMAINS),
    Claim("fltac", "FL-TAC per-task adapters ≥ one FedAvg adapter on three tasks; k-means recovers the tasks",
          "fltac", "fedpetuning", domains=MULTI_TASK_DOMAINS),
)
CLAIM_KEYS = tuple(c.key for c in CLAIMS)


def verdict(method_ppl: float, method_ci: tuple[float, float], baseline_ppl: float, baseline_ci: tuple[float, float]) -> str:
    """Lower perplexity is better; 'separate' means the two bootstrap 95% CIs do not overlap."""
    if method_ppl <= baseline_ppl:
        return "reproduces (CIs separate)" if method_ci[1] < baseline_ci[0] else "holds in the mean; CIs overlap"
    return "does not reproduce (baseline better, CIs separate)" if baseline_ci[1] < method_ci[0] else \
        "does not reproduce in the mean; CIs overlap"


def run_claims(rounds: int = 6, seeds: int = 3, devices: int = 4, local_steps: int = 5, only: Sequence[str] = (),
               say: Callable[[str], None] = print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per claim with the verdict, every compare run). ``only`` picks claims by key (default: all)."""
    unknown = [k for k in only if k not in CLAIM_KEYS]
    if unknown:
        raise ValueError(f"claim must be one of {CLAIM_KEYS}, got {unknown}")
    if rounds < 1 or seeds < 2:
        raise ValueError(f"claims need rounds >= 1 and seeds >= 2 (for a CI), got rounds={rounds}, seeds={seeds}")
    rows, all_runs = [], []
    for claim in (c for c in CLAIMS if not only or c.key in only):
        runs, summary = compare([claim.method, claim.baseline], rounds, list(range(seeds)), devices, local_steps,
                                partition=claim.partition, alpha=claim.alpha, domains=claim.domains, say=say)
        all_runs.append(runs.assign(claim=claim.key))
        by = summary.set_index("method")
        m, b = by.loc[claim.method], by.loc[claim.baseline]
        row = {
            "claim": claim.key, "statement": claim.statement, "method": claim.method, "baseline": claim.baseline,
            "data": f"{claim.partition}" + (f" α={claim.alpha}" if claim.partition == "dirichlet" else "")
                    + f", {'+'.join(claim.domains) or 'pydocs'}",
            "method ppl": m["final perplexity"], "method CI": f"[{m['CI low']:.1f}, {m['CI high']:.1f}]",
            "baseline ppl": b["final perplexity"], "baseline CI": f"[{b['CI low']:.1f}, {b['CI high']:.1f}]",
            "gain %": 100.0 * (b["final perplexity"] - m["final perplexity"]) / b["final perplexity"],
            "verdict": verdict(m["final perplexity"], (m["CI low"], m["CI high"]), b["final perplexity"], (b["CI low"], b["CI high"])),
        }
        if "clustering_accuracy" in by.columns:
            row["clustering accuracy"] = float(m["clustering_accuracy"])
        rows.append(row)
    return pd.DataFrame(rows), pd.concat(all_runs, ignore_index=True)


def write_claims(table: pd.DataFrame, runs: pd.DataFrame, out_dir: Path, settings: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "claims.md", out_dir / "claims.csv", out_dir / "claims_runs.csv"]
    paths[0].write_text(f"# Papers' claims on the embedded model\n\n{settings}\n\n" + to_markdown(table, digits=2))
    table.to_csv(paths[1], index=False)
    runs.to_csv(paths[2], index=False)
    return paths
