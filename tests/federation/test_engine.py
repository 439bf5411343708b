"""The shared round through its public entry point ``RoundRunner``: message log, exchanges, determinism."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from federation.emulator import build_emulator, layer_drop_spec
from federation.engine import EngineConfig, RoundRunner
from federation.executor_config import ExecutorConfig
from federation.methods import DeviceDecision, FedPEATConfig, MethodConfig, make_method
from tests.helpers import FAST_TRAIN

FAST = FAST_TRAIN


def _config(method: str = "fedpeat", **kwargs) -> EngineConfig:
    method_config = kwargs.pop("method_config", FedPEATConfig(train=FAST))
    return EngineConfig(method=method, num_devices=3, method_config=method_config, **{"max_eval_blocks": 8, **kwargs})


def _decisions(*compressions):
    return [DeviceDecision(c is not None, c or 0.0) for c in compressions]


def test_message_bytes_equal_the_tensors_sent(foundation):
    runner = RoundRunner(_config())
    runner.run_round(_decisions(0.5, 0.75, None))
    model, _ = foundation
    # 2 adapter blocks x rank 8 x (d_in + d_out) of c_attn (d → 3d), attn.c_proj (d → d), mlp.c_fc (d → 4d), mlp.c_proj
    lora_params = 2 * 8 * ((128 + 3 * 128) + (128 + 128) + (128 + 4 * 128) + (4 * 128 + 128))
    for message in runner.log.messages:
        if message.kind == "adapter":
            assert message.num_bytes == 4 * lora_params
        else:
            spec = runner.server.device_specs[message.device]
            emulator = build_emulator(model, spec)
            assert message.num_bytes == 4 * sum(p.numel() for p in emulator.parameters())
    assert {m.device for m in runner.log.messages} == {0, 1}
    assert runner.log.total_bytes(direction="up") == 2 * 4 * lora_params


def test_device_never_receives_dropped_blocks():
    runner = RoundRunner(_config())
    runner.run_round(_decisions(0.75, 0.5, 0.0))
    for message in runner.log.messages:
        spec = layer_drop_spec(10, 1, [0.75, 0.5, 0.0][message.device])
        received = {int(k.split(".")[2]) for k in message.keys if k.startswith("transformer.h.")}
        assert received <= set(spec.layers)
        assert not received & set(spec.dropped_layers)
        if message.kind in ("emulator", "frozen"):
            assert received == set(spec.layers)


def test_emulator_is_sent_only_when_it_changes():
    runner = RoundRunner(_config())
    first = runner.run_round(_decisions(0.5, 0.5, 0.5))
    same = runner.run_round(_decisions(0.5, 0.5, None))
    switched = runner.run_round(_decisions(0.75, 0.5, 0.5))
    assert (first.exchanges, same.exchanges, switched.exchanges) == (3, 0, 1)
    assert same.bytes_down < first.bytes_down
    assert same.participants == 2 and not same.devices[2].selected and same.devices[2].bytes_down == 0
    assert switched.devices[0].emulator_exchanged and not switched.devices[2].emulator_exchanged


def test_round_reports_latency_memory_and_perplexities():
    runner = RoundRunner(_config())
    result = runner.run_round(_decisions(0.0, 0.75, 0.75))
    full_mem, small_mem = result.devices[0].memory_bytes, result.devices[1].memory_bytes
    assert full_mem > small_mem > 0 and result.peak_memory_bytes == full_mem
    # "sum" (default): devices download in turn at the whole band's rate, the round's latency is the total
    for d in result.devices:
        assert d.latency_s == pytest.approx(8 * d.bytes_down / d.downlink_rate_bps + 8 * d.bytes_up / d.uplink_rate_bps)
    assert result.round_latency_s > 0 and result.round_latency_s == pytest.approx(sum(d.latency_s for d in result.devices))
    assert math.isfinite(result.full_perplexity) and math.isfinite(result.emulator_perplexity)
    assert result.devices[1].emulator_perplexity > result.devices[0].emulator_perplexity  # smaller emulator


def test_one_adapter_on_several_domains_is_evaluated_per_domain():
    domains = ("pydocs", "licenses", "docstrings")
    runner = RoundRunner(_config(domains=domains, max_eval_blocks=9, evaluate_emulators=False))
    result = runner.run_round(_decisions(0.0, 0.5, None))
    per_domain = {d: result.metrics[f"ppl_{d}"] for d in domains}
    counts = [int((runner.data.eval_labels == k).sum()) for k in range(3)]
    assert counts == [3, 3, 3]  # max_eval_blocks split equally between the domains
    pooled = math.exp(sum(n * math.log(per_domain[d]) for n, d in zip(counts, domains)) / sum(counts))
    assert result.full_perplexity == pytest.approx(pooled, rel=1e-12)  # the union is the pooled tokens
    assert len(set(per_domain.values())) == 3
    assert math.isnan(result.emulator_perplexity) and all(math.isnan(d.emulator_perplexity) for d in result.devices)


def test_max_latency_splits_the_downlink_between_the_round_devices():
    runner = RoundRunner(_config(latency_aggregation="max"))
    result = runner.run_round(_decisions(0.0, 0.75, None))
    selected = [d for d in result.devices if d.selected]
    for d in selected:  # two devices download at once: each gets half the band
        assert d.latency_s == pytest.approx(8 * d.bytes_down / (d.downlink_rate_bps / 2) + 8 * d.bytes_up / d.uplink_rate_bps)
    assert result.round_latency_s == max(d.latency_s for d in selected)
    with pytest.raises(ValueError, match="latency_aggregation must be one of"):
        EngineConfig(latency_aggregation="mean")


def _summaries(results):
    return [{k: v for k, v in r.summary().items() if k != "wall_time_s"} for r in results]


@pytest.mark.parametrize("method, compression", [("fed-ft", 0.0), ("fedpetuning", 0.0), ("fedpeat", 0.5)])
def test_same_seed_same_numbers(method, compression):
    train = replace(FAST, lr=make_method(method).train_config.lr)  # full fine-tuning at LoRA's rate unlearns
    method_config = FedPEATConfig(train=train) if method == "fedpeat" else MethodConfig(train=train)
    decisions = [DeviceDecision(True, compression)] * 3
    runs = [RoundRunner(_config(method, seed=s, method_config=method_config)).run(2, decisions) for s in (7, 7, 8)]
    assert _summaries(runs[0]) == _summaries(runs[1])
    assert _summaries(runs[0]) != _summaries(runs[2])
    assert runs[0][-1].full_perplexity < RoundRunner(_config(method, seed=7, method_config=method_config)).initial_perplexity


def test_fedpeat_cases_and_decision_errors():
    shared = RoundRunner(_config(method_config=FedPEATConfig(train=FAST, shared_emulator=True)))
    with pytest.raises(ValueError, match="shared_emulator: selected devices need one compression"):
        shared.run_round(_decisions(0.5, 0.75, 0.5))
    assert shared.run_round(_decisions(0.5, 0.5, None)).exchanges == 2
    with pytest.raises(ValueError, match="shared_emulator applies to case 1 only"):
        FedPEATConfig(case=2, shared_emulator=True)

    # case 2 (w'_s = w'_c): every device holds the server's own frozen weights, i.e. the whole full model
    case2 = RoundRunner(_config(method_config=FedPEATConfig(train=FAST, case=2)))
    result = case2.run_round(_decisions(0.0, 0.0, None))
    full = case2.method.server_spec()
    assert full.is_full and all(case2.server.device_specs[i] == full for i in (0, 1))
    assert [d.kept_blocks for d in result.devices] == [full.num_layers, full.num_layers, 0]
    assert {m.kind for m in case2.log.messages if m.direction == "down"} == {"frozen", "adapter"}
    with pytest.raises(ValueError, match="has no emulator"):
        case2.run_round(_decisions(0.5, 0.0, 0.0))

    case3 = RoundRunner(_config(method_config=FedPEATConfig(train=FAST, case=3)))
    result = case3.run_round(_decisions(0.0, 0.0, 0.0))
    assert {m.kind for m in case3.log.messages} == {"model"} and result.exchanges == 0
    with pytest.raises(ValueError, match="has no emulator"):
        case3.run_round(_decisions(0.5, 0.0, 0.0))
    with pytest.raises(ValueError, match="case must be one of"):
        FedPEATConfig(case=4)

    runner = RoundRunner(_config())
    with pytest.raises(ValueError, match="one entry per device"):
        runner.run_round(_decisions(0.5))
    with pytest.raises(ValueError, match="compression must be in"):
        runner.run_round(_decisions(1.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="lora_rank must be in"):
        runner.run_round([DeviceDecision(True, 0.5, lora_rank=99)] * 3)
    with pytest.raises(ValueError, match="method must be one of"):
        RoundRunner(_config("fedsgd"))


def test_per_device_lora_rank_changes_adapter_bytes():
    runner = RoundRunner(_config())
    runner.run_round([DeviceDecision(True, 0.5, lora_rank=r) for r in (2, 4, 8)])
    up = {m.device: m.num_bytes for m in runner.log.messages if m.direction == "up"}
    assert up[0] * 2 == up[1] and up[1] * 2 == up[2]


def test_collaborative_server_update_joins_the_aggregation_without_using_the_wire():
    from federation.client import SERVER_DEVICE

    runner = RoundRunner(_config(server_fraction=0.3))
    seen = []
    aggregate = runner.server.aggregate
    runner.server.aggregate = lambda updates: (seen.extend(updates), aggregate(updates))[1]
    runner.run_round(_decisions(0.5, 0.5, 0.5))
    assert all(m.device >= 0 for m in runner.log.messages)  # the server's update never crosses the wire
    server = [u for u in seen if u.device == SERVER_DEVICE]
    assert len(server) == 1 and server[0].num_samples == len(runner.data.server_blocks) > 0
    states, weights = [u.state for u in seen], [float(u.num_samples) for u in seen]
    with_server = runner.method.average(states, weights)
    without = runner.method.average(states[:-1], weights[:-1])
    for key, tensor in runner.server.global_state.items():
        assert torch.equal(tensor, with_server[key]), key
    assert any(not torch.equal(with_server[k], without[k]) for k in with_server)  # its weight moved the average


def test_no_device_selected_keeps_the_model():
    runner = RoundRunner(_config())
    result = runner.run_round(_decisions(None, None, None))
    assert result.participants == 0 and result.bytes_down == 0 and result.round_latency_s == 0.0
    assert result.full_perplexity == runner.initial_perplexity


def test_engine_config_errors():
    with pytest.raises(ValueError, match="num_devices"):
        EngineConfig(num_devices=0)
    with pytest.raises(ValueError, match="server_fraction"):
        replace(EngineConfig(), server_fraction=1.0)


def test_a_failing_client_is_dropped_from_its_round_and_serves_again_next_round():
    runner = RoundRunner(EngineConfig(num_devices=3, max_eval_blocks=8, method_config=MethodConfig(train=FAST)))
    clients = runner.executor.clients
    working = {c.device: c.run for c in clients}

    def broken_in_round_1(job):
        if job.round == 1:
            raise RuntimeError("battery died")
        return working[1](job)

    clients[1].run = broken_in_round_1  # fault injection: device 1 raises in round 1 only
    first = runner.run_round()
    assert (first.participants, first.failures) == (2, 1) and not math.isnan(first.full_perplexity)
    assert first.devices[1].failure == "RuntimeError: battery died" and not first.devices[1].selected
    assert first.devices[1].bytes_down > 0 and first.devices[1].bytes_up == 0  # it downloaded, sent nothing
    log = runner.log.to_frame()
    failed = log[log["kind"] == "failure"]
    assert failed[["round", "device", "bytes", "note"]].values.tolist() == [[1, 1, 0, "RuntimeError: battery died"]]
    second = runner.run_round()  # the device serves again from the next round, its sub-model sent again
    assert (second.participants, second.failures) == (3, 0) and second.devices[1].failure == ""
    assert [d.device for d in second.devices if d.emulator_exchanged] == [1]

    for client in clients:  # every device fails: the round is reported, the global state stays as it was
        client.run = lambda job: 1 / 0
    before = {k: v.clone() for k, v in runner.server.global_state.items()}
    third = runner.run_round()
    assert (third.participants, third.failures) == (0, 3) and math.isnan(third.train_loss)
    assert third.full_perplexity == second.full_perplexity
    assert all(d.failure == "ZeroDivisionError: division by zero" for d in third.devices)
    assert all(torch.equal(before[k], v) for k, v in runner.server.global_state.items())


def test_executor_config_errors():
    with pytest.raises(ValueError, match="executor must be one of"):
        ExecutorConfig("dask")
    with pytest.raises(ValueError, match="workers"):
        ExecutorConfig("ray", workers=0)
    with pytest.raises(ValueError, match="apply to executor 'ray' only"):
        ExecutorConfig("local", address="auto")


def test_client_sampling_draws_k_devices_per_round_with_the_seed_and_frees_their_models():
    def run(seed: int):
        runner = RoundRunner(replace(_config(seed=seed), num_devices=6, clients_per_round=2, max_eval_blocks=2,
                                     block_size=32))
        results = runner.run(2, [DeviceDecision(True, 0.5)] * 6)
        return runner, [tuple(d.device for d in r.devices if d.selected) for r in results]

    runner, drawn = run(0)
    assert [len(d) for d in drawn] == [2, 2] and drawn[0] != drawn[1]
    assert run(0)[1] == drawn  # the run's seed decides the draws
    assert replace(runner.config, clients_per_round=0.5).sampled_clients == 3  # a share of the devices
    clients = runner.executor.clients
    assert all(c._model is None for c in clients)  # sampled devices free their built model after training
    held = [c for c in clients if c.spec is not None]
    shared = runner.server.models.payload(held[0].spec)
    assert all(c.frozen[k].data_ptr() == shared[k].data_ptr() for c in held for k in shared)  # one copy per spec
    for bad in (0, 7, 1.5, True, "2"):
        with pytest.raises(ValueError, match="clients_per_round must be"):
            EngineConfig(num_devices=6, clients_per_round=bad)
