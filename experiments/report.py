"""Markdown tables of the committed results, generated from the files the commands wrote (``fedpeat report``), so a
number in the docs cannot drift from the run that made it.

| source | written by | tables |
|---|---|---|
| ``fedpeat_env/calibrations/embedded-v3.json`` | ``fedpeat calibrate`` | fitted parameters; errors per condition and domain |
| ``results/sim2real/`` (``sim2real.csv``, ``summary.json``, ``sim2real.png``) | ``fedpeat sim2real``, copied | per policy, both fidelities |
| ``results/claims/claims.csv`` (+ ``command.txt``) | ``fedpeat claims``, copied | one row per claim, the verdict computed from the runs |

``write_reports`` writes them to ``docs/generated/``, where the docs pages include them; a test regenerates them and
compares, so a committed table that no longer matches its result file fails the suite.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from fedpeat_env.surrogate import Calibration

DEFAULT_CALIBRATION = Path(__file__).resolve().parent.parent / "fedpeat_env" / "calibrations" / "embedded-v3.json"
DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "results"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "generated"

CONDITION_NAMES = {"held": "held: the same devices every round", "domains": "domains: random subsets, content skew",
                   "devices": "devices: N = 5 and N = 20", "mixed": "mixed ε within rounds",
                   "rank": "rank: LoRA ranks 2 / 4 / 8", "server": "server: a collaborating server",
                   "fraction": "fraction: random subsets, one domain, IID",
                   "partition": "partition: random subsets, one domain, Dirichlet",
                   "policy": "policy: a policy's engine episodes (sim2real)"}
"""How the calibration's conditions (``fedpeat_env.calibration.CONDITIONS``) read in the tables."""


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def calibration_errors(calibration: Calibration) -> str:
    """Mean absolute % error of the full model's perplexity per condition, one-step and open-loop rollout, on the fit
    and held-out runs; then per domain."""
    fit, heldout = calibration.fit_error.get("fit", {}), calibration.fit_error.get("heldout", {})
    lines = ["| condition | fit runs | one-step | rollout | held-out runs | one-step | rollout |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    conditions = [c for c in CONDITION_NAMES if c in fit.get("by_condition", {}) or c in heldout.get("by_condition", {})]
    for condition in conditions:
        f = fit.get("by_condition", {}).get(condition, {})
        h = heldout.get("by_condition", {}).get(condition, {})
        lines.append(f"| {CONDITION_NAMES[condition]} | {f.get('runs', 0)} | {_pct(f.get('one_step'))} | "
                     f"{_pct(f.get('rollout'))} | {h.get('runs', 0)} | {_pct(h.get('one_step'))} | "
                     f"{_pct(h.get('rollout'))} |")
    runs = calibration.meta
    lines.append(f"| all | {len(runs.get('fit_runs', []))} | {_pct(fit.get('one_step'))} | {_pct(fit.get('rollout'))} | "
                 f"{len(runs.get('heldout_runs', []))} | {_pct(heldout.get('one_step'))} | {_pct(heldout.get('rollout'))} |")
    for domain in calibration.domains:
        f, h = fit.get("by_domain", {}).get(domain, {}), heldout.get("by_domain", {}).get(domain, {})
        lines.append(f"| domain {domain} |  | {_pct(f.get('one_step'))} | {_pct(f.get('rollout'))} |  | "
                     f"{_pct(h.get('one_step'))} | {_pct(h.get('rollout'))} |")
    return "\n".join(lines) + "\n"


def calibration_parameters(calibration: Calibration) -> str:
    """Every fitted parameter with its bounds, flagged (*) where it ended on one."""
    lines = ["| parameter | value | low | high |", "|---|---:|---:|---:|"]
    for name, p in calibration.parameters.items():
        flag = " *" if p["at_bound"] else ""
        lines.append(f"| {name} | {p['value']:.4g}{flag} | {p['low']:.4g} | {p['high']:.4g} |")
    return "\n".join(lines) + "\n"


def sim2real_table(directory: Path) -> str:
    """Per policy: returns and final perplexities on both fidelities, the worst round's perplexity error against its
    tolerance, the ranks; then the summary line."""
    table = pd.read_csv(directory / "sim2real.csv")
    summary = json.loads((directory / "summary.json").read_text())
    lines = ["| policy | return, surrogate | return, engine | final ppl, surrogate | final ppl, engine | "
             "ppl error, worst round (round) | mean over rounds | within | rank (surrogate / engine) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['policy']} | {r['FedPEAT-v1 return']:.2f} | {r['FedPEAT-Engine-v1 return']:.2f} | "
                     f"{r['FedPEAT-v1 final ppl']:.1f} | {r['FedPEAT-Engine-v1 final ppl']:.1f} | "
                     f"{100 * r['ppl error, worst round']:.1f}% ({int(r['worst round'])}) | "
                     f"{100 * r['ppl error, mean']:.1f}% | {'yes' if r['within'] else '**no**'} "
                     f"(≤ {100 * r['tolerance']:.0f}%) | {int(r['FedPEAT-v1 rank'])} / {int(r['FedPEAT-Engine-v1 rank'])} |")
    lines.append("")
    lines.append(f"Kendall τ of the returns over the policies: {summary['kendall_tau']:.2f}; every policy within its "
                 f"tolerance: {'yes' if summary['all_within'] else 'no'}; mean return gap, surrogate − engine: "
                 f"{summary['return_gap']:+.2f}; {len(summary['seeds'])} episodes per policy and fidelity.")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:,.2f}"


def claims_table(directory: Path) -> str:
    """One row per claim of ``claims.csv``: the two sides with their CIs, the verdict and its detail; the command
    that wrote it (``command.txt``) above."""
    table = pd.read_csv(directory / "claims.csv", keep_default_na=False, na_values=[""])
    lines = [f"Written by `{(directory / 'command.txt').read_text().strip()}`.", "",
             "| claim | method | baseline | method | baseline | verdict | detail |", "|---|---|---|---:|---:|---|---|"]
    for _, r in table.iterrows():
        method = _number(r["method value"]) + (f" {r['method CI']}" if isinstance(r["method CI"], str) else "")
        baseline = _number(r["baseline value"]) + (f" {r['baseline CI']}" if isinstance(r["baseline CI"], str) else "")
        lines.append(f"| {r['claim']} | {r['method']} | {r['baseline']} | {method} | {baseline} | {r['verdict']} | "
                     f"{r['detail']} |")
    return "\n".join(lines) + "\n"


def write_reports(calibration_path: Path = DEFAULT_CALIBRATION, results_dir: Path = DEFAULT_RESULTS,
                  out_dir: Path = DEFAULT_OUT) -> list[Path]:
    """Write every generated table (and copy the figures they go with) into ``out_dir``; returns the paths written.
    Raises ``FileNotFoundError`` naming the first missing source file, before anything is written."""
    sim2real_dir = results_dir / "sim2real"
    claims_dir = results_dir / "claims"
    sources = [calibration_path, sim2real_dir / "sim2real.csv", sim2real_dir / "summary.json",
               sim2real_dir / "sim2real.png", claims_dir / "claims.csv", claims_dir / "command.txt"]
    for source in sources:
        if not source.is_file():
            raise FileNotFoundError(f"fedpeat report: {source} is missing (see experiments/report.py for the command "
                                    f"that writes it)")
    calibration = Calibration.load(calibration_path)
    pages = {"calibration_parameters.md": calibration_parameters(calibration),
             "calibration_errors.md": calibration_errors(calibration),
             "sim2real.md": sim2real_table(sim2real_dir), "claims.md": claims_table(claims_dir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in pages.items():
        (out_dir / name).write_text(text)
        written.append(out_dir / name)
    figure = out_dir / "sim2real.png"
    figure.write_bytes((sim2real_dir / "sim2real.png").read_bytes())
    return written + [figure, env_frame(out_dir / "env_frame.png")]


def env_frame(path: Path, seed: int = 0) -> Path:
    """The ``rgb_array`` frame of ``FedPEAT-v1`` after one round of ``best-static``'s family member "share-top2@1"
    (the two largest-share devices that hold ε = 0) on ``seed``: the picture of the docs' first page."""
    import gymnasium as gym
    import matplotlib.pyplot as plt

    from agents.policy import as_fedpeat
    from agents.static import StaticRule

    env = gym.make("FedPEAT-v1", render_mode="rgb_array")
    env.reset(seed=seed)
    levels = StaticRule("share", 2, 1).levels(as_fedpeat(env.unwrapped).dynamics)[0]
    env.step(levels)
    frame = cast(np.ndarray, env.render())  # render_mode "rgb_array"
    env.close()
    plt.imsave(path, frame)
    return path
