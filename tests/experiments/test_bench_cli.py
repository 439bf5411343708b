"""``fedpeat bench env`` / ``fedpeat bench engine`` end to end at small sizes, and the interleaved best-block timer.
Only that the benchmarks run and report consistent numbers is asserted: speeds are never asserted in tests."""

from __future__ import annotations

import re

import pytest

from experiments import cli
from experiments.bench import bench_env, best_rates
from experiments.cli import app
from tests.helpers import cli_runner

runner = cli_runner()
cli.console.width = 200


def _row(output: str, label: str) -> float:
    """The number in the table row starting with ``label`` (thousands separators and a trailing × or % removed)."""
    match = re.search(re.escape(label) + r"[^│]*│\s*([-\d.,]+)", output)
    assert match, f"no row {label!r} in\n{output}"
    return float(match.group(1).replace(",", ""))


def test_best_rates_interleaves_blocks_and_keeps_the_best():
    calls: list[tuple[str, int]] = []
    steppers = {name: (lambda n, name=name: calls.append((name, n))) for name in ("a", "b")}
    rates = best_rates(steppers, {"a": 30, "b": 7}, {"b": 100}, blocks=3)
    assert calls == [("a", 10), ("b", 2)] * 3  # interleaved, steps split into blocks (at least one step)
    assert rates["a"] > 0 and rates["b"] > 0


def test_bench_env_reports_consistent_ratios():
    result = runner.invoke(app, ["bench", "env", "--steps", "400", "--num-envs", "16", "--vector-steps", "20",
                                 "--ppo-timesteps", "64", "--blocks", "2"])
    assert result.exit_code == 0, result.output
    out = result.output
    fedpeat, cartpole = _row(out, "FedPEAT-v1 steps/s"), _row(out, "CartPole-v1 steps/s")
    vector = _row(out, "vector env steps/s (16 envs)")
    assert min(fedpeat, cartpole, vector) > 0
    assert _row(out, "ratio FedPEAT / CartPole") == pytest.approx(fedpeat / cartpole, abs=2e-3)
    assert _row(out, "vector / single env") == pytest.approx(vector / fedpeat, abs=0.06)
    assert 0 < _row(out, "PPO wall time inside the env") < 100
    assert "best of 2 interleaved blocks" in " ".join(out.split())


def test_bench_env_rejects_bad_sizes():
    result = runner.invoke(app, ["bench", "env", "--blocks", "0"])
    assert result.exit_code == 2 and "blocks must be an integer >= 1, got 0" in result.output
    with pytest.raises(ValueError, match="num_envs must be an integer >= 1"):
        bench_env(num_envs=0)


def test_bench_engine_reports_overhead_and_emulator_rows():
    result = runner.invoke(app, ["bench", "engine", "--steps", "2", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Engine overhead" in out and "Emulator vs full model" in out
    rows = re.findall(r"│\s*(0\.\d\d)\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*([\d.]+)×", out)
    assert [r[0] for r in rows] == ["0.00", "0.50", "0.75"]
    blocks = [int(r[1]) for r in rows]
    assert blocks[0] > blocks[1] > blocks[2] > 0 and float(rows[0][3]) == 1.0  # full model: speed-up 1.00×


def test_bench_devices_reports_steps_per_second_and_the_cost_per_device():
    result = runner.invoke(app, ["bench", "devices", "--devices", "2", "--devices", "20", "--steps", "50"])
    assert result.exit_code == 0, result.output
    rows = [[cell.strip().replace(",", "").rstrip("×") for cell in line.split("│")[1:-1]]
            for line in result.output.splitlines() if line.startswith("│") and line.split("│")[1].strip().isdigit()]
    (n2, steps2, device_steps2, cost2), (n20, steps20, device_steps20, cost20) = [[float(c) for c in r] for r in rows]
    assert (n2, n20, cost2) == (2, 20, 1.0) and steps2 > 0 and steps20 > 0
    assert device_steps2 == pytest.approx(2 * steps2, rel=1e-3) and cost20 == pytest.approx(
        device_steps2 / device_steps20, abs=0.01)
    assert runner.invoke(app, ["bench", "devices", "--devices", "0"]).exit_code == 2


def test_masked_sampler_draws_only_allowed_values():
    import numpy as np

    from experiments.bench_scale import MaskedSampler

    nvec = np.array([3, 3, 2])
    masks = np.array([True, False, True, False, True, False, True, True])  # component 1 allows only value 1
    sample = MaskedSampler(nvec, np.random.default_rng(0))
    draws = np.array([sample(masks) for _ in range(200)])
    assert set(draws[:, 0]) == {0, 2} and set(draws[:, 1]) == {1} and set(draws[:, 2]) == {0, 1}


@pytest.mark.slow
def test_bench_executors_reports_the_ratio_start_up_and_memory():
    result = runner.invoke(app, ["bench", "executors", "--clients", "2", "--rounds", "1", "--local-steps", "1"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [c.strip().rstrip("×") for c in line.split("│")[2:-1]]
            for line in result.output.splitlines() if line.startswith("│")}
    local = next(v for k, v in rows.items() if k.startswith("local (") and "1 torch thread" not in k)
    one_thread = rows["local (1 torch thread)"]
    assert local[1] == "1.00" and local[3] == "–" and one_thread[2] == "1.00"
    for ray_row in (rows["ray (this process + actors)"], rows["ray (actors only)"]):
        round_s, speedup, vs_one_thread, startup, peak = (float(c) for c in ray_row)
        assert speedup == pytest.approx(float(local[0]) / round_s, rel=0.05, abs=0.02) and startup > 0
        assert vs_one_thread == pytest.approx(float(one_thread[0]) / round_s, rel=0.05, abs=0.02)
        assert peak > float(local[4])  # Ray's processes and actors add to the process tree
