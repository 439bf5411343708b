"""Roll out a policy on fixed seeds: one row per episode, with common random numbers across policies."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import pandas as pd

import fedpeat_env  # noqa: F401  (registers the FedPEAT ids)
from agents.policy import Policy

COLUMNS = ("seed", "episode", "return", "final_perplexity", "rounds", "total_latency_s", "exchanges",
           "memory_violations", "reached_target")


def run_episode(policy: Policy, env: gym.Env, seed: int | None) -> dict:
    """One episode from ``env.reset(seed=seed)``; policies with an ``observe(reward, info)`` hook get each step."""
    obs, info = env.reset(seed=seed)
    policy.reset(env.unwrapped)
    observe = getattr(policy, "observe", None)
    row = {"return": 0.0, "final_perplexity": info["perplexity"], "rounds": 0, "total_latency_s": 0.0, "exchanges": 0,
           "memory_violations": 0, "reached_target": False}
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy.act(obs, env.unwrapped))
        if observe is not None:
            observe(reward, info)
        row["return"] += float(reward)
        row["rounds"] += 1
        row["total_latency_s"] += info["round_latency_s"]
        row["exchanges"] += info["exchanges"]
        row["memory_violations"] += info["memory_violations"]
        row["final_perplexity"] = info["perplexity"]
        row["reached_target"] = bool(terminated)
        done = terminated or truncated
    return row


def evaluate(policy: Policy, env_id: str = "FedPEAT-v0", env_kwargs: dict | None = None, seeds: Sequence[int] = (0,),
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
