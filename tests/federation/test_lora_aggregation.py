import numpy as np
import pytest
import torch

from federation.aggregation import (
    clustering_accuracy,
    fedavg,
    fltac,
    hetlora,
    kmeans_cluster,
    lora_delta,
    lora_exact,
    lora_pairs,
    zero_pad_average,
)

A0, B0 = "transformer.h.0.attn.c_attn.lora_A.weight", "transformer.h.0.attn.c_attn.lora_B.weight"
A1, B1 = "transformer.h.2.attn.c_attn.lora_A.weight", "transformer.h.2.attn.c_attn.lora_B.weight"
P0, P1 = "transformer.h.0.attn.c_attn", "transformer.h.2.attn.c_attn"


def _lora(rank: int, seed: int, out: int = 12, inp: int = 10) -> dict[str, torch.Tensor]:
    """Two-module LoRA state, A (r, in), B (out, r), random N(0, 1) entries."""
    g = torch.Generator().manual_seed(seed)
    return {
        A0: torch.randn(rank, inp, generator=g),
        B0: torch.randn(out, rank, generator=g),
        A1: torch.randn(rank, inp, generator=g),
        B1: torch.randn(out, rank, generator=g),
    }


def _pad(t: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = rank - t.shape[dim]
    return torch.cat([t, torch.zeros(shape)], dim=dim)


def _snapshot(updates):
    return [{k: v.clone() for k, v in u.items()} for u in updates]


def _assert_unchanged(updates, before):
    for u, b in zip(updates, before):
        assert u.keys() == b.keys() and all(torch.equal(u[k], b[k]) for k in u)


# --- lora_pairs / lora_delta ------------------------------------------------------------------------------------


def test_lora_pairs_maps_prefix_to_keys_and_delta_is_product():
    state = _lora(3, 0)
    assert lora_pairs(state) == {P0: (A0, B0), P1: (A1, B1)}
    delta = lora_delta(state)
    assert set(delta) == {P0, P1}
    torch.testing.assert_close(delta[P0], state[B0] @ state[A0])
    assert delta[P1].shape == (12, 10)


@pytest.mark.parametrize(
    "state, match",
    [
        ({}, "state must hold"),
        ({A0: torch.zeros(2, 3)}, "has no partner"),
        ({B0: torch.zeros(3, 2)}, "has no lora_A partner"),
        ({A0: torch.zeros(2, 3), B0: torch.zeros(4, 2), "lm_head.weight": torch.zeros(2)}, "not a LoRA key"),
        ({A0: torch.zeros(2, 3), B0: torch.zeros(4, 3)}, "state pair"),
        ({A0: torch.zeros(2), B0: torch.zeros(4, 2)}, "state pair"),
    ],
)
def test_lora_pairs_errors(state, match):
    with pytest.raises(ValueError, match=match):
        lora_pairs(state)


# --- HetLoRA and zero-pad average -------------------------------------------------------------------------------


def test_hetlora_hand_computed_ranks_2_and_4():
    # module 0: ‖B1 A1‖_F = 1 and ‖B2 A2‖_F = 3, so p = (1/4, 3/4); module 1: all products zero → equal weights.
    a1, b1 = torch.zeros(2, 3), torch.zeros(2, 2)
    a1[0, 0], b1[0, 0] = 1.0, 1.0
    a2, b2 = torch.zeros(4, 3), torch.zeros(2, 4)
    a2[3, 2], b2[1, 3] = 3.0, 1.0
    u1 = {A0: a1, B0: b1, A1: torch.ones(2, 3), B1: torch.zeros(2, 2)}
    u2 = {A0: a2, B0: b2, A1: torch.full((4, 3), 3.0), B1: torch.zeros(2, 4)}
    before = _snapshot([u1, u2])
    out = hetlora([u1, u2])
    expected_a = torch.zeros(4, 3)
    expected_a[0, 0], expected_a[3, 2] = 0.25, 2.25
    expected_b = torch.zeros(2, 4)
    expected_b[0, 0], expected_b[1, 3] = 0.25, 0.75
    torch.testing.assert_close(out[A0], expected_a)
    torch.testing.assert_close(out[B0], expected_b)
    torch.testing.assert_close(out[A1], torch.tensor([[2.0] * 3] * 2 + [[1.5] * 3] * 2))  # (1 + 3)/2 and (0 + 3)/2
    assert out[B1].shape == (2, 4) and not out[B1].any()
    _assert_unchanged([u1, u2], before)


def test_hetlora_matches_direct_norm_weighting_on_random_updates():
    updates = [_lora(2, 0), _lora(4, 1), _lora(3, 2)]
    out = hetlora(updates)
    for a, b in ((A0, B0), (A1, B1)):
        norms = torch.stack([torch.linalg.matrix_norm(u[b] @ u[a]) for u in updates])
        p = norms / norms.sum()
        torch.testing.assert_close(out[a], sum(pk * _pad(u[a], 4, 0) for pk, u in zip(p, updates)))
        torch.testing.assert_close(out[b], sum(pk * _pad(u[b], 4, 1) for pk, u in zip(p, updates)))


def test_zero_pad_average_is_padded_weighted_mean():
    updates, weights = [_lora(2, 0), _lora(4, 1)], [1.0, 3.0]
    before = _snapshot(updates)
    out = zero_pad_average(updates, weights)
    torch.testing.assert_close(out[A0], (_pad(updates[0][A0], 4, 0) + 3 * updates[1][A0]) / 4)
    torch.testing.assert_close(out[B1], (_pad(updates[0][B1], 4, 1) + 3 * updates[1][B1]) / 4)
    _assert_unchanged(updates, before)
    same_rank = [_lora(3, 5), _lora(3, 6)]
    expected = fedavg(same_rank, [2.0, 1.0])
    assert all(torch.equal(zero_pad_average(same_rank, [2.0, 1.0])[k], expected[k]) for k in expected)


@pytest.mark.parametrize("fn", [hetlora, lambda u: zero_pad_average(u, [1.0] * len(u)), lambda u: lora_exact(u, [1.0] * len(u))])
def test_lora_aggregators_reject_bad_updates(fn):
    with pytest.raises(ValueError, match="updates must hold"):
        fn([])
    with pytest.raises(ValueError, match="not a LoRA key"):
        fn([{**_lora(2, 0), "lm_head.weight": torch.zeros(3)}])
    with pytest.raises(ValueError, match=r"updates\[1\] has different keys"):
        fn([_lora(2, 0), {A0: torch.zeros(2, 10), B0: torch.zeros(12, 2)}])
    with pytest.raises(ValueError, match=r"updates\[1\] module .* \(out, in\)"):
        fn([_lora(2, 0), _lora(2, 1, out=7)])


# --- exact aggregation ------------------------------------------------------------------------------------------


def test_lora_exact_product_is_weighted_mean_of_products_naive_is_not():
    updates, weights = [_lora(2, 0), _lora(3, 1), _lora(4, 2)], [1.0, 2.0, 3.0]
    before = _snapshot(updates)
    exact, naive = lora_exact(updates, weights), zero_pad_average(updates, weights)
    _assert_unchanged(updates, before)
    for prefix, (a, b) in lora_pairs(exact).items():
        target = sum(w * u[b].double() @ u[a].double() for w, u in zip(weights, updates)) / sum(weights)
        assert exact[a].shape == (9, 10) and exact[b].shape == (12, 9)  # rank = min(2+3+4, min(12, 10))
        assert exact[a].dtype == torch.float32
        torch.testing.assert_close(lora_delta(exact)[prefix].double(), target, atol=1e-5, rtol=1e-5)
        assert (lora_delta(naive)[prefix].double() - target).abs().max() > 1e-2


def test_lora_exact_rank_is_capped_by_matrix_size():
    updates = [_lora(4, 0, out=6, inp=5), _lora(4, 1, out=6, inp=5)]
    exact = lora_exact(updates, [1.0, 1.0])
    assert exact[A0].shape == (5, 5) and exact[B0].shape == (6, 5)
    target = (updates[0][B0] @ updates[0][A0] + updates[1][B0] @ updates[1][A0]) / 2
    torch.testing.assert_close(exact[B0] @ exact[A0], target, atol=1e-5, rtol=1e-5)


def test_lora_exact_truncated_rank_is_best_low_rank_approximation():
    updates, weights = [_lora(3, 0), _lora(3, 1)], [1.0, 1.0]
    out = lora_exact(updates, weights, rank=2)
    assert out[A0].shape == (2, 10) and out[B0].shape == (12, 2)
    target = ((updates[0][B0] @ updates[0][A0] + updates[1][B0] @ updates[1][A0]) / 2).double()
    u, s, vh = torch.linalg.svd(target, full_matrices=False)
    torch.testing.assert_close((out[B0] @ out[A0]).double(), (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5, rtol=1e-5)
    # balanced factors: B = U√S, A = √S Vh
    torch.testing.assert_close(out[B0].double().norm(dim=0), s[:2].sqrt(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rank, match", [(0, "rank must be None or >= 1"), (11, r"rank must be <= min\(out, in\) = 10")])
def test_lora_exact_rank_errors(rank, match):
    with pytest.raises(ValueError, match=match):
        lora_exact([_lora(2, 0)], [1.0], rank=rank)


def test_lora_exact_weight_errors():
    with pytest.raises(ValueError, match="weights"):
        lora_exact([_lora(2, 0), _lora(2, 1)], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        lora_exact([_lora(2, 0), _lora(2, 1)], [1.0, -1.0])


# --- k-means, clustering accuracy, FL-TAC ---------------------------------------------------------------------


def _blobs(seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Three well-separated clusters of 5 points in 8-D, shuffled; returns (vectors (15, 8), true labels)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(3, 8) * 50.0
    true = np.random.default_rng(seed).permutation(np.repeat([0, 1, 2], 5))
    return centers[true] + torch.randn(15, 8, generator=g), true


def test_kmeans_separable_clusters_are_recovered_deterministically():
    vectors, true = _blobs()
    labels = kmeans_cluster(vectors, 3, seed=0)
    assert labels.dtype == np.int64 and labels.shape == (15,) and labels[0] == 0
    assert clustering_accuracy(labels, true) == 1.0
    assert clustering_accuracy(labels, (true + 1) % 3) == 1.0  # permutation-invariant
    assert np.array_equal(labels, kmeans_cluster(vectors, 3, seed=0))
    for seed in range(1, 6):
        assert clustering_accuracy(kmeans_cluster(vectors, 3, seed=seed), true) == 1.0


def test_kmeans_labels_follow_first_appearance_and_k_one():
    vectors = torch.tensor([[10.0], [0.0], [10.1], [0.1]])
    assert kmeans_cluster(vectors, 2, seed=3).tolist() == [0, 1, 0, 1]
    assert kmeans_cluster(vectors, 1, seed=3).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "pred, true, expected",
    [
        ([0, 0, 1], [0, 1, 2], 2 / 3),
        ([0, 0, 1, 1, 0, 1], [0, 0, 0, 1, 1, 1], 2 / 3),
        ([7, 7, 5, 5, 7, 5], [0, 0, 0, 1, 1, 1], 2 / 3),
        ([1, 1, 0, 0], [0, 0, 1, 1], 1.0),
        ([0, 1, 2, 3], [0, 0, 0, 0], 0.25),
    ],
)
def test_clustering_accuracy_known_cases(pred, true, expected):
    assert clustering_accuracy(np.array(pred), np.array(true)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vectors": torch.zeros(4), "k": 1}, "vectors must be a non-empty"),
        ({"vectors": torch.zeros(0, 3), "k": 1}, "vectors must be a non-empty"),
        ({"vectors": torch.zeros(4, 2), "k": 0}, r"k must be in \[1, n=4\]"),
        ({"vectors": torch.zeros(4, 2), "k": 5}, r"k must be in \[1, n=4\]"),
        ({"vectors": torch.zeros(4, 2), "k": 2, "iters": 0}, "iters must be >= 1"),
    ],
)
def test_kmeans_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kmeans_cluster(seed=0, **kwargs)


def test_clustering_accuracy_errors():
    with pytest.raises(ValueError, match="pred_labels and true_labels"):
        clustering_accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="pred_labels and true_labels"):
        clustering_accuracy([], [])


def test_fltac_returns_per_cluster_means_and_labels():
    g = torch.Generator().manual_seed(0)
    tasks = [0, 1, 0, 1, 1, 0]
    updates = [{"b": torch.randn(3, generator=g) + 20.0 * t, "a": torch.randn(2, 2, generator=g)} for t in tasks]
    before = _snapshot(updates)
    clusters, labels = fltac(updates, k=2, seed=0)
    _assert_unchanged(updates, before)
    assert len(clusters) == 2 and clustering_accuracy(labels, tasks) == 1.0
    for c, adapter in enumerate(clusters):
        members = [u for u, label in zip(updates, labels) if label == c]
        assert len(members) == 3
        for key in ("a", "b"):
            torch.testing.assert_close(adapter[key], torch.stack([m[key] for m in members]).mean(0))


def test_fltac_errors():
    with pytest.raises(ValueError, match="updates must hold"):
        fltac([], k=1, seed=0)
    with pytest.raises(ValueError, match=r"updates\[1\] has different keys or shapes"):
        fltac([{"a": torch.zeros(2)}, {"a": torch.zeros(3)}], k=1, seed=0)
    with pytest.raises(ValueError, match="k must be in"):
        fltac([{"a": torch.zeros(2)}, {"a": torch.ones(2)}], k=3, seed=0)
