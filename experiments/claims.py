"""``fedpeat claims``: do the papers' claims reproduce on the embedded model and in the environment?

Every verdict is computed from the runs (never written by hand):

| kind | claims | measure | verdict |
|---|---|---|---|
| engine, zero-shot | ``emulator`` | emulator perplexity at every ε of the env's levels | rises at every step |
| engine, ``compare`` | ``plug-in`` | final full-model perplexity over seeds | plug-in below zero-shot (CI) and closing ≥ half the gap to tuning through the full model |
| engine, ``compare`` | ``fedpft``, ``hetlora``, ``feddat``, ``fltac`` | final full-model perplexity, bootstrap 95% CIs over seeds | ``verdict`` (CIs separate or not) |
| env, ``evaluate`` | ``control`` | episode return on the FedPEAT reward, same channels for every policy | ``paired_verdict`` on the paired difference's 95% CI |

Written as markdown + CSV (one row per claim) and every run (``claims_runs.csv``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from agents import best_fixed as best_fixed_policy
from agents import evaluate, make_policy, paired_difference, to_markdown
from experiments.compare import compare
from experiments.run import MULTI_TASK_DOMAINS, check_devices
from federation.data import PartitionKind
from federation.executors import Executor
from fedpeat_env.reward import RewardWeights

PLUGIN_COMPRESSION = 0.5
"""ε of the plug-in claim's emulator (Offsite-Tuning's and FedOT's)."""
GAP_CLOSED = 0.5
"""'Approaches tuning on the full model': the plug-in closes at least this share of the zero-shot → full-model gap."""
UNLIMITED_MEMORY = {"memory_tiers": (100.0,)}
"""Env options of the control claim's variant in which every device holds any model."""


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    method: str = ""
    """Compare entry claimed to be at least as good (``experiments.compare`` syntax; compare claims only)."""
    baseline: str = ""
    partition: PartitionKind = "iid"
    alpha: float = 0.5
    domains: tuple[str, ...] = ()


CLAIMS = (
    Claim("emulator", "FedPEAT / Offsite-Tuning: emulator perplexity rises with compression (zero-shot, every ε of the "
                      "env's levels)"),
    Claim("plug-in", f"Offsite-Tuning: tuning through an emulator (ε = {PLUGIN_COMPRESSION}) and plugging the adapter "
                     "into the full model beats the full model's zero-shot perplexity and approaches tuning through the "
                     "full model (FedPEAT case 2)",
          "fedpeat", "fedpeat:case=2"),
    Claim("control", "FedPEAT: on its reward, adaptive control beats the best fixed ε, which beats Fed-FT's cost profile"),
    Claim("fedpft", "FedPFT ≥ FedOT at equal sub-model size (25% FFN neurons in 8 middle blocks ≈ ε = 0.5 layer drop)",
          "fedpft:refresh_every=3", "fedot"),
    Claim("hetlora", "HetLoRA sparsity-weighted aggregation ≥ plain zero-padded average (device ranks 2/4/8, local rank "
                     "self-pruning on both sides)",
          "hetlora:ranks=2,4,8", "hetlora:ranks=2,4,8:aggregation=zero-pad"),
    Claim("feddat", "FedDAT ≥ FedAvg of one adapter under Dirichlet α = 0.1 over three domains",
          "feddat", "fedpetuning", partition="dirichlet", alpha=0.1, domains=MULTI_TASK_DOMAINS),
    Claim("fltac", "FL-TAC per-task adapters ≥ one FedAvg adapter on three tasks; k-means recovers the tasks",
          "fltac", "fedpetuning", domains=MULTI_TASK_DOMAINS),
)
CLAIM_KEYS = tuple(c.key for c in CLAIMS)
COMPARE_CLAIMS = ("fedpft", "hetlora", "feddat", "fltac")


@dataclass(frozen=True)
class ClaimSettings:
    """How much each claim runs (``fedpeat claims`` options)."""

    rounds: int = 6
    seeds: int = 3
    """Engine seeds per side of the perplexity claims (>= 2, for a CI)."""
    devices: int = 4
    local_steps: int = 5
    env_seeds: int = 10
    """Env evaluation seeds of the control claim (every policy meets the same channels)."""
    env_episodes: int = 10
    """Episodes per env seed."""
    agent_dir: str | None = None
    """A trained agent (``fedpeat train`` / ``benchmark`` directory) added to the control claim as a second
    adaptive controller."""
    agent_checkpoint: str = "final"
    """Which of the agent's policies: "final" (end of training) or "best" (its best validation check)."""
    static_episodes: int = 500
    """Validation episodes of the best-static search (``agents.static.SEARCH_EPISODES``)."""

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.seeds < 2:
            raise ValueError(f"claims need rounds >= 1 and seeds >= 2 (for a CI), got rounds={self.rounds}, seeds={self.seeds}")
        for name in ("devices", "local_steps", "env_seeds", "env_episodes", "static_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.agent_dir is not None and not (Path(self.agent_dir) / "config.json").is_file():
            raise ValueError(f"agent must be a trained agent's directory (with config.json), got {self.agent_dir!r}")
        if self.agent_dir is not None:
            from agents.train import checked_checkpoint

            checked_checkpoint(self.agent_dir, self.agent_checkpoint)


def verdict(method_ppl: float, method_ci: tuple[float, float], baseline_ppl: float, baseline_ci: tuple[float, float]) -> str:
    """Lower perplexity is better; 'separate' means the two bootstrap 95% CIs do not overlap."""
    if method_ppl <= baseline_ppl:
        return "reproduces (CIs separate)" if method_ci[1] < baseline_ci[0] else "holds in the mean; CIs overlap"
    return "does not reproduce (baseline better, CIs separate)" if baseline_ci[1] < method_ci[0] else \
        "does not reproduce in the mean; CIs overlap"


def paired_verdict(difference: dict[str, float]) -> str:
    """Higher return is better; ``difference`` is ``paired_difference(method, baseline)`` (mean, CI low, CI high)."""
    if difference["mean"] >= 0:
        return "reproduces (paired CI above 0)" if difference["CI low"] > 0 else "holds in the mean; paired CI includes 0"
    return "does not reproduce (paired CI below 0)" if difference["CI high"] < 0 else \
        "does not reproduce in the mean; paired CI includes 0"


def _row(claim: Claim, measure: str, method: str, method_value: float, baseline: str, baseline_value: float,
         verdict_text: str, detail: str = "", method_ci: str = "", baseline_ci: str = "", gain: float = float("nan"),
         **extra) -> dict:
    return {"claim": claim.key, "statement": claim.statement, "measure": measure, "method": method,
            "method value": method_value, "method CI": method_ci, "baseline": baseline, "baseline value": baseline_value,
            "baseline CI": baseline_ci, "gain %": gain, "verdict": verdict_text, "detail": detail, **extra}


def _ci(row: pd.Series) -> str:
    return f"[{row['CI low']:.1f}, {row['CI high']:.1f}]"


def emulator_claim(claim: Claim, settings: ClaimSettings, say: Callable[[str], None],
                   executor: Executor | None = None) -> tuple[list[dict], pd.DataFrame]:
    """Zero-shot perplexity of the layer-drop emulator at every ε of ``EnvConfig().compression_levels`` (ε = 0: the
    full model), on the held-out blocks the engine evaluates."""
    from federation.emulator import build_emulator, layer_drop_spec
    from federation.engine import EngineConfig, RoundRunner
    from federation.methods import FedPEAT
    from federation.training import perplexity
    from fedpeat_env.config import EnvConfig

    say("emulator: zero-shot perplexity at every compression level")
    probe = RoundRunner(EngineConfig(method="fedpeat", num_devices=settings.devices), executor)
    model, layers = probe.method.full_model, probe.server.num_layers
    levels = EnvConfig().compression_levels
    ppl = [perplexity(build_emulator(model, layer_drop_spec(layers, FedPEAT().config.num_adapter_layers, eps)),
                      probe.data.eval_blocks) for eps in levels]
    probe.close()
    falls = [(a, b, p, q) for (a, p), (b, q) in zip(zip(levels, ppl), zip(levels[1:], ppl[1:])) if q <= p]
    text = "reproduces (rises at every step)" if not falls else \
        "does not reproduce: " + "; ".join(f"ε {a:g} → {b:g}: {p:.1f} → {q:.1f}" for a, b, p, q in falls)
    detail = "ε " + "/".join(f"{e:g}" for e in levels) + ": " + " / ".join(f"{p:.1f}" for p in ppl)
    runs = pd.DataFrame({"claim": claim.key, "method": [f"emulator ε={e:g}" for e in levels], "ε": levels,
                         "zero-shot perplexity": ppl})
    return [_row(claim, "zero-shot ppl", f"emulator ε={levels[-1]:g}", ppl[-1], "full model (ε=0)", ppl[0], text,
                 detail)], runs


def plugin_claim(claim: Claim, settings: ClaimSettings, say: Callable[[str], None],
                 executor: Executor | None = None) -> tuple[list[dict], pd.DataFrame]:
    """FedPEAT through the ε = ``PLUGIN_COMPRESSION`` emulator (plug-in) vs through the full model (case 2) vs the
    zero-shot full model, on the same seeds and data."""
    runs, summary = compare([claim.method, claim.baseline], settings.rounds, list(range(settings.seeds)),
                            settings.devices, settings.local_steps, compression=PLUGIN_COMPRESSION, say=say,
                            executor=executor)
    by = summary.set_index("method")
    m, b = by.loc[claim.method], by.loc[claim.baseline]
    zero_shot = float(runs["initial perplexity"].mean())
    closed = (zero_shot - m["final perplexity"]) / (zero_shot - b["final perplexity"])
    beats = m["CI high"] < zero_shot
    if beats and closed >= GAP_CLOSED:
        text = f"reproduces (below zero-shot; closes {100 * closed:.0f}% of the gap to full-model tuning)"
    elif beats:
        text = f"partly: below zero-shot but closes only {100 * closed:.0f}% of the gap (< {100 * GAP_CLOSED:.0f}%)"
    else:
        text = "does not reproduce (plug-in not below zero-shot)"
    detail = f"zero-shot {zero_shot:.1f}; gap closed {100 * closed:.0f}%"
    row = _row(claim, "final ppl", f"fedpeat ε={PLUGIN_COMPRESSION:g} (plug-in)", m["final perplexity"],
               "fedpeat case 2 (full model)", b["final perplexity"], text, detail, _ci(m), _ci(b),
               100.0 * (b["final perplexity"] - m["final perplexity"]) / b["final perplexity"])
    return [row], runs.assign(claim=claim.key)


def compare_claim(claim: Claim, settings: ClaimSettings, say: Callable[[str], None],
                  executor: Executor | None = None) -> tuple[list[dict], pd.DataFrame]:
    """Method vs baseline on the same seeds and data: final full-model perplexity with bootstrap 95% CIs."""
    runs, summary = compare([claim.method, claim.baseline], settings.rounds, list(range(settings.seeds)),
                            settings.devices, settings.local_steps, partition=claim.partition, alpha=claim.alpha,
                            domains=claim.domains, say=say, executor=executor)
    by = summary.set_index("method")
    m, b = by.loc[claim.method], by.loc[claim.baseline]
    data = claim.partition + (f" α={claim.alpha}" if claim.partition == "dirichlet" else "") + \
        f", {'+'.join(claim.domains) or 'pydocs'}"
    extra, detail = {}, data
    if "clustering_accuracy" in by.columns:
        extra["clustering accuracy"] = float(m["clustering_accuracy"])
        detail += f"; clustering accuracy {extra['clustering accuracy']:.2f}"
    if "pruned_devices" in by.columns:
        detail += f"; devices that pruned their rank: {m['pruned_devices']:.1f} vs {b['pruned_devices']:.1f} (mean)"
    text = verdict(m["final perplexity"], (m["CI low"], m["CI high"]), b["final perplexity"], (b["CI low"], b["CI high"]))
    row = _row(claim, "final ppl", claim.method, m["final perplexity"], claim.baseline, b["final perplexity"], text, detail,
               _ci(m), _ci(b), 100.0 * (b["final perplexity"] - m["final perplexity"]) / b["final perplexity"], **extra)
    return [row], runs.assign(claim=claim.key)


def control_claim(claim: Claim, settings: ClaimSettings, say: Callable[[str], None],
                  executor: Executor | None = None) -> tuple[list[dict], pd.DataFrame]:
    """On ``FedPEAT-v1`` (the benchmark scenario, evaluation seeds of ``fedpeat benchmark``): the honest adaptive
    controllers (``mpc``, which plans on sampled futures; the agent in ``settings.agent_dir``) against the best
    static policy (searched on validation episodes) and the best fixed ε; the clairvoyant greedy controller as an
    upper bound, labelled so; the best fixed ε vs Fed-FT's cost profile (``trainable="all"``, every device on the full
    model), on the same devices and again with unlimited device memory. Fed-FT learns like the adapter at ε = 0 here:
    the comparison is of costs only. With an agent, the verdict agent vs best-static vs fixed-1 is recomputed with
    each reward weight at × 0.5 and × 2 (``sensitivity_row``). It runs the surrogate env: no clients, so ``executor``
    is not used."""
    from agents.train import load_policy
    from experiments.benchmark import BEST_STATIC, EVAL_SEED_OFFSET
    from fedpeat_env.config import EnvConfig

    seeds = [EVAL_SEED_OFFSET + s for s in range(settings.env_seeds)]
    fed_ft = {"trainable": "all", "compression_levels": (0.0,)}
    episodes: list[pd.DataFrame] = []

    def run(policy_name: str, scenario: str, env_kwargs: dict, policy=None) -> pd.DataFrame:
        say(f"control: {policy_name} ({scenario}) on {len(seeds)} seeds × {settings.env_episodes} episodes")
        options = {"episodes": settings.static_episodes} if policy_name == BEST_STATIC else {}
        df = evaluate(policy or make_policy(policy_name, **options), env_kwargs=env_kwargs, seeds=seeds,
                      episodes_per_seed=settings.env_episodes)
        episodes.append(df.assign(claim=claim.key, method=policy_name, scenario=scenario))
        return df

    def best_fixed(scenario: str, env_kwargs: dict) -> tuple[str, pd.DataFrame]:
        levels = len(EnvConfig.from_kwargs(**env_kwargs).compression_levels)
        fixed = {f"fixed-{k}": run(f"fixed-{k}", scenario, env_kwargs) for k in range(1, levels + 1)}
        name = best_fixed_policy(fixed)
        return name, fixed[name]

    def compared(method: str, m: pd.DataFrame, baseline: str, b: pd.DataFrame, scenario: str) -> dict:
        diff = paired_difference(m, b)
        ci = {name: _mean_ci(df["return"]) for name, df in ((method, m), (baseline, b))}
        detail = (f"{scenario}; paired difference {diff['mean']:+.2f} [{diff['CI low']:+.2f}, {diff['CI high']:+.2f}] over "
                  f"{int(diff['episodes'])} episodes; final ppl {m['final_perplexity'].mean():.0f} vs "
                  f"{b['final_perplexity'].mean():.0f}; latency {m['total_latency_s'].mean():.0f} s vs "
                  f"{b['total_latency_s'].mean():.0f} s")
        return _row(claim, "episode return", method, float(m["return"].mean()), baseline, float(b["return"].mean()),
                    paired_verdict(diff), detail, ci[method], ci[baseline],
                    100.0 * (m["return"].mean() - b["return"].mean()) / abs(b["return"].mean()))

    scenario = "benchmark scenario"
    fixed_name, fixed = best_fixed(scenario, {})
    static, mpc = run(BEST_STATIC, scenario, {}), run("mpc", scenario, {})
    rows = [compared("mpc", mpc, BEST_STATIC, static, scenario), compared("mpc", mpc, fixed_name, fixed, scenario)]
    if settings.agent_dir is not None:
        algo = json.loads((Path(settings.agent_dir) / "config.json").read_text())["algo"]
        policy = load_policy(settings.agent_dir, checkpoint=settings.agent_checkpoint)
        agent = run(algo, scenario, {}, policy)
        rows += [compared(f"{algo} agent", agent, BEST_STATIC, static, scenario),
                 compared(f"{algo} agent", agent, fixed_name, fixed, scenario)]
        frames = {}
        for name, factor in WEIGHT_SETTINGS:  # the verdict under each reward weight × 0.5 and × 2
            label, kwargs = f"reward {name} × {factor:g}", {"reward": {name: getattr(RewardWeights(), name) * factor}}
            frames[name, factor] = {"agent": run(algo, label, kwargs, policy), BEST_STATIC: run(BEST_STATIC, label, kwargs),
                                    "fixed-1": run("fixed-1", label, kwargs)}
        rows.append(sensitivity_row(claim, f"{algo} agent", frames))
    rows.append(compared(f"greedy ({UPPER_BOUND})", run("greedy", scenario, {}), BEST_STATIC, static, scenario))
    rows.append(compared(fixed_name, fixed, "fed-ft", run("full-model", "Fed-FT", fed_ft), scenario))
    big_name, big = best_fixed("unlimited memory", UNLIMITED_MEMORY)
    fed_ft_big = run("full-model", "Fed-FT, unlimited memory", {**fed_ft, **UNLIMITED_MEMORY})
    rows.append(compared(big_name, big, "fed-ft", fed_ft_big, "unlimited device memory"))
    return rows, pd.concat(episodes, ignore_index=True)


UPPER_BOUND = "clairvoyant: an upper bound"
"""How the control claim labels a controller that reads the realised future."""
WEIGHT_SETTINGS = tuple((f.name, factor) for f in fields(RewardWeights) for factor in (0.5, 2.0))
"""The control claim's reward-weight sensitivity: every weight at × 0.5 and × 2."""


def sensitivity_row(claim: Claim, agent_name: str, frames: dict[tuple[str, float], dict[str, pd.DataFrame]]) -> dict:
    """One claims row from the agent's, best-static's and fixed-1's episodes under each reward setting
    (``WEIGHT_SETTINGS``; the agent as trained, best-static searched again for each reward): in how many settings the
    ranking agent > best-static > fixed-1 (mean returns) holds and the agent's paired CI lies above best-static, and
    the settings where either fails."""
    held = beat = 0
    failures = []
    for (name, factor), by in frames.items():
        means = {label: float(df["return"].mean()) for label, df in by.items()}
        diff = paired_difference(by["agent"], by["best-static"])
        ranked = means["agent"] > means["best-static"] > means["fixed-1"]
        held, beat = held + ranked, beat + (diff["CI low"] > 0)
        if not ranked or diff["CI low"] <= 0:
            failures.append(f"{name} × {factor:g} ({means['agent']:.2f} / {means['best-static']:.2f} / "
                            f"{means['fixed-1']:.2f}; paired {diff['mean']:+.2f} [{diff['CI low']:+.2f}, "
                            f"{diff['CI high']:+.2f}])")
    verdict = (f"ranking agent > best-static > fixed-1 holds in {held} of {len(frames)} settings; the agent's paired CI "
               f"lies above best-static in {beat} of {len(frames)}")
    detail = "each reward weight × 0.5 and × 2; the agent as trained, best-static searched again for each reward"
    if failures:
        detail += "; not in: " + "; ".join(failures)
    return _row(claim, "settings", f"{agent_name}, reward weights × 0.5 / × 2", float(held), "settings",
                float(len(frames)), verdict, detail)


def _mean_ci(x: pd.Series) -> str:
    from agents.stats import bootstrap_ci

    low, high = bootstrap_ci(x.to_numpy())
    return f"[{low:.2f}, {high:.2f}]"


RUNNERS = {"emulator": emulator_claim, "plug-in": plugin_claim, "control": control_claim,
           **{key: compare_claim for key in COMPARE_CLAIMS}}


def check_claims(settings: ClaimSettings, only: Sequence[str] = ()) -> None:
    """``ValueError`` for an unknown claim key, or for more devices than a chosen claim's data can be split into
    (``check_devices``: the tokenizer only), before any run."""
    unknown = [k for k in only if k not in CLAIM_KEYS]
    if unknown:
        raise ValueError(f"claim must be one of {CLAIM_KEYS}, got {unknown}")
    for domains in dict.fromkeys(c.domains or ("pydocs",) for c in CLAIMS if not only or c.key in only):
        check_devices(settings.devices, domains)


def run_claims(settings: ClaimSettings = ClaimSettings(), only: Sequence[str] = (),
               say: Callable[[str], None] = print, executor: Executor | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per claim comparison with the verdict, every run). ``only`` picks claims by key (default: all).
    ``executor`` runs the clients of the engine runs (default: in this process; the control claim runs none)."""
    check_claims(settings, only)
    rows, all_runs = [], []
    for claim in (c for c in CLAIMS if not only or c.key in only):
        claim_rows, runs = RUNNERS[claim.key](claim, settings, say, executor)
        rows.extend(claim_rows)
        all_runs.append(runs)
    table = pd.DataFrame(rows)
    table["gain %"] = table["gain %"].astype(float).replace([np.inf, -np.inf], np.nan)
    return table, pd.concat(all_runs, ignore_index=True)


def write_claims(table: pd.DataFrame, runs: pd.DataFrame, out_dir: Path, settings: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "claims.md", out_dir / "claims.csv", out_dir / "claims_runs.csv", out_dir / "command.txt"]
    paths[0].write_text(f"# Papers' claims on the embedded model\n\n{settings}\n\n" + to_markdown(table, digits=2))
    table.to_csv(paths[1], index=False)
    runs.to_csv(paths[2], index=False)
    paths[3].write_text(settings.strip("`") + "\n")  # the command, for `fedpeat report`
    return paths
