"""Agents and benchmarks for the FedPEAT envs.

| module | contents |
|--------|----------|
| ``agents.policy`` | ``Policy`` protocol, ``SB3Policy`` adapter, ``action_choices`` |
| ``agents.baselines`` | ``FixedPolicy``, ``RandomPolicy``, ``UCBPolicy``, ``make_policy`` registry |
| ``agents.search`` | ``GreedyPolicy``, ``OraclePolicy`` (look-ahead on deep copies of the env) |
| ``agents.train`` | ``TrainConfig``, ``train``, ``load_policy`` (SB3 PPO / A2C, sb3-contrib MaskablePPO) |
| ``agents.checkpoint`` | training checkpoints and resuming from the last one (``train(..., resume=True)``) |
| ``agents.evaluate`` | ``evaluate``: one row per episode, common random numbers across policies |
| ``agents.stats`` | ``iqm``, ``bootstrap_ci``, ``paired_difference``, ``normalised_score``, ``benchmark_table``, ``oracle_margin``, ``to_markdown`` |
| ``agents.plots`` | ``learning_curve``, ``returns_bar`` |

``train``, ``checkpoint`` and ``plots`` are not imported here (they load SB3 / matplotlib).
"""

from agents.baselines import POLICY_NAMES, FixedPolicy, RandomPolicy, UCBPolicy, make_policy
from agents.evaluate import evaluate
from agents.policy import Policy, SB3Policy, action_choices
from agents.search import GreedyPolicy, OraclePolicy
from agents.stats import (
    benchmark_table,
    best_fixed,
    bootstrap_ci,
    iqm,
    normalised_score,
    oracle_margin,
    paired_difference,
    probability_of_improvement,
    runs_summary,
    to_markdown,
)

__all__ = [
    "POLICY_NAMES", "FixedPolicy", "GreedyPolicy", "OraclePolicy", "Policy", "RandomPolicy", "SB3Policy",
    "UCBPolicy", "action_choices", "benchmark_table", "best_fixed", "bootstrap_ci", "evaluate", "iqm", "make_policy",
    "normalised_score", "oracle_margin", "paired_difference", "probability_of_improvement", "runs_summary",
    "to_markdown",
]
