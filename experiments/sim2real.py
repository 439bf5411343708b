"""``fedpeat sim2real``: the same policies on the surrogate (``FedPEAT-v1``) and on real engine rounds
(``FedPEAT-Engine-v1``), same seeds, compared round by round.

The cost terms of the reward come from the same code on both fidelities, so returns agree partly by construction;
what the surrogate models is the perplexity. The comparison is therefore made on the *perplexity trajectory*: per
policy, the mean over the episodes of the full model's perplexity after each round (an episode that ended carries its
last perplexity to the horizon), surrogate against engine, its largest relative error over the rounds against a
tolerance (``TOLERANCE``), beside the returns and whether the policies rank the same (Kendall τ). Engine episodes are
saved one by one under ``OUT/engine/`` as they finish, so a killed run resumes where it stopped, and written together
as calibration runs to ``OUT/engine_runs.json``, and per policy to ``OUT/engine_runs/<policy>.json``
(``fedpeat calibrate --add-runs``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

SIM2REAL_POLICIES = ("best-static", "mpc", "fixed-1", "fixed-2", "fixed-3", "fixed-4", "largest-1", "largest-2",
                     "largest-3", "smallest-1")
"""The baselines compared by default: the best static rule and MPC (both plan on the surrogate: best-static's search
runs on it, MPC simulates it), every fixed level, the largest-share devices held (k = 1, 2, 3) and the smallest-share
device held alone."""
TOLERANCE = 0.05
"""Largest relative error of a policy's mean perplexity at any round, surrogate against engine."""
TOLERANCES = {"smallest-1": 0.10}
"""Policies allowed a wider tolerance: one device with little data, whose engine rounds are the noisiest."""


@dataclass(frozen=True)
class Sim2RealConfig:
    """What ``sim_to_real`` runs."""

    policies: tuple[str, ...] = SIM2REAL_POLICIES
    """Baselines (``agents.make_policy`` names)."""
    seeds: tuple[int, ...] = tuple(range(10_000, 10_010))
    """One episode per seed and policy on each fidelity (the benchmark's test seeds by default)."""
    horizon: int | None = None
    """Rounds per episode (None: the agent's, else the env's default)."""
    env_kwargs: dict = field(default_factory=dict)
    """Env options (with an agent: its training options, these on top)."""
    agent_dir: str | None = None
    """A trained agent (``fedpeat train``) compared beside the baselines."""
    checkpoint: str = "final"
    """Of the agent: final or best."""
    workers: int = 2
    """Engine episodes at once (worker processes, one torch thread each)."""
    out_dir: str = "runs/sim2real"

    def resolved(self) -> tuple[dict, list[str], str | None]:
        """(env options, every policy's name with the agent's first, the agent's name)."""
        kwargs, agent = dict(self.env_kwargs), None
        if self.agent_dir is not None:
            config = json.loads((Path(self.agent_dir) / "config.json").read_text())
            kwargs = {**config["env_kwargs"], **kwargs}
            agent = config["algo"]
        kwargs.pop("fidelity", None)
        if self.horizon is not None:
            kwargs["horizon"] = self.horizon
        elif "horizon" not in kwargs:
            from fedpeat_env import EnvConfig

            kwargs["horizon"] = EnvConfig().horizon  # FedPEAT-Engine-v1's own default is 5
        return kwargs, ([agent] if agent else []) + list(self.policies), agent


def _episode(name: str, env_id: str, kwargs: dict, seed: int, agent_dir: str | None, checkpoint: str) -> dict:
    """One traced episode of a baseline or of the agent in ``agent_dir``: {"row", "trace"}."""
    import gymnasium as gym

    import fedpeat_env  # noqa: F401
    from agents import make_policy
    from agents.evaluate import run_episode
    from agents.train import load_policy

    policy = load_policy(agent_dir, checkpoint=checkpoint) if agent_dir else make_policy(name)
    env = gym.make(env_id, **kwargs)
    trace: list[dict] = []
    try:
        row = run_episode(policy, env, seed, trace)
    finally:
        env.close()
    return {"row": row, "trace": trace}


def _engine_episode_in_worker(name: str, kwargs: dict, seed: int, agent_dir: str | None, checkpoint: str) -> dict:
    """``_episode`` on ``FedPEAT-Engine-v1`` in a worker process (one torch thread, quiet libraries)."""
    from federation.foundation import worker_setup

    worker_setup()
    return _episode(name, "FedPEAT-Engine-v1", kwargs, seed, agent_dir, checkpoint)


def _agent_key(agent_dir: str | None, checkpoint: str) -> str | None:
    """A digest of the agent's weights (a retrained agent is not served a cached episode)."""
    if agent_dir is None:
        return None
    from agents.train import checked_checkpoint

    return hashlib.sha256((checked_checkpoint(agent_dir, checkpoint) / "model.zip").read_bytes()).hexdigest()[:16]


def sim_to_real(config: Sim2RealConfig, say: Callable[[str], None] = print) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Every policy on both fidelities, one episode per seed each. Returns (one row per policy: returns, final
    perplexities and ranks on each fidelity, the trajectory errors and whether they are within tolerance; a summary:
    Kendall τ of the returns, whether every policy is within tolerance, the mean return gap; the trajectories: one row
    per policy, fidelity, seed and round). Engine episodes are cached under ``OUT/engine`` (see the module
    docstring)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    import gymnasium as gym

    from agents.policy import as_fedpeat

    kwargs, names, agent = config.resolved()
    out = Path(config.out_dir)
    agent_key = _agent_key(config.agent_dir, config.checkpoint)
    surrogate_env = as_fedpeat(gym.make("FedPEAT-v1", **kwargs).unwrapped)
    dynamics, fitted = surrogate_env.dynamics, _fitted_perplexities(surrogate_env.calibration)
    reference = {"target": dynamics.target, "initial": dynamics.initial_ppl}  # what the engine env's reward reads

    def key(name: str, seed: int) -> dict:
        return {"policy": name, "seed": seed, "env_kwargs": kwargs, "agent": agent_key if name == agent else None,
                **reference}

    def path(name: str, seed: int) -> Path:
        return out / "engine" / name / f"seed-{seed}.json"

    def agent_of(name: str) -> str | None:
        return config.agent_dir if name == agent else None

    engine: dict[tuple[str, int], dict] = {}
    for name in names:
        for seed in config.seeds:
            cached = path(name, seed)
            if cached.is_file():
                record = json.loads(cached.read_text())
                if record.get("key") == json.loads(json.dumps(key(name, seed))):
                    engine[name, seed] = record["episode"]
    todo = [(name, seed) for name in names for seed in config.seeds if (name, seed) not in engine]
    if engine:
        say(f"reusing {len(engine)} engine episodes from {out / 'engine'}")
    def finished(done: int, name: str, seed: int, episode: dict) -> None:
        engine[name, seed] = episode
        target = path(name, seed)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"key": key(name, seed), "episode": episode}))
        say(f"engine {done}/{len(todo)}: {name} seed {seed}, return {episode['row']['return']:.2f}")

    if todo:
        say(f"{len(todo)} engine episodes on {config.workers} worker(s)")
    if todo and config.workers == 1:  # in this process: no worker to start
        for done, (name, seed) in enumerate(todo, 1):
            finished(done, name, seed, _episode(name, "FedPEAT-Engine-v1", kwargs, seed, agent_of(name),
                                                config.checkpoint))
    elif todo:
        with ProcessPoolExecutor(max_workers=config.workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_engine_episode_in_worker, name, kwargs, seed, agent_of(name), config.checkpoint):
                       (name, seed) for name, seed in todo}
            for done, future in enumerate(as_completed(futures), 1):
                finished(done, *futures[future], future.result())
    surrogate = {(name, seed): _episode(name, "FedPEAT-v1", kwargs, seed, agent_of(name), config.checkpoint)
                 for name in names for seed in config.seeds}
    say("surrogate episodes done")
    episodes = {"FedPEAT-v1": surrogate, "FedPEAT-Engine-v1": engine}
    trajectories = _trajectories(episodes, kwargs["horizon"])
    table, summary = _compare(episodes, trajectories, names, kwargs["horizon"])
    table.insert(1, "in the fit", [sum(_rounded(e["trace"]) in fitted for (n, _), e in engine.items() if n == name)
                                   for name in names])  # engine episodes the calibration was fitted on: in-sample
    summary |= {"seeds": list(config.seeds), "env_kwargs": kwargs, "agent": agent, "checkpoint": config.checkpoint}
    _save_engine_runs(engine, kwargs, out / "engine_runs.json")
    return table, summary, trajectories


def _rounded(trace: Sequence[dict]) -> tuple[float, ...]:
    return tuple(round(float(r["perplexity"]), 6) for r in trace)


def _fitted_perplexities(calibration) -> set[tuple[float, ...]]:
    """The perplexity trajectories of the calibration's fit runs of condition "policy" (episodes added from a
    sim2real run with ``fedpeat calibrate --add-runs``), to tell which policies' episodes it was fitted on."""
    return {tuple(round(float(p), 6) for p in run["perplexity"]) for run in calibration.meta.get("fit_runs", [])
            if run["spec"]["condition"] == "policy"}


def _trajectories(episodes: dict[str, dict], horizon: int) -> pd.DataFrame:
    """One row per fidelity, policy, seed and round 0..horizon: the full model's perplexity (an episode that ended
    carries its last value)."""
    rows = []
    for fidelity, runs in episodes.items():
        for (name, seed), episode in runs.items():
            ppl = [r["perplexity"] for r in episode["trace"]]
            ppl += [ppl[-1]] * (horizon + 1 - len(ppl))
            rows += [{"fidelity": fidelity, "policy": name, "seed": seed, "round": t, "perplexity": p}
                     for t, p in enumerate(ppl)]
    return pd.DataFrame(rows)


def _compare(episodes: dict[str, dict], trajectories: pd.DataFrame, names: Sequence[str],
             horizon: int) -> tuple[pd.DataFrame, dict]:
    from scipy.stats import kendalltau

    mean = trajectories.groupby(["policy", "fidelity", "round"])["perplexity"].mean().unstack("fidelity")
    rel = (mean["FedPEAT-v1"] - mean["FedPEAT-Engine-v1"]).abs() / mean["FedPEAT-Engine-v1"]
    paired = trajectories.pivot_table(index=["policy", "seed", "round"], columns="fidelity", values="perplexity")
    episode_error = ((paired["FedPEAT-v1"] - paired["FedPEAT-Engine-v1"]).abs() / paired["FedPEAT-Engine-v1"])
    rows = []
    for name in names:
        row: dict[str, Any] = {"policy": name}
        for fidelity in ("FedPEAT-v1", "FedPEAT-Engine-v1"):
            frame = pd.DataFrame([e["row"] for (n, _), e in episodes[fidelity].items() if n == name])
            row[f"{fidelity} return"] = float(frame["return"].mean())
            row[f"{fidelity} final ppl"] = float(frame["final_perplexity"].mean())
        errors = rel.loc[name]
        tolerance = TOLERANCES.get(name, TOLERANCE)
        row |= {"ppl error, worst round": float(errors.max()), "worst round": int(errors.idxmax()),
                "ppl error, mean": float(errors.mean()), "per-episode error, mean": float(episode_error.loc[name].mean()),
                "tolerance": tolerance, "within": bool(errors.max() <= tolerance)}
        rows.append(row)
    table = pd.DataFrame(rows)
    for fidelity in ("FedPEAT-v1", "FedPEAT-Engine-v1"):
        table[f"{fidelity} rank"] = table[f"{fidelity} return"].rank(ascending=False, method="min").astype(int)
    tau = float(kendalltau(table["FedPEAT-v1 return"], table["FedPEAT-Engine-v1 return"]).statistic)
    summary = {"kendall_tau": tau, "same_ranking": bool((table["FedPEAT-v1 rank"] == table["FedPEAT-Engine-v1 rank"]).all()),
               "all_within": bool(table["within"].all()), "horizon": horizon,
               "return_gap": float((table["FedPEAT-v1 return"] - table["FedPEAT-Engine-v1 return"]).mean())}
    return table, summary


def _save_engine_runs(engine: dict[tuple[str, int], dict], kwargs: dict, path: Path) -> None:
    """The engine episodes as calibration runs (``fedpeat calibrate --add-runs``): all of them in ``path``, and each
    policy's in ``<path's stem>/<policy>.json`` beside it (to add only the policies outside their tolerance)."""
    from fedpeat_env import EnvConfig
    from fedpeat_env.calibration import episode_trajectory, trajectory_to_dict

    env_config = EnvConfig.from_kwargs(**kwargs)
    runs = {key: trajectory_to_dict(episode_trajectory(e["trace"], key[1], env_config)) for key, e in engine.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(runs.values())) + "\n")
    (path.parent / path.stem).mkdir(exist_ok=True)
    for policy in dict.fromkeys(name for name, _ in runs):
        (path.parent / path.stem / f"{policy}.json").write_text(
            json.dumps([run for (name, _), run in runs.items() if name == policy]) + "\n")


def plot_trajectories(trajectories: pd.DataFrame, table: pd.DataFrame, path: Path) -> Path:
    """One panel per policy: the mean perplexity per round on each fidelity, with the engine's episodes' range."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(table["policy"])
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), sharex=True, squeeze=False)
    for ax, name in zip(axes.flat, names):
        frame = trajectories[trajectories["policy"] == name]
        for fidelity, colour in (("FedPEAT-Engine-v1", "tab:blue"), ("FedPEAT-v1", "tab:orange")):
            per_round = frame[frame["fidelity"] == fidelity].groupby("round")["perplexity"]
            label = "engine" if "Engine" in fidelity else "surrogate"
            ax.plot(per_round.mean().index, per_round.mean().values, color=colour, label=label)
            ax.fill_between(per_round.mean().index, per_round.min().values, per_round.max().values, color=colour,
                            alpha=0.15, linewidth=0)
        error = float(table.loc[table["policy"] == name, "ppl error, worst round"].iloc[0])
        ax.set_title(f"{name}  (worst {100 * error:.1f}%)", fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("perplexity", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(table: pd.DataFrame, summary: dict, trajectories: pd.DataFrame, out: Path) -> list[Path]:
    """sim2real.md / .csv (the table), trajectories.csv, summary.json and sim2real.png under ``out``."""
    from agents.stats import to_markdown

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "sim2real.md", out / "sim2real.csv", out / "trajectories.csv", out / "summary.json"]
    paths[0].write_text(to_markdown(table))
    table.to_csv(paths[1], index=False)
    trajectories.to_csv(paths[2], index=False)
    paths[3].write_text(json.dumps(summary, indent=2) + "\n")
    return [*paths, plot_trajectories(trajectories, table, out / "sim2real.png")]


__all__ = ["SIM2REAL_POLICIES", "TOLERANCE", "TOLERANCES", "Sim2RealConfig", "sim_to_real", "write_results"]
