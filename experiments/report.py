"""Markdown tables of the committed results, generated from the files the commands wrote (``fedpeat report``), so a
number in the docs cannot drift from the run that made it.

| source | written by | tables |
|---|---|---|
| ``fedpeat_env/calibrations/embedded-v3.json`` | ``fedpeat calibrate`` | fitted parameters; errors per condition and domain |
| ``results/sim2real/`` (``sim2real.csv``, ``summary.json``, ``sim2real.png``) | ``fedpeat sim2real``, copied | per policy, both fidelities |
| ``results/claims/claims.md`` | ``fedpeat claims``, copied | one row per claim, the verdict computed from the runs |
| a seeds benchmark's directory (``seeds.csv``, ``per_seed.csv``, ``baselines.csv``, ``headroom.csv``, ``command.txt``) | ``fedpeat benchmark --train-seeds`` | ``benchmark_tables``, ``headline`` |

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
DEFAULT_README = Path(__file__).resolve().parent.parent / "README.md"

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
             "ppl error, worst round (round) | mean over rounds | within | rank (surrogate / engine) | "
             "engine episodes in the fit |", "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['policy']} | {r['FedPEAT-v1 return']:.2f} | {r['FedPEAT-Engine-v1 return']:.2f} | "
                     f"{r['FedPEAT-v1 final ppl']:.1f} | {r['FedPEAT-Engine-v1 final ppl']:.1f} | "
                     f"{100 * r['ppl error, worst round']:.1f}% ({int(r['worst round'])}) | "
                     f"{100 * r['ppl error, mean']:.1f}% | {'yes' if r['within'] else '**no**'} "
                     f"(≤ {100 * r['tolerance']:.0f}%) | {int(r['FedPEAT-v1 rank'])} / {int(r['FedPEAT-Engine-v1 rank'])} | "
                     f"{int(r['in the fit'])} |")
    lines.append("")
    lines.append(f"Kendall τ of the returns over the policies: {summary['kendall_tau']:.2f}; every policy within its "
                 f"tolerance: {'yes' if summary['all_within'] else 'no'}; mean return gap, surrogate − engine: "
                 f"{summary['return_gap']:+.2f}; {len(summary['seeds'])} episodes per policy and fidelity.")
    return "\n".join(lines) + "\n"


def claims_table(directory: Path) -> str:
    """The claims as ``fedpeat claims`` wrote them (``claims.md``: its command line, then one row per claim), without
    the long statement column; the command line above the table."""
    lines = (directory / "claims.md").read_text().splitlines()
    command = next(line for line in lines if line.startswith("`fedpeat claims"))
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    header, body = rows[0], rows[2:]
    keep = [i for i, name in enumerate(header) if name not in ("statement", "measure", "clustering accuracy")]
    out = [f"Written by {command}.", "", "| " + " | ".join(header[i] for i in keep) + " |",
           "|" + "|".join("---" for _ in keep) + "|"]
    out += ["| " + " | ".join(row[i] for i in keep) + " |" for row in body]
    return "\n".join(out) + "\n"


def _ci(low: float, high: float, signed: bool = False) -> str:
    return f"[{low:+.2f}, {high:+.2f}]" if signed else f"[{low:.2f}, {high:.2f}]"


def benchmark_tables(directory: Path) -> dict[str, str]:
    """The seeds benchmark's tables: over training seeds (IQM, CI, probability of improvement, seeds beating
    best-static), per seed (paired differences, training time), the baselines, and the headroom."""
    seeds, per_seed = pd.read_csv(directory / "seeds.csv"), pd.read_csv(directory / "per_seed.csv")
    baselines, room = pd.read_csv(directory / "baselines.csv"), pd.read_csv(directory / "headroom.csv")
    command = f"Written by `{(directory / 'command.txt').read_text().strip()}`.\n\n"
    over = ["| algo | runs | IQM [95% CI] | mean | P(improvement) over best-static | seeds beating best-static "
            "(paired CI > 0) | seeds beating the best fixed |", "|---|---:|---|---:|---:|---:|---:|"]
    for _, r in seeds.iterrows():
        over.append(f"| {r['algo']} | {r['runs']} | {r['IQM']:.2f} {_ci(r['CI low'], r['CI high'])} | {r['mean']:.2f} | "
                    f"{r['P(improvement) over best static']:.2f} | {r['seeds beating best static (paired CI > 0)']} of "
                    f"{r['runs']} | {r['seeds beating it (paired CI > 0)']} of {r['runs']} ({r['best fixed']}) |")
    fixed = [c for c in per_seed.columns if c.startswith("− fixed-") or c.startswith("− full-model")][0]
    runs = [f"| algo | seed | mean return | − best-static [95% CI] | {fixed} [95% CI] | train time (min) | env steps/s |",
            "|---|---:|---:|---|---|---:|---:|"]
    for _, r in per_seed.iterrows():
        runs.append(f"| {r['algo']} | {r['train seed']} | {r['mean return']:.2f} | {r['− best-static']:+.2f} "
                    f"{_ci(r['static CI low'], r['static CI high'], True)} | {r[fixed]:+.2f} "
                    f"{_ci(r['diff CI low'], r['diff CI high'], True)} | {r['train time (min)']:.2f} | "
                    f"{r['env steps/s']:,.0f} |")
    base = ["| policy | knows the future | mean return [95% CI] | IQM | final ppl | latency (s) | exchanges | "
            "violations | normalised score |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for _, r in baselines.iterrows():
        base.append(f"| {r['policy']} | {r['knows the future']} | {r['mean return']:.2f} {_ci(r['CI low'], r['CI high'])} | "
                    f"{r['IQM']:.2f} | {r['final perplexity']:.1f} | {r['total latency (s)']:,.0f} | "
                    f"{r['exchanges']:.1f} | {r['memory violations']:.2f} | {r['normalised score']:.3f} |")
    head = ["| paired difference | mean [95% CI] | episodes |", "|---|---|---:|"]
    for _, r in room.iterrows():
        head.append(f"| {r['difference']} | {r['mean']:+.2f} {_ci(r['CI low'], r['CI high'], True)} | {r['episodes']:.0f} |")
    return {"benchmark_seeds.md": command + "\n".join(over) + "\n", "benchmark_per_seed.md": "\n".join(runs) + "\n",
            "benchmark_baselines.md": "\n".join(base) + "\n", "benchmark_headroom.md": "\n".join(head) + "\n"}


def headline(directory: Path) -> str:
    """The README's results block: the learned controller over seeds and every baseline, one table."""
    seeds, baselines = pd.read_csv(directory / "seeds.csv"), pd.read_csv(directory / "baselines.csv")
    command = (directory / "command.txt").read_text().strip()
    lines = ["| policy | mean return [95% CI] | final ppl | latency (s) | knows the future |", "|---|---|---:|---:|---|"]
    rows = [(r["mean"], f"| **{r['algo']}** ({r['runs']} training seeds: IQM {r['IQM']:.2f} "
                        f"{_ci(r['CI low'], r['CI high'])}, mean over runs) | {r['mean']:.2f} | | | no |")
            for _, r in seeds.iterrows()]
    rows += [(r["mean return"], f"| {r['policy']} | {r['mean return']:.2f} {_ci(r['CI low'], r['CI high'])} | "
                                f"{r['final perplexity']:.1f} | {r['total latency (s)']:,.0f} | {r['knows the future']} |")
             for _, r in baselines.iterrows()]
    lines += [line for _, line in sorted(rows, key=lambda pair: -pair[0])]
    first = seeds.iloc[0]
    lines += ["", f"{first['algo']} beats the best static policy (paired 95% CI > 0) on "
                  f"{first['seeds beating best static (paired CI > 0)']} of {first['runs']} training seeds. "
                  f"`{command}`; per seed, headroom and what the baselines are: [docs/agents.md](docs/agents.md)."]
    return "\n".join(lines) + "\n"


def sim2real_headline(directory: Path) -> str:
    """The README's results block while the controller benchmark on FedPEAT-v1 is pending: every policy's return on
    the surrogate and on real engine rounds (sim2real), best first on the engine."""
    table = pd.read_csv(directory / "sim2real.csv").sort_values("FedPEAT-Engine-v1 return", ascending=False)
    summary = json.loads((directory / "summary.json").read_text())
    lines = ["| policy | return on real engine rounds | on the surrogate | final ppl, engine | surrogate ppl error, "
             "worst round |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['policy']} | {r['FedPEAT-Engine-v1 return']:.2f} | {r['FedPEAT-v1 return']:.2f} | "
              f"{r['FedPEAT-Engine-v1 final ppl']:.1f} | {100 * r['ppl error, worst round']:.1f}% |"
              for _, r in table.iterrows()]
    lines += ["", f"{len(summary['seeds'])} episodes per policy of `FedPEAT-v1` (seeds {summary['seeds'][0]}–"
                  f"{summary['seeds'][-1]}), the same seeds on both fidelities; Kendall τ between the fidelities' "
                  f"rankings {summary['kendall_tau']:.2f}. From `fedpeat sim2real` "
                  f"([docs/calibration.md](docs/calibration.md#sim-to-real-the-surrogate-where-the-policies-go))."]
    return "\n".join(lines) + "\n"


README_BLOCK = ("<!-- report:headline -->\n", "<!-- /report:headline -->")
"""The markers between which ``write_reports`` puts ``headline`` in the README."""


def readme_with_headline(readme: str, block: str) -> str:
    """``readme`` with the text between ``README_BLOCK``'s markers replaced by ``block``."""
    start, end = README_BLOCK
    if start not in readme or end not in readme:
        raise ValueError(f"README has no {start.strip()} … {end} block")
    head, rest = readme.split(start, 1)
    return head + start + block + end + rest.split(end, 1)[1]


def write_reports(calibration_path: Path = DEFAULT_CALIBRATION, results_dir: Path = DEFAULT_RESULTS,
                  out_dir: Path = DEFAULT_OUT, readme: Path | None = None) -> list[Path]:
    """Write every generated table (and copy the figures they go with) into ``out_dir``, and the headline block of
    ``readme`` (None: no README); returns the paths written. Raises ``FileNotFoundError`` naming the first missing
    source file, before anything is written."""
    sim2real_dir = results_dir / "sim2real"
    claims_dir = results_dir / "claims"
    sources = [calibration_path, sim2real_dir / "sim2real.csv", sim2real_dir / "summary.json",
               sim2real_dir / "sim2real.png", claims_dir / "claims.md"]
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
    figures = [(sim2real_dir / "sim2real.png", out_dir / "sim2real.png")]
    for source, target in figures:
        target.write_bytes(source.read_bytes())
    if readme is not None:
        readme.write_text(readme_with_headline(readme.read_text(), sim2real_headline(sim2real_dir)))
        written.append(readme)
    return written + [target for _, target in figures] + [env_frame(out_dir / "env_frame.png")]


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
