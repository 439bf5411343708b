"""Roll out a policy on fixed seeds: one row per episode, with common random numbers across policies."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import pandas as pd

import fedpeat_env  # noqa: F401  (registers the FedPEAT ids)
from agents.policy import Policy, as_fedpeat

TEST_SEED = 10_000
"""The benchmark's test episodes start at this seed (``fedpeat benchmark``, ``evaluate``, ``sim2real``)."""
VALIDATION_SEED = 20_000
"""Validation episodes (training checks, the best-static search) start at this seed, apart from the test seeds."""
COLUMNS = ("seed", "episode", "return", "final_perplexity", "rounds", "total_latency_s", "exchanges",
           "memory_violations", "unavailable", "reached_target")


def run_episode(policy: Policy, env: gym.Env, seed: int | None, trace: list[dict] | None = None) -> dict:
    """One episode from ``env.reset(seed=seed)``; policies with an ``observe(reward, info)`` hook get each step.
    With a ``trace`` list, the episode's start and each round are appended to it (``round_trace``)."""
    obs, info = env.reset(seed=seed)
    policy.reset(env.unwrapped)
    observe = getattr(policy, "observe", None)
    row = {"return": 0.0, "final_perplexity": info["perplexity"], "rounds": 0, "total_latency_s": 0.0, "exchanges": 0,
           "memory_violations": 0, "unavailable": 0, "reached_target": False}
    if trace is not None:
        trace.append(round_trace(env.unwrapped, None, info["perplexity"]))
    done = False
    while not done:
        action = policy.act(obs, env.unwrapped)
        obs, reward, terminated, truncated, info = env.step(action)
        if trace is not None:
            trace.append(round_trace(env.unwrapped, action, info["perplexity"]))
        if observe is not None:
            observe(reward, info)
        row["return"] += float(reward)
        row["rounds"] += 1
        row["total_latency_s"] += info["round_latency_s"]
        row["exchanges"] += info["exchanges"]
        row["memory_violations"] += info["memory_violations"]
        row["unavailable"] += info["unavailable"]
        row["final_perplexity"] = info["perplexity"]
        row["reached_target"] = bool(terminated)
        done = terminated or truncated
    return row


def round_trace(env: gym.Env, action: np.ndarray | None, perplexity: float) -> dict:
    """What a FedPEAT ``env`` (unwrapped) shows after a reset (``action`` None) or a round: the perplexity, per domain
    (``domain_ppl``), and per device the ε and LoRA rank it trained at (NaN / 0 where it did not train); after a
    reset also the data (``share``, ``mix``), the server's share and the training blocks."""
    d = as_fedpeat(env).dynamics
    record = {"perplexity": float(perplexity), "domain_ppl": d.domain_ppl[0].tolist()}
    if action is None:
        return record | {"share": d.share[0].tolist(), "mix": d.mix[0].tolist(), "server_share": d.tables.server_share,
                         "blocks": d.tables.blocks, "eval_weight": d.tables.eval_weight.tolist()}
    n = d.N
    active = d.active[0]
    ranks = np.asarray(d.ranks)[np.asarray(action[n:], dtype=np.int64)] if len(action) > n else np.full(n, d.ranks[-1])
    return record | {"compression": np.where(active, d.eps_table[d.held[0]], np.nan).tolist(),
                     "rank": np.where(active, ranks, 0).astype(int).tolist()}


def evaluate(policy: Policy, env_id: str = "FedPEAT-v1", env_kwargs: dict | None = None, seeds: Sequence[int] = (0,),
             episodes_per_seed: int = 1) -> pd.DataFrame:
    """Episodes of ``policy``: for each seed s, ``env.reset(seed=s)`` then ``episodes_per_seed − 1`` more resets
    without a seed (continuing that seed's generator), so every policy meets the same channels on the same seeds.
    Columns: ``COLUMNS``."""
    if episodes_per_seed < 1:
        raise ValueError(f"episodes_per_seed must be >= 1, got {episodes_per_seed}")
    env = gym.make(env_id, **(env_kwargs or {}))
    rows = []
    try:
        for seed in seeds:
            for episode in range(episodes_per_seed):
                row = run_episode(policy, env, int(seed) if episode == 0 else None)
                rows.append({"seed": int(seed), "episode": episode, **row})
    finally:
        env.close()
    return pd.DataFrame(rows, columns=list(COLUMNS))
