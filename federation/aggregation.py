"""Aggregation rules: pure functions on tensor dicts that never mutate their inputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


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


# --- LoRA aggregation (DESIGN §5, §8) -------------------------------------------------------------------------


def lora_pairs(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """Module prefix -> (A key, B key) of a peft-style LoRA state dict, in the order the A keys appear.

    ``transformer.h.0.attn.c_attn.lora_A.weight`` (A: (r, in)) pairs with ``….lora_B.weight`` (B: (out, r)) under
    the prefix ``transformer.h.0.attn.c_attn``. Raises ``ValueError`` for a key that is not a LoRA key, an unpaired
    key, a non-2-D factor or a pair whose ranks disagree.
    """
    if not state:
        raise ValueError("state must hold at least one lora_A / lora_B pair")
    pairs: dict[str, tuple[str, str]] = {}
    for key in state:
        if ".lora_A" not in key and ".lora_B" not in key:
            raise ValueError(f"state key {key!r} is not a LoRA key (expected '.lora_A' or '.lora_B' in the name)")
        if ".lora_A" not in key:
            continue
        prefix, _, suffix = key.partition(".lora_A")
        b_key = f"{prefix}.lora_B{suffix}"
        if b_key not in state:
            raise ValueError(f"state key {key!r} has no partner {b_key!r}")
        a, b = state[key], state[b_key]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"state pair {prefix!r} needs A (r, in) and B (out, r); got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        pairs[prefix] = (key, b_key)
    paired = {k for ab in pairs.values() for k in ab}
    unpaired = sorted(set(state) - paired)
    if unpaired:
        raise ValueError(f"state key {unpaired[0]!r} has no lora_A partner")
    return pairs


def lora_delta(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module prefix -> B·A, shape (out, in), in the factors' dtype (LoRA scaling α/r not applied)."""
    return {prefix: state[b] @ state[a] for prefix, (a, b) in lora_pairs(state).items()}


def _common_pairs(updates: Sequence[dict[str, torch.Tensor]]) -> dict[str, tuple[str, str]]:
    """LoRA pairs shared by every update (same keys, same (out, in) per module; ranks may differ)."""
    if not updates:
        raise ValueError("updates must hold at least one LoRA state dict")
    pairs = lora_pairs(updates[0])
    for i, update in enumerate(updates[1:], start=1):
        if lora_pairs(update) != pairs:
            diff = sorted(set(updates[0]).symmetric_difference(update))
            raise ValueError(f"updates[{i}] has different keys from updates[0]: {diff[:4]}")
        for prefix, (a, b) in pairs.items():
            if (update[b].shape[0], update[a].shape[1]) != (updates[0][b].shape[0], updates[0][a].shape[1]):
                raise ValueError(
                    f"updates[{i}] module {prefix!r} has (out, in) = {(update[b].shape[0], update[a].shape[1])}, "
                    f"expected {(updates[0][b].shape[0], updates[0][a].shape[1])}"
                )
    return pairs


def _pad_factors(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad A (r, in) to (rank, in) and B (out, r) to (out, rank); B·A is unchanged."""
    extra = rank - a.shape[0]
    return torch.cat([a, a.new_zeros(extra, a.shape[1])]), torch.cat([b, b.new_zeros(b.shape[0], extra)], dim=1)


def _padded_modules(
    updates: Sequence[dict[str, torch.Tensor]],
) -> dict[str, tuple[tuple[str, str], list[dict[str, torch.Tensor]]]]:
    """Module prefix -> ((A key, B key), per-update {A key, B key} zero-padded to the module's largest rank)."""
    out = {}
    for prefix, (a, b) in _common_pairs(updates).items():
        rank = max(u[a].shape[0] for u in updates)
        padded = [dict(zip((a, b), _pad_factors(u[a], u[b], rank))) for u in updates]
        out[prefix] = ((a, b), padded)
    return out


def zero_pad_average(
    updates: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Zero-pad every LoRA update to the largest rank (per module) and take the weighted mean of A and B separately.

    The HetLoRA baseline; with equal ranks it is plain ``fedavg`` of the factors. Ranks may differ per update.
    """
    out = {}
    for _, padded in _padded_modules(updates).values():
        out.update(fedavg(padded, weights))
    return out


def hetlora(updates: Sequence[dict[str, torch.Tensor]], exact_rank: int | None = None) -> dict[str, torch.Tensor]:
    """HetLoRA aggregation (Cho et al.): zero-pad to the largest rank, weight by the norm of each update's product.

    Per module, p_k = ‖B_k A_k‖_F / Σ_j ‖B_j A_j‖_F (equal weights if every product is zero), and the padded
    factors are averaged with those weights: A = Σ_k p_k·pad(A_k) (r_max, in), B = Σ_k p_k·pad(B_k) (out, r_max).
    With ``exact_rank``, each module is instead ``lora_exact`` of the products with the weights p_k, at that rank.
    """
    out = {}
    for (a, b), padded in _padded_modules(updates).values():
        norms = [float(torch.linalg.matrix_norm(u[b].double() @ u[a].double())) for u in updates]
        weights = norms if sum(norms) > 0 else [1.0] * len(updates)
        out.update(fedavg(padded, weights) if exact_rank is None else lora_exact(padded, weights, rank=exact_rank))
    return out


def lora_exact(
    updates: Sequence[dict[str, torch.Tensor]], weights: Sequence[float], rank: int | None = None
) -> dict[str, torch.Tensor]:
    """The adapter whose B·A is the weighted mean of the devices' B_k·A_k, re-factorised by (truncated) SVD.

    Per module, U S Vh = Σ_k w_k B_k A_k / Σ_k w_k (float64); B = U[:, :r]·√S[:r] (out, r), A = √S[:r]·Vh[:r]
    (r, in). ``rank=None`` gives r = min(Σ_k r_k, min(out, in)), so the product is exact; an explicit ``rank`` in
    [1, min(out, in)] gives the best rank-r approximation. Assumes a common LoRA scaling α/r across devices (the
    ``alpha_per_rank`` convention). Returns the same keys, in update 0's dtypes.
    """
    pairs = _common_pairs(updates)
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be None or >= 1, got {rank}")
    deltas = [{p: u[b].double() @ u[a].double() for p, (a, b) in pairs.items()} for u in updates]
    mean = fedavg(deltas, weights)
    out = {}
    for prefix, (a, b) in pairs.items():
        full = min(mean[prefix].shape)
        if rank is not None and rank > full:
            raise ValueError(f"rank must be <= min(out, in) = {full} for module {prefix!r}, got {rank}")
        r = min(sum(u[a].shape[0] for u in updates), full) if rank is None else rank
        u_, s, vh = torch.linalg.svd(mean[prefix], full_matrices=False)
        root = s[:r].sqrt()
        out[a] = (root[:, None] * vh[:r]).to(updates[0][a].dtype)
        out[b] = (u_[:, :r] * root).to(updates[0][b].dtype)
    return out


# --- FL-TAC: clustering task adapters (DESIGN §7) -------------------------------------------------------------


def _squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(n, k) squared Euclidean distances, via ‖x‖² − 2x·c + ‖c‖² (no (n, k, d) intermediate)."""
    d2 = (x * x).sum(1)[:, None] - 2.0 * x @ centers.T + (centers * centers).sum(1)[None, :]
    return np.maximum(d2, 0.0)


def _kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: first center uniform, then each next one with probability ∝ D² to the nearest center."""
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = _squared_distances(x, np.stack(centers)).min(1)
        total = d2.sum()
        idx = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=d2 / total)
        centers.append(x[idx])
    return np.stack(centers)


def kmeans_cluster(vectors: torch.Tensor, k: int, seed: int, iters: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding from ``np.random.default_rng(seed)`` (deterministic).

    ``vectors``: (n, d). Returns int64 labels (n,), renumbered 0, 1, … in order of first appearance; a cluster
    that ends up empty (fewer than k distinct vectors) keeps its center and gets no label.
    """
    if vectors.dim() != 2 or len(vectors) == 0:
        raise ValueError(f"vectors must be a non-empty (n, d) tensor, got shape {tuple(vectors.shape)}")
    if not 1 <= k <= len(vectors):
        raise ValueError(f"k must be in [1, n={len(vectors)}], got {k}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    x = vectors.detach().cpu().double().numpy()
    centers = _kmeans_pp_init(x, k, np.random.default_rng(seed))
    labels = np.full(len(x), -1)
    for _ in range(iters):
        new = _squared_distances(x, centers).argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                centers[j] = x[labels == j].mean(0)
    _, first = np.unique(labels, return_index=True)
    renumber = np.zeros(k, dtype=np.int64)
    renumber[labels[np.sort(first)]] = np.arange(len(first))
    return renumber[labels]


def clustering_accuracy(pred_labels: np.ndarray | Sequence[int], true_labels: np.ndarray | Sequence[int]) -> float:
    """Fraction of items whose cluster maps to their true label under the best one-to-one matching (Hungarian).

    Invariant to permutations of the cluster ids; the numbers of clusters and of true labels may differ.
    """
    pred, true = np.asarray(pred_labels).ravel(), np.asarray(true_labels).ravel()
    if len(pred) == 0 or len(pred) != len(true):
        raise ValueError(f"pred_labels and true_labels must be non-empty and equally long, got {len(pred)} and {len(true)}")
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)
    counts = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(counts, (p, t), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(pred))


def fltac(
    updates: Sequence[dict[str, torch.Tensor]], k: int, seed: int
) -> tuple[list[dict[str, torch.Tensor]], np.ndarray]:
    """FL-TAC: flatten each update (keys sorted) to a vector, k-means with K = ``k``, average within each cluster.

    Returns (per-cluster adapters, equal-weight means, indexed by label; labels (n,) from ``kmeans_cluster``).
    All updates need the same keys and shapes.
    """
    if not updates:
        raise ValueError("updates must hold at least one tensor dict")
    keys = sorted(updates[0])
    for i, update in enumerate(updates[1:], start=1):
        if sorted(update) != keys or any(update[key].shape != updates[0][key].shape for key in keys):
            raise ValueError(f"updates[{i}] has different keys or shapes from updates[0]")
    flat = torch.stack([torch.cat([u[key].detach().double().flatten() for key in keys]) for u in updates])
    labels = kmeans_cluster(flat, k, seed)
    clusters = [
        fedavg([u for u, label in zip(updates, labels) if label == c], [1.0] * int((labels == c).sum()))
        for c in range(int(labels.max()) + 1)
    ]
    return clusters, labels
