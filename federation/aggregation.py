"""Aggregation rules: pure functions on tensor dicts that never mutate their inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def fedavg(updates: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted mean per key: Σ_k w_k·u_k[key] / Σ_k w_k (computed in float64, returned in each key's dtype).

    Raises ``ValueError`` when there are no updates, the counts differ, keys or shapes mismatch, a weight is
    negative, or the total weight is not positive.
    """
    if not updates:
        raise ValueError("fedavg needs at least one update")
    if len(updates) != len(weights):
        raise ValueError(f"got {len(updates)} updates but {len(weights)} weights")
    w = torch.as_tensor([float(x) for x in weights], dtype=torch.float64)
    if (w < 0).any() or not torch.isfinite(w).all():
        raise ValueError(f"weights must be finite and non-negative, got {list(weights)}")
    total = w.sum()
    if not total > 0:
        raise ValueError(f"total weight must be positive, got {float(total)}")
    keys = set(updates[0])
    for i, update in enumerate(updates[1:], start=1):
        if set(update) != keys:
            diff = sorted(keys.symmetric_difference(update))
            raise ValueError(f"update {i} has different keys from update 0: {diff[:4]}")
    out = {}
    for key in updates[0]:
        shape = updates[0][key].shape
        for i, update in enumerate(updates):
            if update[key].shape != shape:
                raise ValueError(f"update {i} key {key!r} has shape {tuple(update[key].shape)}, expected {tuple(shape)}")
        acc = sum(wk * u[key].to(torch.float64) for wk, u in zip(w, updates))
        out[key] = (acc / total).to(updates[0][key].dtype)
    return out
