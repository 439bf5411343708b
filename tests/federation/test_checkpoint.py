"""Checkpoint and resume of a federated run (``federation.checkpoint``): a run resumed in a fresh ``RoundRunner``
gives the uninterrupted run's numbers; a damaged checkpoint gives one clear error naming its file and leaves the
previous checkpoint usable."""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import asdict, replace

import pytest

from federation.checkpoint import CheckpointError, check_resumable, checkpoints, read_record, read_tensors
from federation.engine import EngineConfig, RoundResult, RoundRunner
from federation.methods import DeviceDecision, FedDATConfig, FedPEATConfig, FedPFTConfig, HetLoRAConfig, MethodConfig
from federation.training import LocalTrainConfig

TINY = LocalTrainConfig(steps=1, batch_size=2)
EMULATORS = [DeviceDecision(True, 0.5), DeviceDecision(True, 0.75)]  # two devices holding different emulators


def _config(method: str, method_config: MethodConfig, **kwargs) -> EngineConfig:
    kwargs = {"num_devices": 2, **kwargs}
    return EngineConfig(method=method, max_eval_blocks=2, block_size=32, method_config=method_config, **kwargs)


def _numbers(results: list[RoundResult]) -> list[dict]:
    """Every number of every round and device record but the wall time (NaN as None, so that equal runs compare equal)."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return None if isinstance(value, float) and math.isnan(value) else value
    return [clean({k: v for k, v in asdict(r).items() if k != "wall_time_s"}) for r in results]


def _run(config: EngineConfig, schedule: list[list[DeviceDecision] | None], directory, save_at: tuple[int, ...],
         decisions: list[DeviceDecision] | None = None):
    """The uninterrupted run of ``schedule`` (one decision list per round), checkpointed after the rounds ``save_at``
    (recording ``decisions`` as the run's fixed ones)."""
    runner, results = RoundRunner(config), []
    for round_decisions in schedule:
        results.append(runner.run_round(round_decisions))
        if len(results) in save_at:
            runner.save_checkpoint(directory, results, decisions)
    return runner, results


def _resume(config: EngineConfig, schedule: list[list[DeviceDecision] | None], directory,
            decisions: list[DeviceDecision] | None = None):
    """A fresh runner resumed from ``directory``, then run to the end of ``schedule``."""
    runner = RoundRunner(config)
    results = runner.resume(directory, decisions)
    for decisions in schedule[len(results):]:
        results.append(runner.run_round(decisions))
    return runner, results


@pytest.fixture(scope="module")
def fedpeat_run(tmp_path_factory):
    """A 4-round FedPEAT run of two devices with different emulators, checkpointed after rounds 1 and 2."""
    config = _config("fedpeat", FedPEATConfig(train=TINY))
    directory = tmp_path_factory.mktemp("fedpeat-checkpoints")
    runner, results = _run(config, [EMULATORS] * 4, directory, save_at=(1, 2), decisions=EMULATORS)
    return config, runner, results, directory


def test_resumed_fedpeat_run_gives_the_uninterrupted_numbers(fedpeat_run):
    config, full_runner, full, directory = fedpeat_run
    runner, resumed = _resume(config, [EMULATORS] * 4, directory, EMULATORS)
    assert _numbers(resumed) == _numbers(full)
    assert [r.exchanges for r in resumed] == [2, 0, 0, 0]  # the devices still hold their emulators after the resume
    assert runner.log.messages == full_runner.log.messages
    assert runner.server.device_specs == full_runner.server.device_specs


@pytest.mark.parametrize("method, method_config, kwargs, schedule, save_at", [
    pytest.param("hetlora", HetLoRAConfig(train=TINY), {}, [[DeviceDecision(True, 0.0, 2), DeviceDecision(True, 0.0, 8)]] * 3,
                 2, id="hetlora"),  # pruned ranks (method) and tail norms (device private state)
    pytest.param("fedpft", FedPFTConfig(train=TINY, distill_steps=0, refresh_every=1, refresh_steps=1, distill_blocks=8), {},
                 [None, None, [DeviceDecision(True), DeviceDecision(False)], None, None], 3,
                 marks=pytest.mark.slow, id="fedpft"),  # refreshed revisions; device 1 holds an old one at the checkpoint
    pytest.param("feddat", FedDATConfig(train=TINY), {"server_fraction": 0.25}, [None] * 4, 2,
                 marks=pytest.mark.slow, id="feddat"),  # private local adapters, also on the collaborating server
    pytest.param("fltac", MethodConfig(train=TINY), {"domains": ("pydocs", "licenses", "docstrings")}, [None] * 4, 2,
                 marks=pytest.mark.slow, id="fltac"),  # per-slot cluster states
    pytest.param("fed-ft", MethodConfig(train=TINY), {}, [None] * 3, 2,
                 marks=pytest.mark.slow, id="fed-ft"),  # every weight trainable, no frozen part
    pytest.param("fedpeat", FedPEATConfig(train=TINY), {"num_devices": 4, "clients_per_round": 2}, [None] * 4, 2,
                 id="sampling"),  # the client sampler's stream; sampled devices hold their emulators
])
def test_resumed_stateful_method_gives_the_uninterrupted_numbers(method, method_config, kwargs, schedule, save_at, tmp_path):
    config = _config(method, method_config, **kwargs)
    full_runner, full = _run(config, schedule, tmp_path, save_at=(save_at,))
    runner, resumed = _resume(config, schedule, tmp_path)
    assert _numbers(resumed) == _numbers(full)
    assert runner.log.messages == full_runner.log.messages
    assert runner.method.state_dict()[0] == full_runner.method.state_dict()[0]
    if method == "hetlora":
        assert full_runner.method.device_ranks  # pruning happened, so the test covers its state
        assert full_runner.executor.clients[0].private["tail_norm"] == runner.executor.clients[0].private["tail_norm"]
    if method == "fedpft":  # at the checkpoint device 1 held a revision the server no longer keeps: it got none back
        record = read_record(checkpoints(tmp_path)[-1])
        assert 0 < record["device_specs"]["1"]["revision"] < record["method"]["spec"]["revision"]


def test_damaged_checkpoint_names_its_file_and_the_previous_one_still_loads(fedpeat_run, tmp_path):
    config, _, full, directory = fedpeat_run
    first, latest = checkpoints(directory)
    runner = RoundRunner(config)
    truncated = tmp_path / "truncated"
    shutil.copytree(directory, truncated)
    tensors = truncated / read_record(latest)["tensors"]["file"]
    tensors.write_bytes(tensors.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{re.escape(str(tensors))} is truncated.*previous checkpoint {first.name}"):
        runner.resume(truncated)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(directory, corrupt)
    (corrupt / latest.name).write_text('{"format": "fedpeat-checkpoint", "round": ')
    message = f"{re.escape(str(corrupt / latest.name))} is not valid JSON"
    with pytest.raises(CheckpointError, match=message):
        check_resumable(corrupt, config)
    with pytest.raises(CheckpointError, match=message):
        runner.resume(corrupt)
    (corrupt / latest.name).unlink()  # what the error tells the user to do
    assert _numbers(runner.resume(corrupt)) == _numbers(full[:1])  # the runner was left untouched by the failures
    assert _numbers([runner.run_round(EMULATORS)]) == _numbers(full[1:2])


def test_saving_keeps_the_previous_checkpoint_until_the_new_one_is_complete(fedpeat_run, tmp_path, monkeypatch):
    _, runner, results, directory = fedpeat_run
    assert [p.name for p in checkpoints(directory)] == ["round-000001.json", "round-000002.json"]
    assert sorted(p.suffix for p in directory.iterdir()) == [".json", ".json", ".safetensors", ".safetensors"]
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    replace_file = os.replace

    def crash_on_json(src, dst):  # the process dies before the new JSON is in place
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt
        replace_file(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_json)
    with pytest.raises(KeyboardInterrupt):
        runner.save_checkpoint(copy, results)  # round 4
    monkeypatch.undo()
    latest = checkpoints(copy)[-1]
    assert latest.name == "round-000002.json" and read_tensors(latest, read_record(latest))
    assert not list(copy.glob(".*.tmp"))
    runner.save_checkpoint(copy, results)
    assert [p.name for p in checkpoints(copy)] == ["round-000002.json", "round-000004.json"]  # round 1 removed
    assert len(list(copy.glob("*.safetensors"))) == 2


def test_resume_refuses_other_settings_and_a_missing_checkpoint(fedpeat_run, tmp_path):
    config, _, _, directory = fedpeat_run
    assert check_resumable(directory, config, EMULATORS) == 2
    other = replace(config, seed=1, method_config=replace(config.method_config, train=replace(TINY, steps=2)))
    with pytest.raises(CheckpointError, match=r"other settings.*method_config\.train\.steps \(checkpoint 1, given 2\); "
                                              r"seed \(checkpoint 0, given 1\)"):
        check_resumable(directory, other)
    with pytest.raises(CheckpointError, match=r"other settings.*decisions\[1\]\.compression \(checkpoint 0\.75, given 0\.5\)"):
        check_resumable(directory, config, [EMULATORS[0]] * 2)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        check_resumable(tmp_path / "empty", config)
