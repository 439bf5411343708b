"""Figures for training runs and benchmarks (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def read_episodes(source: str | Path) -> pd.DataFrame:
    """Episode returns against env steps, columns (timesteps, return), from a run directory (its ``monitor/``
    files), a directory of ``*.monitor.csv``, one Monitor csv, or an SB3 ``progress.csv``."""
    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.monitor.csv")) or sorted(path.glob("monitor/*.monitor.csv"))
        if not files:
            progress = sorted(path.glob("**/progress.csv"))
            if not progress:
                raise FileNotFoundError(f"no *.monitor.csv or progress.csv under {path}")
            return read_episodes(progress[0])
    elif path.name.endswith(".monitor.csv"):
        files = [path]
    else:
        log = pd.read_csv(path)
        if "rollout/ep_rew_mean" not in log or "time/total_timesteps" not in log:
            raise ValueError(f"{path} is not an SB3 progress.csv with rollout/ep_rew_mean and time/total_timesteps")
        log = log.dropna(subset=["rollout/ep_rew_mean"])
        return pd.DataFrame({"timesteps": log["time/total_timesteps"], "return": log["rollout/ep_rew_mean"]})
    episodes = pd.concat([pd.read_csv(f, skiprows=1) for f in files]).sort_values("t")
    return pd.DataFrame({"timesteps": episodes["l"].cumsum().to_numpy(), "return": episodes["r"].to_numpy()})


def learning_curve(source: str | Path, out_png: str | Path, window: int = 20, title: str | None = None) -> Path:
    """Episode return against env steps (raw and a rolling mean over ``window`` episodes) saved as a PNG."""
    data = read_episodes(source)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(data["timesteps"], data["return"], alpha=0.3, lw=0.8, label="episode")
    smooth = data["return"].rolling(window, min_periods=1).mean()
    ax.plot(data["timesteps"], smooth, lw=1.8, label=f"mean of {window}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    low, high = data["return"].quantile(0.02), data["return"].max()
    if high > low:  # one distinct return (a test run) leaves matplotlib's own limits
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))  # rare outliers would flatten the curve
    ax.set_title(title or Path(source).name)
    ax.legend(loc="lower right")
    return _save(fig, out_png)


def learning_curves(runs: dict[str, list[str | Path]], out_png: str | Path, lines: dict[str, float] | None = None,
                    window: int = 20, points: int = 100) -> Path:
    """Episode return against env steps over training seeds: per algorithm the median of its runs' rolling means
    (``window`` episodes, on a common grid of ``points`` steps) and the band between their min and max, with
    horizontal ``lines`` (e.g. the best fixed policy and the oracle)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, sources in runs.items():
        curves = [read_episodes(src) for src in sources]
        end = min(float(c["timesteps"].iloc[-1]) for c in curves)
        grid = np.linspace(0.0, end, points)
        smooth = np.vstack([np.interp(grid, c["timesteps"], c["return"].rolling(window, min_periods=1).mean())
                            for c in curves])
        median = ax.plot(grid, np.median(smooth, axis=0), lw=1.8, label=f"{name} (median of {len(curves)})")[0]
        ax.fill_between(grid, smooth.min(axis=0), smooth.max(axis=0), color=median.get_color(), alpha=0.2)
    for (label, value), style in zip((lines or {}).items(), ("--", ":", "-.")):
        ax.axhline(value, color="black", ls=style, lw=1.0, label=label)
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"return (mean of {window} episodes)")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out_png)


def returns_bar(table: pd.DataFrame, out_png: str | Path, title: str = "Mean return (95% bootstrap CI)") -> Path:
    """Horizontal bars of a ``benchmark_table``'s mean returns with their CIs, saved as a PNG."""
    order = table.sort_values("mean return")
    mean = order["mean return"].to_numpy()
    err = np.vstack([mean - order["CI low"].to_numpy(), order["CI high"].to_numpy() - mean])
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(order) + 1.2))
    ax.barh(order["policy"], mean, xerr=err, capsize=3, color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="black", lw=0.6)
    ax.set_xlabel("return")
    ax.set_title(title)
    return _save(fig, out_png)


def _save(fig, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
