"""Figures for training runs and benchmarks (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
    if path.is_dir():  # a resumed run has its later episodes in monitor/from-<steps>/
        files = sorted(path.glob("*.monitor.csv")) or sorted(path.glob("monitor/**/*.monitor.csv"))
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
    episodes = pd.concat([_monitor_episodes(f) for f in files]).sort_values("t", kind="stable")
    return pd.DataFrame({"timesteps": episodes["l"].cumsum().to_numpy(), "return": episodes["r"].to_numpy()})


def _monitor_episodes(path: Path) -> pd.DataFrame:
    """A Monitor csv with ``t`` in seconds since the epoch (its header's ``t_start`` + ``t``), so that the files of a
    run's parts and envs sort into one timeline."""
    with open(path) as f:
        header = json.loads(f.readline().lstrip("#"))
    episodes = pd.read_csv(path, skiprows=1)
    episodes["t"] += float(header["t_start"])
    return episodes


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


def learning_curves(runs: Mapping[str, Sequence[str | Path]], out_png: str | Path,
                    lines: dict[str, float] | None = None, window: int = 20, points: int = 100) -> Path:
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


def episode_plot(policy, out_png: str | Path, env_kwargs: dict | None = None, seed: int = 10_000,
                 title: str | None = None) -> Path:
    """One episode of ``policy`` on ``FedPEAT-v1``: per device (rows) and round (columns) the ε it was given, grey
    where it was not selected and hatched where it was selected but dropped for lack of memory; beside it each
    device's memory tier, and below the channel gain per device and round."""
    import gymnasium as gym

    import fedpeat_env  # noqa: F401
    from agents.policy import as_fedpeat
    from fedpeat_env.render import device_views

    env = gym.make("FedPEAT-v1", **(env_kwargs or {}))
    obs, _ = env.reset(seed=seed)
    dyn = as_fedpeat(env.unwrapped).dynamics
    policy.reset(env.unwrapped)
    n = dyn.N
    tiers = [device.tier for device in device_views(dyn)]
    chosen_rows, dropped_rows, gain_rows, ppl = [], [], [], []
    done = False
    while not done:
        action = policy.act(obs, env.unwrapped)
        obs, _, terminated, truncated, info = env.step(action)
        levels = np.asarray(action[:n])
        eps = np.where(levels > 0, dyn.tables.eps[levels], np.nan)
        chosen_rows.append(eps)
        dropped_rows.append((levels > 0) & ~dyn.state.active[0])
        gain_rows.append(dyn.state.gain_db[0].copy())
        ppl.append(info["perplexity"])
        done = terminated or truncated
    env.close()
    chosen, dropped, gains = np.array(chosen_rows).T, np.array(dropped_rows).T, np.array(gain_rows).T
    fig, (ax_eps, ax_gain) = plt.subplots(2, 1, figsize=(7, 1.2 + 0.45 * n * 2), sharex=True)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = ax_eps.imshow(np.ma.masked_invalid(chosen), aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0)
    for i, j in zip(*np.nonzero(dropped)):
        ax_eps.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", lw=0))
    ax_eps.set_yticks(range(n), [f"dev {i} ({t:.2f}×)" for i, t in enumerate(tiers)])
    ax_eps.set_title(title or f"one episode (seed {seed}): ε given per device and round (grey: not selected); "
                     f"final ppl {ppl[-1]:.0f}", fontsize=9)
    fig.colorbar(image, ax=ax_eps, label="ε")
    gain_image = ax_gain.imshow(gains, aspect="auto", cmap="magma")
    ax_gain.set_yticks(range(n), [f"dev {i}" for i in range(n)])
    ax_gain.set_xticks(range(chosen.shape[1]), range(1, chosen.shape[1] + 1))
    ax_gain.set_xlabel("round")
    ax_gain.set_title("channel gain (dB); memory tier beside each device above", fontsize=9)
    fig.colorbar(gain_image, ax=ax_gain, label="dB")
    return _save(fig, out_png)


def returns_bar(table: pd.DataFrame, out_png: str | Path, title: str = "Mean return (95% bootstrap CI)") -> Path:
    """Horizontal bars of a ``benchmark_table``'s mean returns with their CIs, saved as a PNG; the clairvoyant
    baselines (upper bounds) hatched grey and labelled so."""
    order = table.sort_values("mean return")
    mean = order["mean return"].to_numpy()
    err = np.vstack([mean - order["CI low"].to_numpy(), order["CI high"].to_numpy() - mean])
    future = (order["knows the future"] == "yes").to_numpy() if "knows the future" in order else np.zeros(len(order), bool)
    labels = [f"{p} (clairvoyant)" if f else p for p, f in zip(order["policy"], future)]
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(order) + 1.2))
    ax.barh(labels, mean, xerr=err, capsize=3, color=np.where(future, "tab:gray", "tab:blue"), alpha=0.8,
            hatch=["//" if f else "" for f in future])
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
