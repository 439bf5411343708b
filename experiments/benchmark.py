"""``fedpeat benchmark`` / ``fedpeat demo``: adaptive (RL) vs fixed vs baselines on common random numbers."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from agents import benchmark_table, evaluate, make_policy, oracle_margin, paired_difference, to_markdown
from agents import best_fixed as best_fixed_policy
from agents.evaluate import TEST_SEED
from agents.train import ALGOS, CHECKPOINTS, TrainConfig, load_policy, train
from federation.executor_config import ExecutorConfig, ExecutorKind
from fedpeat_env.config import EnvConfig

EVAL_SEED_OFFSET = TEST_SEED
"""Evaluation seeds start here, away from the training seeds."""
BEST_STATIC = "best-static"
"""The baseline an adaptive controller has to beat: the best static rule found by search on validation seeds."""


@dataclass(frozen=True)
class BenchmarkConfig:
    """One benchmark: train an agent, evaluate it and the baselines on the same seeds."""

    seeds: int = 10
    """Evaluation seeds (every policy meets the same channels on a seed)."""
    episodes_per_seed: int = 10
    """Episodes per seed: the first from ``reset(seed)``, the next ones continue that seed's stream (``evaluate``).
    The CIs are over all seeds × episodes: with one episode per seed, a few seeds with deep fades decided them."""
    timesteps: int | None = None
    """Agent training steps (None: ``n_timesteps`` of ``agents/hyperparams/<algo>.yml``: 700k for PPO, ≈ 4.5 min on one
    core)."""
    algo: str = "ppo"
    """A name of the registry ``agents.train.ALGOS`` (ppo, a2c, maskable-ppo)."""
    algos: tuple[str, ...] = ()
    """Several algorithms in one benchmark (``run_seeds_benchmark``; empty: ``(algo,)``)."""
    train_seeds: int = 1
    """Training seeds per algorithm (> 1: ``run_seeds_benchmark``, statistics over runs as rliable computes them)."""
    train_seed: int = 0
    """Seed of the training run."""
    hyperparams: dict = field(default_factory=dict)
    """Overrides of ``agents/hyperparams/<algo>.yml`` (RL Zoo keys: n_envs, n_timesteps, policy, normalize, or any
    argument of the algorithm)."""
    env_kwargs: dict = field(default_factory=dict)
    """FedPEAT-v1 options (defaults: the benchmark scenario)."""
    train_env_kwargs: dict = field(default_factory=dict)
    """FedPEAT-v1 options of training only, over ``env_kwargs`` (e.g. ``episode_devices=(5, 10)``: the agent trains on
    episodes of 5 to 10 devices and is evaluated on ``env_kwargs``' scenario). Its validation checks run on the training
    scenario."""
    baselines: tuple[str, ...] = ("fixed-1", "fixed-2", "fixed-3", "fixed-4", "best-static", "mpc", "random", "ucb",
                                  "greedy", "oracle")
    """Baseline policies (``agents.make_policy`` names). ``best-static`` (the best static rule, searched on validation
    seeds) is the baseline to beat; ``mpc`` the honest model-based controller; ``greedy`` and ``oracle`` know the
    realised future (upper bounds)."""
    out_dir: str = "runs/benchmark"
    """Where the agent, table (markdown + CSV) and plots go."""
    check_every: int = 0
    """Every this many env steps of training, the policy against the best static policy on validation episodes
    (``TrainConfig.check_every``; 0: off): the per-seed table then reports the training time to beat it."""
    check_episodes: int = 500
    """Validation episodes of each check (``TrainConfig.check_episodes``)."""
    checkpoint: str = "final"
    """Which policy of each trained run the benchmark evaluates: "final" (end of training) or "best" (the best on the
    validation checks, seeds apart from the benchmark's; needs ``check_every``)."""
    workers: int = 1
    """Training runs at once (``run_seeds_benchmark``; worker processes, one torch thread each). Each run is seeded
    on its own, so the results do not depend on it."""
    executor: ExecutorKind = "local"
    """Where the training runs go (``run_seeds_benchmark``): "local" (this process, or ``workers`` processes) or "ray"
    (one Ray task per run, one CPU each: in parallel on a cluster, as many at once as it has CPUs). Same results."""
    ray_address: str | None = None
    """With executor "ray": the cluster to join (None: a local Ray)."""
    agent_dir: str | None = None
    """A trained agent's directory (``fedpeat train`` / an earlier benchmark) to evaluate instead of training one;
    its ``config.json`` gives the algorithm, and ``timesteps``, ``algo``, ``train_seed`` and ``hyperparams`` are
    not used."""

    def __post_init__(self) -> None:
        for name in ("seeds", "episodes_per_seed", "timesteps", "train_seeds", "workers", "check_episodes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for algo in (self.algo, *self.algos):
            if algo not in ALGOS:
                raise ValueError(f"algo must be one of {tuple(ALGOS)}, got {algo!r}")
        if self.check_every < 0:
            raise ValueError(f"check_every must be >= 0 (0: no checks), got {self.check_every}")
        if self.checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {self.checkpoint!r}")
        if self.checkpoint == "best" and not self.check_every and self.agent_dir is None:
            raise ValueError("checkpoint 'best' needs check_every > 0 (the validation checks pick it)")
        ExecutorConfig(self.executor, self.ray_address)  # a known executor, Ray installed for "ray"
        if self.executor == "ray" and self.workers > 1:
            raise ValueError("workers applies to executor 'local' (worker processes); with 'ray' the cluster's CPUs "
                             "decide how many runs train at once")
        EnvConfig.from_kwargs(**self.env_kwargs)  # the env options, before any training writes out_dir
        EnvConfig.from_kwargs(**{**self.env_kwargs, **self.train_env_kwargs})
        if self.agent_dir is not None and not (Path(self.agent_dir) / "config.json").is_file():
            raise ValueError(f"agent_dir must be a trained agent's directory (with config.json), got {self.agent_dir!r}")

    @property
    def algo_list(self) -> tuple[str, ...]:
        return self.algos or (self.algo,)

    def train_config(self, algo: str | None = None, seed: int | None = None, out_dir: str | None = None) -> TrainConfig:
        """An agent's training settings: ``agents/hyperparams/<algo>.yml``, then ``hyperparams``, then ``timesteps``
        (``algo``, ``seed``: default ``algo`` and ``train_seed``; ``out_dir``: default ``out_dir/<algo>``)."""
        algo = algo or self.algo
        return TrainConfig.from_hyperparams(algo, overrides=self.hyperparams,
                                            env_kwargs={**self.env_kwargs, **self.train_env_kwargs},
                                            timesteps=self.timesteps, seed=self.train_seed if seed is None else seed,
                                            out_dir=out_dir or str(Path(self.out_dir) / algo),
                                            check_every=self.check_every, check_episodes=self.check_episodes)

    @property
    def multi_run(self) -> bool:
        """Several training runs (seeds or algorithms): ``run_seeds_benchmark``."""
        return self.train_seeds > 1 or len(self.algo_list) > 1


@dataclass(frozen=True)
class BenchmarkResult:
    agent: str
    """The agent's row in ``table`` (its algorithm)."""
    table: pd.DataFrame
    oracle_margin_pct: float
    """Oracle over the best fixed policy, % of |best fixed| (DESIGN 10a: ≥ 10% means control matters)."""
    agent_beats_best_fixed: bool
    """Agent's 95% CI lies entirely above the best fixed policy's."""
    agent_minus_best_fixed: dict[str, float]
    """``paired_difference`` of the agent's and the best fixed policy's returns: mean, CI low, CI high, episodes."""
    agent_normalised_score: float
    paths: dict[str, Path]
    agent_minus_best_static: dict[str, float] | None = None
    """``paired_difference`` of the agent's and ``best-static``'s returns (None without that baseline)."""
    headroom: dict[str, dict[str, float]] = field(default_factory=dict)
    """{"oracle − best-static", "mpc − best-static"}: paired differences, the room an adaptive controller has (the
    oracle's is an upper bound: it knows the future)."""


def headroom(results: dict[str, pd.DataFrame], over: str = BEST_STATIC) -> dict[str, dict[str, float]]:
    """The paired differences of the oracle and MPC with ``over`` (the best static policy), where both are present."""
    if over not in results:
        return {}
    return {f"{name} − {over}": paired_difference(results[name], results[over]) for name in ("oracle", "mpc")
            if name in results}


def run_benchmark(config: BenchmarkConfig, say: Callable[[str], None] = print, progress: bool = True) -> BenchmarkResult:
    out = Path(config.out_dir)
    if config.agent_dir is None:
        train_config = config.train_config()
        agent_dir = Path(train_config.out_dir)
        say(f"training {config.algo} for {train_config.timesteps} steps → {agent_dir}")
        train(train_config, progress=progress)
        agent = config.algo
    else:
        agent_dir = Path(config.agent_dir)
        agent = json.loads((agent_dir / "config.json").read_text())["algo"]
        say(f"evaluating the trained {agent} agent in {agent_dir}")
    seeds = [EVAL_SEED_OFFSET + s for s in range(config.seeds)]
    episodes = config.episodes_per_seed
    policy = load_policy(agent_dir, checkpoint=config.checkpoint)
    results = {agent: evaluate(policy, env_kwargs=config.env_kwargs, seeds=seeds, episodes_per_seed=episodes)}
    for name in config.baselines:
        say(f"evaluating {name} on {config.seeds} seeds × {episodes} episodes")
        results[name] = evaluate(make_policy(name), env_kwargs=config.env_kwargs, seeds=seeds, episodes_per_seed=episodes)
    from agents.plots import episode_plot

    result = summarise(results, agent, out, agent_dir)
    result.paths["episode_png"] = episode_plot(policy, out / "episode.png", config.env_kwargs, seeds[0],
                                               title=f"{agent}: ε per device and round, seed {seeds[0]} (grey: not selected)")
    return result


def summarise(results: dict[str, pd.DataFrame], agent: str, out: Path, agent_dir: Path | None = None) -> BenchmarkResult:
    """Benchmark table, markdown + CSV + per-episode CSV + plots, and the headline checks."""
    from agents.plots import learning_curve, returns_bar

    out.mkdir(parents=True, exist_ok=True)
    table = benchmark_table(results)
    rows = table.set_index("policy")
    best_name = best_fixed_policy(results)
    margin = oracle_margin(table) if "oracle" in rows.index else float("nan")
    paths = {"markdown": out / "benchmark.md", "csv": out / "benchmark.csv", "episodes": out / "episodes.csv",
             "returns_png": out / "returns.png"}
    table.to_csv(paths["csv"], index=False)
    pd.concat([df.assign(policy=name) for name, df in results.items()]).to_csv(paths["episodes"], index=False)
    paths["markdown"].write_text(to_markdown(table))
    returns_bar(table, paths["returns_png"])
    if agent_dir is not None and (agent_dir / "monitor").is_dir():
        paths["learning_curve_png"] = learning_curve(agent_dir, out / "learning_curve.png")
    result = BenchmarkResult(
        agent=agent,
        table=table,
        oracle_margin_pct=margin,
        agent_beats_best_fixed=bool(rows.loc[agent, "CI low"] > rows.loc[best_name, "CI high"]),
        agent_minus_best_fixed=paired_difference(results[agent], results[best_name]),
        agent_normalised_score=float(rows.loc[agent, "normalised score"]),
        paths=paths,
        agent_minus_best_static=(paired_difference(results[agent], results[BEST_STATIC]) if BEST_STATIC in results
                                 else None),
        headroom=headroom(results),
    )
    summary = {"oracle_margin_pct": margin, "best_fixed": best_name,
               "agent_beats_best_fixed": result.agent_beats_best_fixed,
               "agent_minus_best_fixed": result.agent_minus_best_fixed,
               "agent_minus_best_static": result.agent_minus_best_static, "headroom": result.headroom,
               "agent_normalised_score": result.agent_normalised_score}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result


@dataclass(frozen=True)
class SeedsResult:
    table: pd.DataFrame
    """Per algorithm: runs, IQM of the run scores [bootstrap 95% CI over runs], their mean, the probability of
    improvement over the best fixed policy, the seeds whose paired difference beats it."""
    per_seed: pd.DataFrame
    """Per (algorithm, training seed): mean return, paired difference with the best fixed policy [95% CI], training
    wall time and env steps/s."""
    baselines: pd.DataFrame
    """``benchmark_table`` of the baselines."""
    best_fixed: str
    paths: dict[str, Path]
    headroom: dict[str, dict[str, float]] = field(default_factory=dict)
    """``headroom`` of the baselines: oracle − best-static and mpc − best-static, paired."""


def run_seeds_benchmark(config: BenchmarkConfig, say: Callable[[str], None] = print,
                        progress: bool = True) -> SeedsResult:
    """Train ``config.train_seeds`` agents of every algorithm of ``config.algo_list`` (in ``out_dir/<algo>/seed-<s>``)
    and evaluate them and the baselines on the same episodes. A run (training or evaluation) that finished with the
    same settings is reused, so a killed benchmark resumes where it was. The score of a run is its mean return;
    across runs: IQM with a bootstrap CI and the probability of improvement (rliable, one task)."""
    from agents import probability_of_improvement, runs_summary
    from agents.plots import episode_plot, learning_curves

    out = Path(config.out_dir)
    seeds, episodes = [EVAL_SEED_OFFSET + s for s in range(config.seeds)], config.episodes_per_seed

    def evaluated(path: Path, policy_name: str, make, checkpoint: str | None = None,
                  trained: TrainConfig | None = None) -> pd.DataFrame:
        """``make()``'s episodes, reused from ``path`` when they were computed with the same key (for an agent: its
        checkpoint and training settings, so that a retrained run is evaluated again)."""
        key = {"policy": policy_name, "env_kwargs": config.env_kwargs, "seeds": seeds, "episodes_per_seed": episodes}
        key |= {} if checkpoint is None else {"checkpoint": checkpoint}
        key |= {} if trained is None else {"trained": asdict(trained)}
        return _cached(path, key, lambda: evaluate(make(), env_kwargs=config.env_kwargs, seeds=seeds,
                                                   episodes_per_seed=episodes), say)

    runs = [(algo, seed, config.train_config(algo, seed, str(out / algo / f"seed-{seed}")))
            for algo in config.algo_list for seed in range(config.train_seeds)]
    agent_dirs = _trained_all([train_config for _, _, train_config in runs], config.workers, say, progress,
                              config.executor, config.ray_address)
    baseline_key = {"env_kwargs": config.env_kwargs, "seeds": seeds, "episodes_per_seed": episodes}
    baselines = _baselines_cached(config.baselines, out / "baselines", baseline_key, config.workers, say)
    best_fixed = best_fixed_policy(baselines)
    rows = []
    run_dirs: dict[str, list[Path]] = {}
    for (algo, seed, train_config), agent_dir in zip(runs, agent_dirs):
        run_dirs.setdefault(algo, []).append(agent_dir)
        episodes_df = evaluated(agent_dir / f"evaluation-{config.checkpoint}.csv", str(agent_dir),
                                lambda d=agent_dir: load_policy(d, checkpoint=config.checkpoint), config.checkpoint,
                                train_config)
        diff = paired_difference(episodes_df, baselines[best_fixed])
        metrics = json.loads((agent_dir / "metrics.json").read_text())
        versus_static = {}
        if BEST_STATIC in baselines:
            static = paired_difference(episodes_df, baselines[BEST_STATIC])
            versus_static = {f"− {BEST_STATIC}": static["mean"], "static CI low": static["CI low"],
                             "static CI high": static["CI high"], "beats best static": static["CI low"] > 0}
        rows.append({"algo": algo, "train seed": seed, "mean return": episodes_df["return"].mean(), **versus_static,
                     f"− {best_fixed}": diff["mean"], "diff CI low": diff["CI low"], "diff CI high": diff["CI high"],
                     "beats best fixed": diff["CI low"] > 0, "train time (min)": metrics["wall_time_s"] / 60,
                     "env steps/s": metrics["steps_per_s"],
                     "time to beat best static (min)": (metrics.get("time_to_beat_s") or float("nan")) / 60,
                     "steps to beat best static": metrics.get("steps_to_beat") or float("nan")})
    per_seed = pd.DataFrame(rows)
    best_score = float(baselines[best_fixed]["return"].mean())
    static_score = float(baselines[BEST_STATIC]["return"].mean()) if BEST_STATIC in baselines else None
    table = []
    for algo, group in per_seed.groupby("algo", sort=False):
        summary = runs_summary(group["mean return"])
        row = {"algo": algo, "runs": summary["runs"], "IQM": summary["IQM"], "CI low": summary["CI low"],
               "CI high": summary["CI high"], "mean": summary["mean"]}
        if static_score is not None:
            row |= {"best static return": static_score,
                    "P(improvement) over best static": probability_of_improvement(group["mean return"], [static_score]),
                    "seeds beating best static (paired CI > 0)": int(group["beats best static"].sum())}
        row |= {"best fixed": best_fixed, "best fixed return": best_score,
                "P(improvement)": probability_of_improvement(group["mean return"], [best_score]),
                "seeds beating it (paired CI > 0)": int(group["beats best fixed"].sum())}
        table.append(row)
    table = pd.DataFrame(table).sort_values("IQM", ascending=False, ignore_index=True)
    baseline_table = benchmark_table(baselines)
    lines = {f"best fixed ({best_fixed})": best_score}
    if static_score is not None:
        lines["best static"] = static_score
    if "oracle" in baselines:
        lines["oracle (clairvoyant)"] = float(baselines["oracle"]["return"].mean())
    room = headroom(baselines)
    headroom_table = pd.DataFrame([{"difference": name, "mean": d["mean"], "CI low": d["CI low"],
                                    "CI high": d["CI high"], "episodes": d["episodes"]} for name, d in room.items()])
    paths = {"markdown": out / "seeds.md", "table": out / "seeds.csv", "per_seed": out / "per_seed.csv",
             "baselines": out / "baselines.csv", "headroom": out / "headroom.csv",
             "learning_curves_png": out / "learning_curves.png"}
    out.mkdir(parents=True, exist_ok=True)
    headroom_table.to_csv(paths["headroom"], index=False)
    table.to_csv(paths["table"], index=False)
    per_seed.to_csv(paths["per_seed"], index=False)
    baseline_table.to_csv(paths["baselines"], index=False)
    paths["markdown"].write_text("## Over training seeds\n\n" + to_markdown(table) + "\n\n## Per seed\n\n"
                                 + to_markdown(per_seed) + "\n\n## Baselines\n\n" + to_markdown(baseline_table)
                                 + ("\n\n## Headroom over the best static policy (paired)\n\n" + to_markdown(headroom_table)
                                    if room else "") + "\n")
    learning_curves(run_dirs, paths["learning_curves_png"], lines)
    for algo, dirs in run_dirs.items():
        paths[f"episode_{algo}_png"] = episode_plot(load_policy(dirs[0], checkpoint=config.checkpoint),
                                                    out / f"episode_{algo}.png", config.env_kwargs, seeds[0], title=f"{algo} (training seed 0): ε per device and round, "
                                                                    f"seed {seeds[0]} (grey: not selected)")
    return SeedsResult(table, per_seed, baseline_table, best_fixed, paths, room)


def _finished(train_config: TrainConfig) -> bool:
    """Whether ``train_config.out_dir`` holds a finished run with the same settings."""
    out = Path(train_config.out_dir)
    saved = out / "config.json"  # written last by ``train``: its presence means the run finished
    return saved.is_file() and (out / "model.zip").is_file() and json.loads(saved.read_text()) == asdict(train_config)


def _train_in_worker(train_config: TrainConfig) -> Path:
    from federation.foundation import worker_setup

    worker_setup()
    return train(train_config, progress=False)


def _trained_all(configs: Sequence[TrainConfig], workers: int, say: Callable[[str], None], progress: bool,
                 executor: str = "local", ray_address: str | None = None) -> list[Path]:
    """Every run's directory after training, reusing finished runs with the same settings; the others train as Ray
    tasks (executor "ray"), in ``workers`` worker processes at once (``workers`` > 1), or one after another."""
    todo = []
    for c in configs:
        if _finished(c):
            say(f"reusing the finished run in {c.out_dir}")
        else:
            say(f"training {c.algo} seed {c.seed} for {c.timesteps} steps → {c.out_dir}")
            todo.append(c)
    if executor == "ray" and todo:
        _train_on_ray(todo, ray_address, say)
    elif workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(_train_in_worker, todo):
                say(f"finished {done}")
    else:
        for c in todo:
            train(c, progress=progress)
    return [Path(c.out_dir) for c in configs]


def _train_on_ray(configs: Sequence[TrainConfig], address: str | None, say: Callable[[str], None]) -> None:
    """Train every run as a Ray task of one CPU (joining ``address``, or a local Ray), reporting each as it ends."""
    from federation.ray_executor import connect_ray

    ray = connect_ray(address)
    remote_train = ray.remote(num_cpus=1, max_retries=0)(_train_in_worker)
    pending = [remote_train.remote(c) for c in configs]
    while pending:
        done, pending = ray.wait(pending)
        say(f"finished {ray.get(done[0])}")


def _policy_episodes(policy_name: str, env_kwargs: dict, seeds: list[int], episodes_per_seed: int = 1,
                     env_id: str = "FedPEAT-v1", agent_dir: str | None = None,
                     checkpoint: str = "final") -> pd.DataFrame:
    """``evaluate`` the baseline ``policy_name``, or the agent trained in ``agent_dir`` (its ``checkpoint``)."""
    policy = load_policy(Path(agent_dir), checkpoint=checkpoint) if agent_dir else make_policy(policy_name)
    return evaluate(policy, env_id=env_id, env_kwargs=env_kwargs, seeds=seeds, episodes_per_seed=episodes_per_seed)


def _policy_episodes_in_worker(*args, **kwargs) -> pd.DataFrame:
    """``_policy_episodes`` in a worker process (one torch thread, quiet libraries)."""
    from federation.foundation import worker_setup

    worker_setup()
    return _policy_episodes(*args, **kwargs)


def _baselines_cached(names: Sequence[str], directory: Path, key: dict, workers: int,
                      say: Callable[[str], None]) -> dict[str, pd.DataFrame]:
    """Each baseline's episodes on ``key``'s seeds, reused from ``directory/<name>.csv`` when computed with ``key``
    (``_cached_frame``); the others are evaluated ``workers`` at a time in worker processes (the oracle and greedy
    take ≈ 0.6 and 1 s per episode), each saved as it ends, so a killed benchmark keeps the finished ones."""
    args = (key["env_kwargs"], key["seeds"], key["episodes_per_seed"])
    paths = {name: directory / f"{name}.csv" for name in names}
    keys = {name: {"policy": name, **key} for name in names}
    frames = {}
    for name in names:
        frame = _cached_frame(paths[name], keys[name])
        if frame is not None:
            say(f"reusing {paths[name]}")
            frames[name] = frame
    todo = [name for name in names if name not in frames]
    if workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        say(f"evaluating {', '.join(todo)} ({workers} at a time)")
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {name: pool.submit(_policy_episodes_in_worker, name, *args) for name in todo}
            for name, future in futures.items():
                frames[name] = _saved(paths[name], keys[name], future.result())
    else:
        for name in todo:
            say(f"evaluating {name}")
            frames[name] = _saved(paths[name], keys[name], _policy_episodes(name, *args))
    return {name: frames[name] for name in names}


def _cached_frame(path: Path, key: dict) -> pd.DataFrame | None:
    """The frame in ``path`` if it was computed with ``key`` (stored beside it as JSON by ``_saved``), else None."""
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()) == json.loads(json.dumps(key)):
        return pd.read_csv(path)
    return None


def _saved(path: Path, key: dict, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` written to ``path`` with ``key`` beside it as JSON (after the frame: a killed write leaves no key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    path.with_suffix(".json").write_text(json.dumps(key))
    return frame


def _cached(path: Path, key: dict, compute: Callable[[], pd.DataFrame], say: Callable[[str], None]) -> pd.DataFrame:
    """The frame in ``path`` if it was computed with ``key`` (``_cached_frame``), else ``compute()`` saved there."""
    frame = _cached_frame(path, key)
    if frame is not None:
        say(f"reusing {path}")
        return frame
    say(f"evaluating {key['policy']}")
    return _saved(path, key, compute())
