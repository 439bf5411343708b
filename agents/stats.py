"""Benchmark statistics: IQM, bootstrap CIs, normalised scores, the benchmark table and a Markdown formatter."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
from scipy.stats import trim_mean

from agents.policy import CLAIRVOYANT

TABLE_COLUMNS = ("policy", "knows the future", "mean return", "IQM", "CI low", "CI high", "final perplexity",
                 "total latency (s)", "exchanges", "memory violations", "normalised score")


def iqm(x) -> float:
    """Interquartile mean: the mean of the middle 50% (25% trimmed from each end, as in rliable)."""
    return float(trim_mean(np.asarray(x, dtype=float).ravel(), 0.25))


def bootstrap_ci(x, fn: Callable = np.mean, n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``fn(x)`` from ``n`` resamples with replacement."""
    values = np.asarray(x, dtype=float).ravel()
    if values.size == 0:
        raise ValueError("x must not be empty")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(n, values.size))
    stats = np.array([fn(values[row]) for row in idx])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, **ci_kwargs) -> dict[str, float]:
    """Mean and bootstrap CI of the per-episode return difference a − b, episodes matched on (seed, episode): under
    common random numbers both policies met the same channels there, so the pairing removes the episodes' shared
    luck (deep fades, memory tiers) that widens each policy's own CI. Keys: mean, CI low, CI high, episodes."""
    keys = ["seed", "episode"]
    pairs = a[keys + ["return"]].merge(b[keys + ["return"]], on=keys, suffixes=("_a", "_b"), validate="one_to_one")
    if len(pairs) != len(a) or len(pairs) != len(b):
        raise ValueError(f"a and b must hold the same (seed, episode) pairs, got {len(a)} and {len(b)} rows, {len(pairs)} shared")
    diff = (pairs["return_a"] - pairs["return_b"]).to_numpy(dtype=float)
    low, high = bootstrap_ci(diff, **ci_kwargs)
    return {"mean": float(diff.mean()), "CI low": low, "CI high": high, "episodes": int(diff.size)}


def runs_summary(run_scores, n: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """rliable's aggregate over independent training runs of one task: IQM of the run scores with a bootstrap CI
    over runs (the stratified bootstrap of rliable, with a single task), and their mean. Keys: IQM, CI low, CI high,
    mean, runs."""
    scores = np.asarray(run_scores, dtype=float).ravel()
    low, high = bootstrap_ci(scores, fn=iqm, n=n, seed=seed, level=level)
    return {"IQM": iqm(scores), "CI low": low, "CI high": high, "mean": float(scores.mean()), "runs": int(scores.size)}


def probability_of_improvement(x_runs, y_runs) -> float:
    """P(X > Y) as rliable defines it for one task: the share of run pairs (x_i, y_j) with x_i > y_j, ties counting
    one half (the Mann–Whitney U statistic over m·n)."""
    x, y = (np.asarray(v, dtype=float).ravel()[:, None] for v in (x_runs, y_runs))
    if x.size == 0 or y.size == 0:
        raise ValueError("x_runs and y_runs must not be empty")
    return float(((x > y.T) + 0.5 * (x == y.T)).mean())


def normalised_score(R, R_random, R_oracle):
    """(R − R_random) / (R_oracle − R_random): 0 = random, 1 = oracle (arrays broadcast)."""
    span = np.asarray(R_oracle, dtype=float) - np.asarray(R_random, dtype=float)
    if np.any(span == 0):
        raise ValueError("R_oracle must differ from R_random (the normalisation span is zero)")
    score = (np.asarray(R, dtype=float) - R_random) / span
    return float(score) if np.ndim(score) == 0 else score


def benchmark_table(results: Mapping[str, pd.DataFrame], random: str = "random", oracle: str = "oracle",
                    **ci_kwargs) -> pd.DataFrame:
    """One row per policy (``TABLE_COLUMNS``), sorted by mean return (best first), from ``evaluate`` frames.
    CI: bootstrap of the mean return; per-episode columns are means; "knows the future" marks the clairvoyant
    baselines (``agents.policy.CLAIRVOYANT``: upper bounds, not controllers); the normalised score uses the mean returns
    of ``random`` and ``oracle`` (NaN if either is missing)."""
    rows = []
    for name, df in results.items():
        returns = df["return"].to_numpy(dtype=float)
        low, high = bootstrap_ci(returns, **ci_kwargs)
        rows.append({"policy": name, "knows the future": "yes" if name in CLAIRVOYANT else "no",
                     "mean return": returns.mean(), "IQM": iqm(returns), "CI low": low,
                     "CI high": high, "final perplexity": df["final_perplexity"].mean(),
                     "total latency (s)": df["total_latency_s"].mean(), "exchanges": df["exchanges"].mean(),
                     "memory violations": df["memory_violations"].mean()})
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS[:-1]))
    means = dict(zip(table["policy"], table["mean return"]))
    if random in means and oracle in means and means[random] != means[oracle]:
        table["normalised score"] = normalised_score(table["mean return"].to_numpy(), means[random], means[oracle])
    else:
        table["normalised score"] = np.nan
    return table.sort_values("mean return", ascending=False, ignore_index=True)


FIXED_POLICIES = ("fixed-", "full-model")
"""Name prefixes of the fixed (non-adaptive) baselines."""


def best_fixed(results: Mapping[str, pd.DataFrame]) -> str:
    """The fixed policy (``FIXED_POLICIES``) with the highest mean return among ``results`` (``evaluate`` frames)."""
    fixed = [name for name in results if name.startswith(FIXED_POLICIES)]
    if not fixed:
        raise ValueError(f"results must include a fixed policy (fixed-k or full-model), got {sorted(results)}")
    return max(fixed, key=lambda name: results[name]["return"].mean())


def oracle_margin(table: pd.DataFrame, oracle: str = "oracle", fixed=FIXED_POLICIES) -> float:
    """The oracle's mean-return margin over the best fixed policy, in % of |best fixed| (DESIGN 10a: ≥ 10% means
    the scenario leaves room for adaptive control)."""
    is_fixed = table["policy"].str.startswith(tuple(fixed))
    if oracle not in set(table["policy"]) or not is_fixed.any():
        raise ValueError(f"table needs an {oracle!r} row and at least one row starting with {fixed}")
    best = table.loc[is_fixed, "mean return"].max()
    if best == 0:
        raise ValueError("the best fixed policy's mean return is 0: the margin in % is undefined")
    value = table.loc[table["policy"] == oracle, "mean return"].iloc[0]
    return float(100.0 * (value - best) / abs(best))


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table (no ``tabulate`` needed): floats with ``digits`` decimals, numbers right-aligned."""
    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return "nan" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(str(c) for c in df.columns) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
