"""FedOT and HetLoRA on the shared round, and the exact LoRA aggregation option of ``MethodConfig``."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from federation.adapters import LoraSpec, adapter_state, attach_lora, lora_rank_of
from federation.aggregation import hetlora, lora_pairs
from federation.emulator import full_spec, model_payload, submodel_state
from federation.engine import EngineConfig, RoundRunner
from federation.methods import (
    DeviceDecision,
    FedOT,
    FedOTConfig,
    FedPEAT,
    FedPEATConfig,
    HetLoRA,
    HetLoRAConfig,
    HetLoRALoss,
    MethodConfig,
    make_method,
)
from federation.training import lm_loss
from tests.helpers import FAST_TRAIN

FAST = FAST_TRAIN
FEDOT = FedOTConfig(train=FAST, distill_steps=3)
HETLORA = HetLoRAConfig(train=FAST, ranks=(2, 4, 8))


def _config(method: str, method_config, **kwargs) -> EngineConfig:
    return EngineConfig(method=method, num_devices=3, max_eval_blocks=8, method_config=method_config, **kwargs)


def _summaries(results):
    return [{k: v for k, v in r.summary().items() if k != "wall_time_s"} for r in results]


# --- exact LoRA aggregation ------------------------------------------------------------------------------------


def _products(state):
    return {p: state[b].double() @ state[a].double() for p, (a, b) in lora_pairs(state).items()}


def test_exact_lora_aggregation_is_the_best_rank_r_approximation_of_the_mean_product(recording_executor):
    executor = recording_executor()
    runner = RoundRunner(_config("fedpeat", FedPEATConfig(train=FAST, lora_aggregation="exact")), executor=executor)
    runner.run(2, [DeviceDecision(True, 0.5)] * 3)
    updates, rank = executor.updates, runner.method.lora.rank
    total = sum(u.num_samples for u in updates)
    uploads = [_products(u.state) for u in updates]
    global_products = _products(runner.server.global_state)
    assert lora_rank_of(runner.server.global_state) == rank
    for prefix, product in global_products.items():
        mean = sum(u.num_samples * p[prefix] for u, p in zip(updates, uploads)) / total
        u_, s, vh = torch.linalg.svd(mean, full_matrices=False)
        best = (u_[:, :rank] * s[:rank]) @ vh[:rank]
        assert torch.linalg.matrix_norm(product - best) <= 1e-4 * torch.linalg.matrix_norm(best)
        a, b = lora_pairs(updates[0].state)[prefix]
        naive = (sum(u.num_samples * u.state[b].double() for u in updates) @
                 sum(u.num_samples * u.state[a].double() for u in updates)) / total**2
        assert torch.linalg.matrix_norm(naive - best) > 1e-3 * torch.linalg.matrix_norm(best)


def test_lora_aggregation_option_is_validated_and_kept():
    for cls in (MethodConfig, FedPEATConfig, FedOTConfig):
        with pytest.raises(ValueError, match="lora_aggregation must be one of"):
            cls(lora_aggregation="svd")
    assert FedPEAT(MethodConfig(lora_aggregation="exact")).config.lora_aggregation == "exact"
    assert make_method("fedot", MethodConfig(lora_aggregation="exact")).config.lora_aggregation == "exact"


# --- FedOT -----------------------------------------------------------------------------------------------------


def test_fedot_sends_one_shared_distilled_emulator_and_only_adapters_afterwards():
    runner = RoundRunner(_config("fedot", FEDOT))
    runner.run_round()  # default decisions: compression 0 -> the method's shared emulator
    second = runner.run_round([DeviceDecision(True, 0.5)] * 3)  # equal to the config's: same emulator
    assert second.exchanges == 0
    spec = runner.method.device_spec(DeviceDecision())
    assert spec.compression == 0.5 and all(r.kept_blocks == len(spec.layers) for r in second.devices)
    for device in range(3):
        down = [m for m in runner.log.messages if m.device == device and m.direction == "down"]
        up = [m for m in runner.log.messages if m.device == device and m.direction == "up"]
        emulators = [m for m in down if m.kind == "emulator"]
        assert len(emulators) == 1 and down[0] is emulators[0] and emulators[0].round == 1
        assert {int(k.split(".")[2]) for k in emulators[0].keys if k.startswith("transformer.h.")} == set(spec.layers)
        assert all(m.kind == "adapter" and all("lora_" in k for k in m.keys) for m in down[1:])
        assert len(up) == 2 and all(all("lora_" in k for k in m.keys) for m in up)

    emulator = model_payload(runner.server.models.get(spec), spec)
    original = submodel_state(runner.model, spec)
    assert emulator.keys() == original.keys()
    middle = set(spec.layers) - set(spec.adapter_layers)
    for key, tensor in emulator.items():
        block = int(key.split(".")[2]) if key.startswith("transformer.h.") else None
        if block in middle and key.endswith("attn.c_attn.weight"):
            assert not torch.equal(tensor, original[key]), key  # distilled
        elif block is None or block in spec.adapter_layers:
            assert torch.equal(tensor, original[key]), key  # embeddings, ln_f and adapter blocks untouched


def test_fedot_compression_rule_and_config_errors():
    runner = RoundRunner(_config("fedot", FedOTConfig(train=FAST, distill_steps=0)))
    with pytest.raises(ValueError, match="compression must be 0"):
        runner.run_round([DeviceDecision(True, 0.75)] * 3)
    assert runner.run_round([DeviceDecision(True, 0.0), DeviceDecision(True, 0.5), DeviceDecision(False)]).exchanges == 2
    with pytest.raises(ValueError, match="compression must be in"):
        FedOTConfig(compression=1.0)
    with pytest.raises(ValueError, match="fedot shares one emulator: case must be 1 and shared_emulator True"):
        FedOTConfig(shared_emulator=False)
    assert make_method("fedot").config.distill_steps == 50  # distillation on by default


# --- determinism -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, method_config", [("fedot", FEDOT), ("hetlora", HETLORA)])
def test_same_seed_same_numbers(method, method_config):
    decisions = make_method(method, method_config).device_decisions(3) if method == "hetlora" else None
    runs = [RoundRunner(_config(method, method_config, seed=s)).run(2, decisions) for s in (7, 7, 8)]
    assert _summaries(runs[0]) == _summaries(runs[1])
    assert _summaries(runs[0]) != _summaries(runs[2])
    assert all(math.isfinite(r.full_perplexity) for r in runs[0])


# --- HetLoRA ---------------------------------------------------------------------------------------------------


def test_hetlora_per_device_ranks_in_bytes_and_global_rank():
    runner = RoundRunner(_config("hetlora", HETLORA))
    decisions = runner.method.device_decisions(3)
    assert [d.lora_rank for d in decisions] == [2, 4, 8]
    runner.run_round(decisions)
    up = {m.device: m.num_bytes for m in runner.log.messages if m.direction == "up"}
    down = {m.device: m.num_bytes for m in runner.log.messages if m.direction == "down" and m.kind == "adapter"}
    assert up[0] * 2 == up[1] and up[1] * 2 == up[2] and up == down
    state = runner.server.global_state
    assert lora_rank_of(state) == 8
    assert {int(k.split(".")[2]) for k in state} == set(range(runner.server.num_layers))  # LoRA on every block
    with pytest.raises(ValueError, match="lora_rank must be in"):
        runner.run_round([DeviceDecision(True, lora_rank=16)] * 3)


def _known_lora_model(model, rank=4):
    lora_model = attach_lora(copy.deepcopy(model), full_spec(model.config.n_layer), LoraSpec(rank))
    modules = [m for m in lora_model.modules() if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict)]
    with torch.no_grad():
        for m in modules:
            scale = torch.arange(1, rank + 1, dtype=torch.float32)
            m.lora_A["default"].weight.copy_(0.01 * scale[:, None].expand_as(m.lora_A["default"].weight))
            m.lora_B["default"].weight.copy_(0.02 * scale[None, :].expand_as(m.lora_B["default"].weight))
    return lora_model.eval(), modules


@pytest.mark.parametrize("gamma, tail", [(0.99, [4]), (0.5, [3, 4])])
def test_hetlora_loss_adds_lambda_times_the_tail_norms(foundation, tuning_blocks, gamma, tail):
    model, _ = foundation
    lora_model, modules = _known_lora_model(model)
    a_in, b_out = modules[0].lora_A["default"].weight.shape[1], modules[0].lora_B["default"].weight.shape[0]
    # column j of B is 0.02·j everywhere, row j of A is 0.01·j: ‖B_tail‖ = 0.02·√(out·Σj²), ‖A_tail‖ = 0.01·√(in·Σj²)
    squares = sum(j * j for j in tail)
    expected = len(modules) * 0.02 * math.sqrt(b_out * squares) * 0.01 * math.sqrt(a_in * squares)
    loss_fn = HetLoRALoss(lam=0.5, gamma=gamma)
    batch = tuning_blocks[1][:2]
    with torch.no_grad():
        plain, regularised, tail_norm = lm_loss(lora_model, batch), loss_fn(lora_model, batch), loss_fn.tail_norm(lora_model)
    assert float(tail_norm) == pytest.approx(expected, rel=1e-5)
    assert float(regularised - plain) == pytest.approx(0.5 * expected, rel=1e-4)
    assert pickle.loads(pickle.dumps(loss_fn)) == loss_fn
    with pytest.raises(ValueError, match="LoRA modules"):
        loss_fn(model, batch)


def _state(rank, tail_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(rank, 6, generator=g), torch.randn(5, rank, generator=g)
    a[-1] *= tail_scale
    b[:, -1] *= tail_scale
    return {"transformer.h.0.attn.c_attn.lora_A.weight": a, "transformer.h.0.attn.c_attn.lora_B.weight": b}


def test_hetlora_aggregations_and_self_pruning():
    states, weights = [_state(2, seed=1), _state(8, seed=2)], [3.0, 1.0]
    padded = [{k: torch.nn.functional.pad(t, (0, 6) if "lora_B" in k else (0, 0, 0, 6)) for k, t in states[0].items()},
              states[1]]
    sparsity = HetLoRA(HetLoRAConfig()).average(states, weights)
    zero_pad = HetLoRA(HetLoRAConfig(aggregation="zero-pad")).average(states, weights)
    for key, tensor in hetlora(padded).items():
        assert torch.allclose(sparsity[key], tensor)
        assert torch.allclose(zero_pad[key], (3 * padded[0][key] + padded[1][key]) / 4)

    # exact: the module's B·A is the weighted mean of the products (ranks 2 + 4 ≤ 8, so exactly representable)
    g = torch.Generator().manual_seed(3)
    key_a, key_b = "transformer.h.0.attn.c_attn.lora_A.weight", "transformer.h.0.attn.c_attn.lora_B.weight"
    wide = [{key_a: torch.randn(r, 12, generator=g), key_b: torch.randn(10, r, generator=g)} for r in (2, 4)]
    products = [w[key_b].double() @ w[key_a].double() for w in wide]
    norms = [float(torch.linalg.matrix_norm(m)) for m in products]
    for aggregation, w in (("sparsity", norms), ("zero-pad", weights)):
        exact = HetLoRA(HetLoRAConfig(aggregation=aggregation, lora_aggregation="exact")).average(wide, weights)
        target = (w[0] * products[0] + w[1] * products[1]) / sum(w)
        got = exact[key_b].double() @ exact[key_a].double()
        assert lora_rank_of(exact) == 8 and torch.allclose(got, target, atol=1e-5), aggregation



def test_hetlora_device_prunes_its_rank_when_its_tail_norm_shrank(foundation):
    model, _ = foundation
    lora_model, modules = _known_lora_model(model, rank=8)
    # tail component 7 of each module: ‖B[:, 7:]‖·‖A[7:]‖ = 0.02·8·√out · 0.01·8·√in
    a_in, b_out = modules[0].lora_A["default"].weight.shape[1], modules[0].lora_B["default"].weight.shape[0]
    tail = len(modules) * 0.16 * math.sqrt(b_out) * 0.08 * math.sqrt(a_in)
    objective, private = HetLoRALoss(), {}
    objective.finish(lora_model, private)  # first round: nothing to compare with
    assert private == {"tail_norm": pytest.approx(tail, rel=1e-5)}
    state = adapter_state(lora_model, full_spec(model.config.n_layer))
    assert objective.upload(state, private) is state

    objective.finish(lora_model, private)  # the same norm again: not smaller, no prune
    assert "rank" not in private
    with torch.no_grad():
        for m in modules:
            m.lora_A["default"].weight[7:] *= 0.5  # the tail shrank: prune to ⌊0.99·8⌋ = 7
    objective.finish(lora_model, private)
    assert private["rank"] == 7 and private["tail_norm"] == pytest.approx(tail / 2, rel=1e-5)
    uploaded = objective.upload(adapter_state(lora_model, full_spec(model.config.n_layer)), private)
    assert lora_rank_of(uploaded) == 7

    for kept in (HetLoRALoss(self_prune=False), HetLoRALoss(min_rank=8)):  # switched off / at its floor
        private = {"tail_norm": 2 * tail}
        kept.finish(lora_model, private)
        assert private.get("rank", 8) == 8


def test_hetlora_self_pruning_in_the_engine_shrinks_uploads_and_later_downloads():
    runner = RoundRunner(EngineConfig(method="hetlora", num_devices=3, max_eval_blocks=8,
                                      method_config=HetLoRAConfig(train=FAST)))
    assert runner.method.config.self_prune and runner.method.config.lam == 0.01 and runner.method.config.gamma == 0.99
    for _ in range(6):
        runner.run_round()
        if runner.method.device_ranks:
            break
    assert runner.method.device_ranks, "no device pruned its rank in 6 rounds"
    device, rank = next(iter(runner.method.device_ranks.items()))
    assert rank == 7 and runner.executor.clients[device].private["rank"] == 7

    def adapter_bytes(direction, round_idx):
        return next(m.num_bytes for m in runner.log.messages
                    if (m.direction, m.kind, m.device, m.round) == (direction, "adapter", device, round_idx))

    pruned_in = runner.round
    assert adapter_bytes("up", pruned_in) * 8 == adapter_bytes("down", pruned_in) * 7  # the device uploads 7 of 8
    result = runner.run_round()
    assert adapter_bytes("down", pruned_in + 1) * 8 == adapter_bytes("down", pruned_in) * 7  # and is sent 7 from then on
    assert result.metrics["pruned_devices"] >= 1


@pytest.mark.parametrize("kwargs, field", [
    ({"aggregation": "mean"}, "aggregation must be one of"),
    ({"ranks": (2, 16)}, "ranks must be"),
    ({"lora_aggregation": "svd"}, "lora_aggregation must be one of"),
    ({"gamma": 1.0}, "gamma must be"),
    ({"lam": -1.0}, "lam must be"),
    ({"min_rank": 9}, "min_rank must be"),
])
def test_hetlora_config_errors(kwargs, field):
    with pytest.raises(ValueError, match=field):
        HetLoRAConfig(**kwargs)


def test_a_config_of_another_method_is_refused_not_upcast():
    with pytest.raises(ValueError, match=r"fedot takes a FedOTConfig .* a FedPEATConfig would drop its fields \['case', "
                                         r"'shared_emulator', 'distill_steps', 'distill_blocks'\]"):
        FedOT(FedPEATConfig(distill_steps=7))
    with pytest.raises(ValueError, match="hetlora takes a HetLoRAConfig, got dict"):
        HetLoRA({"lam": 0.1})
    method = FedOT(MethodConfig(num_adapter_layers=2))  # a plain MethodConfig carries its shared fields over
    assert method.config.num_adapter_layers == 2 and method.config.distill_steps == 50
