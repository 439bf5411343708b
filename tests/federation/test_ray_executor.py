"""``RayExecutor`` through ``RoundRunner``: the local executor's numbers to the last digit, faults (a client that
raises, a killed actor), one executor serving several runs. Slow: a local Ray cluster starts once for the module."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from federation.engine import EngineConfig, RoundResult, RoundRunner
from federation.executor_config import ExecutorConfig
from federation.methods import DeviceDecision, make_method
from tests.helpers import FAST_TRAIN

pytestmark = pytest.mark.slow

DECISIONS = [DeviceDecision(True, 0.0), DeviceDecision(True, 0.5), DeviceDecision(False, 0.0),
             DeviceDecision(True, 0.5), DeviceDecision(True, 0.25)]


def test_engine_fidelity_env_on_ray_steps_like_the_local_one():
    """First in the module: the env starts Ray and its own actors, and frees them on close (the fixture's come later)."""
    import gymnasium as gym
    import numpy as np

    import fedpeat_env  # noqa: F401

    options = {"num_devices": 3, "engine_local_steps": 1, "horizon": 2, "memory_tiers": (2.0,)}
    episodes = []
    for executor in ("local", "ray"):
        env = gym.make("FedPEAT-Engine-v1", executor=executor, **options)
        steps = []
        for seed in (3, None):  # a second episode on the same actors
            obs, _ = env.reset(seed=seed)
            next_obs, reward, _, _, info = env.step(np.array([1, 2, 0]))
            steps.append((obs, next_obs, reward, info["perplexity"]))
        env.close()
        episodes.append(steps)
    for (obs, next_obs, reward, ppl), (r_obs, r_next_obs, r_reward, r_ppl) in zip(*episodes):
        np.testing.assert_equal(obs, r_obs)
        np.testing.assert_equal(next_obs, r_next_obs)
        assert (reward, ppl) == (r_reward, r_ppl)


@pytest.fixture(scope="module")
def ray_executor():
    import ray

    executor = ExecutorConfig("ray", workers=2, cpus_per_worker=0.5).make()  # slot 0: this process; slot 1: an actor
    yield executor
    executor.shutdown()
    ray.shutdown()


def _config(method: str = "fedpeat", **kwargs) -> EngineConfig:
    method_config = replace(make_method(method).config, train=FAST_TRAIN)
    return EngineConfig(method=method, num_devices=5, max_eval_blocks=8, method_config=method_config, **kwargs)


def _numbers(results: list[RoundResult]) -> list[dict]:
    """Every number of the rounds except wall times, NaN as None (so that equal runs compare equal)."""
    def clean(record: dict) -> dict:
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items() if k != "wall_time_s"}

    return [{**clean(r.summary()), "devices": [clean(vars(d)) for d in r.devices]} for r in results]


@pytest.mark.parametrize("method", ["fedpeat", "feddat"])
def test_ray_gives_the_local_executors_numbers(ray_executor, method):
    local = RoundRunner(_config(method)).run(3, DECISIONS if method == "fedpeat" else None)
    remote = RoundRunner(_config(method), ray_executor).run(3, DECISIONS if method == "fedpeat" else None)
    assert _numbers(local) == _numbers(remote)
    assert ray_executor.driver_slot and list(ray_executor.actors) == [1]
    assert [ray_executor.worker_of(d) for d in range(5)] == [0, 1, 0, 1, 0]


def test_actors_only_give_the_same_numbers(ray_executor):
    actors_only = ExecutorConfig("ray", workers=2, cpus_per_worker=0.5, driver_slot=False).make()
    try:
        assert list(actors_only.actors) == [0, 1]
        remote = RoundRunner(_config(), actors_only).run(2, DECISIONS)
    finally:
        actors_only.shutdown()
    assert _numbers(RoundRunner(_config()).run(2, DECISIONS)) == _numbers(remote)


def test_a_client_that_raises_is_dropped_and_serves_again(ray_executor):
    runner = RoundRunner(_config(), ray_executor)
    run = ray_executor.run

    def task_99_for_devices_0_1_in_round_1(jobs):  # fault injection: device 1's client raises in its actor, 0's here
        return run([replace(j, task=99) if j.device in (0, 1) and j.round == 1 else j for j in jobs])

    ray_executor.run = task_99_for_devices_0_1_in_round_1
    try:
        first, second = runner.run(2, DECISIONS)
    finally:
        del ray_executor.run
    assert (first.participants, first.failures) == (2, 2)
    assert [first.devices[d].failure for d in (0, 1)] == [f"ValueError: device {d} has no blocks of task 99" for d in (0, 1)]
    assert (second.participants, second.failures) == (4, 0)
    assert [d.device for d in second.devices if d.emulator_exchanged] == [0, 1]


def test_a_killed_actor_fails_its_devices_for_one_round_then_serves_them_again(ray_executor):
    runner = RoundRunner(_config(), ray_executor)
    first = runner.run_round(DECISIONS)
    ray_executor.ray.kill(ray_executor.actors[1], no_restart=False)  # the actor of slot 1 holds devices 1 and 3
    second = runner.run_round(DECISIONS)
    failed = [d.device for d in second.devices if d.failure]
    assert failed == [1, 3] and all("worker 1" in second.devices[d].failure for d in failed)
    assert (second.participants, second.failures) == (2, 2) and not math.isnan(second.full_perplexity)
    third = runner.run_round(DECISIONS)  # the restarted actor serves them again; their sub-models are sent again
    assert (third.participants, third.failures) == (4, 0)
    assert [d.device for d in third.devices if d.emulator_exchanged] == [1, 3]
    assert first.participants == 4


def test_one_executor_serves_runs_one_after_another(ray_executor):
    local = [RoundRunner(_config(seed=s)).run(1) for s in (1, 2)]
    remote = [RoundRunner(_config(seed=s), ray_executor).run(1) for s in (1, 2)]
    assert [_numbers(r) for r in local] == [_numbers(r) for r in remote]



def test_a_run_checkpointed_on_ray_resumes_with_the_uninterrupted_numbers(ray_executor, tmp_path):
    config = _config("feddat")  # private device state in the actor and in this process
    local = RoundRunner(config).run(3)
    first = RoundRunner(config, ray_executor)
    done = first.run(2)
    first.save_checkpoint(tmp_path, done)
    states = ray_executor.client_states()
    assert sorted(states) == [0, 1, 2, 3, 4] and all(s.private for s in states.values())
    resumed = RoundRunner(config, ray_executor)  # the executor restarts with new data: its devices hold nothing
    results = resumed.resume(tmp_path)
    results.append(resumed.run_round())
    assert _numbers(results) == _numbers(local) and results[-1].exchanges == 0


def test_run_command_on_ray_writes_the_local_runs_rounds(ray_executor, tmp_path):
    import pandas as pd

    from experiments.cli import app
    from tests.helpers import cli_runner

    args = ["run", "--devices", "3", "--rounds", "2", "--local-steps", "1", "--compression", "0.5"]
    cli = cli_runner()
    for name, extra in (("local", []), ("ray", ["--executor", "ray", "--ray-cpus-per-worker", "0.5"])):
        result = cli.invoke(app, [*args, *extra, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    local, remote = (pd.read_csv(tmp_path / name / "rounds.csv").drop(columns="wall_time_s") for name in ("local", "ray"))
    pd.testing.assert_frame_equal(local, remote)
    assert cli.invoke(app, [*args, "--ray-address", "auto"]).exit_code == 2  # a Ray option without --executor ray


def test_calibration_runs_on_ray_give_the_local_trajectories(ray_executor):
    from fedpeat_env.calibration import EngineSettings, RunSpec, run_plan

    settings = EngineSettings(rounds=2, local_steps=1)
    specs = [RunSpec("mixed", 0, (0.25, 0.5), fraction=0.7, ranks=(2, 8), num_devices=3, partition="domains")]
    local = run_plan(specs, settings, workers=1)
    remote = run_plan(specs, settings, workers=2, executor=ray_executor)  # one after another, clients on Ray
    assert [r.perplexity for r in local] == [r.perplexity for r in remote]
    assert [r.domain_perplexity for r in local] == [r.domain_perplexity for r in remote]
    assert [r.compression for r in local] == [r.compression for r in remote]
