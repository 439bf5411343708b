import pytest
import torch

from federation.aggregation import fedavg


def _updates():
    g = torch.Generator().manual_seed(0)
    return [{"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)} for _ in range(3)]


def test_fedavg_matches_direct_weighted_mean():
    updates, weights = _updates(), [1.0, 2.0, 5.0]
    out = fedavg(updates, weights)
    for key in ("a", "b"):
        expected = (1 * updates[0][key] + 2 * updates[1][key] + 5 * updates[2][key]) / 8
        torch.testing.assert_close(out[key], expected)


def test_fedavg_does_not_mutate_inputs_and_keeps_dtype():
    updates = _updates()
    updates[0]["b"] = updates[0]["b"].half()
    for u in updates[1:]:
        u["b"] = u["b"].half()
    before = [{k: v.clone() for k, v in u.items()} for u in updates]
    out = fedavg(updates, [1, 1, 1])
    assert out["b"].dtype == torch.float16
    for u, b in zip(updates, before):
        for k in u:
            assert torch.equal(u[k], b[k])


def test_fedavg_single_update_is_identity():
    u = _updates()[0]
    out = fedavg([u], [3.0])
    assert all(torch.equal(out[k], u[k]) for k in u)


@pytest.mark.parametrize(
    "updates, weights, match",
    [
        ([], [], "at least one update"),
        ([{"a": torch.zeros(2)}], [1.0, 2.0], "1 updates but 2 weights"),
        ([{"a": torch.zeros(2)}, {"b": torch.zeros(2)}], [1.0, 1.0], "different keys"),
        ([{"a": torch.zeros(2)}, {"a": torch.zeros(3)}], [1.0, 1.0], "shape"),
        ([{"a": torch.zeros(2)}, {"a": torch.zeros(2)}], [0.0, 0.0], "total weight must be positive"),
        ([{"a": torch.zeros(2)}, {"a": torch.zeros(2)}], [-1.0, 2.0], "non-negative"),
    ],
)
def test_fedavg_errors(updates, weights, match):
    with pytest.raises(ValueError, match=match):
        fedavg(updates, weights)
