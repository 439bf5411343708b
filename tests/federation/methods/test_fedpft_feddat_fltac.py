"""FedPFT, FedDAT and FL-TAC on the shared round (and HetLoRA's persistent rank self-pruning)."""

from __future__ import annotations

import copy
import math
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from peft import get_peft_model_state_dict

from federation.adapters import LoraSpec, attach_lora, load_adapter_state, lora_rank_of, truncate_rank
from federation.aggregation import clustering_accuracy, lora_pairs
from federation.client import ClientUpdate
from federation.emulator import build_submodel, full_spec, submodel_state
from federation.engine import EngineConfig, RoundRunner
from federation.methods import (
    FLTAC,
    DualAdapterObjective,
    FedDATConfig,
    FedPFTConfig,
    HetLoRA,
    HetLoRAConfig,
    MethodConfig,
)
from federation.methods.feddat import LOCAL, SHARED, TEACHER
from federation.pruning import (
    distill_pruned,
    ffn_activation_scores,
    ffn_weight_product_loss,
    neuron_saliency,
    pruned_spec,
    top_neurons,
)
from federation.submodels import SubModels
from federation.system import MemoryFootprint
from federation.training import DistillConfig, LocalTrainConfig, train_local
from tests.helpers import FAST_TRAIN

FAST = FAST_TRAIN
TASKS = ("pydocs", "licenses", "docstrings")
CONFIGS = {
    "fedpft": dict(method_config=FedPFTConfig(train=FAST, distill_steps=3, refresh_every=1)),
    "feddat": dict(method_config=FedDATConfig(train=FAST), domains=TASKS, partition="dirichlet", dirichlet_alpha=0.1),
    "fltac": dict(method_config=MethodConfig(train=FAST), domains=TASKS),
}


def _runner(method: str, seed: int = 0, **kwargs) -> RoundRunner:
    return RoundRunner(EngineConfig(method=method, num_devices=3, seed=seed, max_eval_blocks=8, **{**CONFIGS[method], **kwargs}))


def _summaries(results):
    return [{k: v for k, v in r.summary().items() if k != "wall_time_s"} for r in results]


@pytest.mark.slow  # 45 s for the three; each method keeps a one-round test in the fast suite
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_two_rounds_are_seed_deterministic_and_upload_adapters_only(method):
    runs = [_runner(method, seed=s) for s in (3, 3, 4)]
    results = [r.run(2) for r in runs]
    assert _summaries(results[0]) == _summaries(results[1])
    assert _summaries(results[0]) != _summaries(results[2])
    assert all(math.isfinite(r.full_perplexity) for r in results[0])
    assert results[0][-1].full_perplexity < runs[0].initial_perplexity
    uploads = [m for m in runs[0].log.messages if m.direction == "up"]
    assert uploads and all(m.kind == "adapter" for m in uploads)
    assert all("lora_" in name for m in uploads for name in m.keys)


# --- FedPFT ----------------------------------------------------------------------------------------------------


def test_pruned_spec_keeps_the_most_salient_neurons_and_whole_end_blocks(foundation):
    model, _ = foundation
    spec = pruned_spec(model, 0.25, num_adapter_layers=1)
    d_ff = model.config.n_inner or 4 * model.config.n_embd
    pruned = dict(spec.ffn_neurons)
    assert sorted(pruned) == list(range(1, model.config.n_layer - 1))  # first and last blocks whole
    for block, neurons in pruned.items():
        assert len(neurons) == d_ff // 4
        assert list(neurons) == top_neurons(neuron_saliency(model.transformer.h[block]), 0.25).tolist()
    assert not spec.is_full and full_spec(model.config.n_layer).is_full
    # the device-side builder reproduces the server's pruned model from the payload alone
    sub = build_submodel(model.config, spec, submodel_state(model, spec))
    for block, neurons in pruned.items():  # neuron j of the pruned FFN is full neuron neurons[j]
        full, small, idx = model.transformer.h[block].mlp, sub.transformer.h[block].mlp, torch.tensor(neurons)
        assert torch.equal(small.c_fc.weight, full.c_fc.weight[:, idx]) and torch.equal(small.c_fc.bias, full.c_fc.bias[idx])
        assert torch.equal(small.c_proj.weight, full.c_proj.weight[idx]) and torch.equal(small.c_proj.bias, full.c_proj.bias)
    for block in (0, model.config.n_layer - 1):
        assert torch.equal(sub.transformer.h[block].mlp.c_fc.weight, model.transformer.h[block].mlp.c_fc.weight)
    frac = sum(p.numel() for b in sub.transformer.h for p in b.parameters()) / sum(
        p.numel() for b in model.transformer.h for p in b.parameters())
    assert 0.55 < frac < 0.65  # ≈ a layer-drop emulator keeping 6 of 10 blocks (ε = 0.5)


def test_distill_pruned_trains_only_pruned_ffns_with_a_live_weight_product_term(foundation, tuning_blocks):
    model, _ = foundation
    spec = pruned_spec(model, 0.25, num_adapter_layers=1)
    sub = build_submodel(model.config, spec, submodel_state(model, spec))
    before = {k: v.clone() for k, v in sub.state_dict().items()}
    idx = spec.pruned_neurons()
    product_before = ffn_weight_product_loss(model.transformer.h[1], sub.transformer.h[1], idx[1]).item()
    losses = distill_pruned(model, sub, spec, tuning_blocks[0], DistillConfig(steps=15, lr=3e-3), weight_product=1.0)
    assert losses[-1] < losses[0]
    changed = {k for k, v in sub.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".mlp.c_" in k for k in changed)
    assert not any(k.startswith(("transformer.h.0.", f"transformer.h.{model.config.n_layer - 1}.")) for k in changed)
    assert ffn_weight_product_loss(model.transformer.h[1], sub.transformer.h[1], idx[1]).item() < product_before
    scores = ffn_activation_scores(sub, tuning_blocks[1][:4], [1, 2])
    assert set(scores) == {1, 2} and scores[1].shape == (len(idx[1]),) and (scores[1] >= 0).all()


def test_neuron_level_distillation_updates_only_the_chosen_neurons(foundation, tuning_blocks):
    model, _ = foundation
    spec = pruned_spec(model, 0.25, num_adapter_layers=1)
    sub = build_submodel(model.config, spec, submodel_state(model, spec))
    before = {k: v.clone() for k, v in sub.state_dict().items()}
    chosen = {1: torch.tensor([0, 5, 9]), 3: torch.tensor([2])}
    losses = distill_pruned(model, sub, spec, tuning_blocks[0], DistillConfig(steps=10, lr=3e-3), neurons=chosen)
    assert losses[-1] < losses[0]
    after = sub.state_dict()
    for key, tensor in after.items():
        block = int(key.split(".")[2]) if key.startswith("transformer.h.") else None
        if block not in chosen or ".mlp.c_fc." not in key and "mlp.c_proj.weight" not in key:
            assert torch.equal(tensor, before[key]), key  # bit-identical outside the chosen neurons
            continue
        moved = (tensor != before[key]).any(dim=0 if "c_fc.weight" in key else 1) if tensor.dim() == 2 else tensor != before[key]
        assert moved.nonzero().flatten().tolist() == chosen[block].tolist(), key
    assert not any(p.requires_grad for p in sub.parameters()) and not any(p._backward_hooks for p in sub.parameters())
    with pytest.raises(ValueError, match="neurons must name pruned blocks"):
        distill_pruned(model, sub, spec, tuning_blocks[0], DistillConfig(steps=1), neurons={0: torch.tensor([0])})


def test_fedpft_devices_hold_only_their_neurons_and_get_refreshed_ones():
    runner = _runner("fedpft")
    runner.run_round()
    spec = runner.method.current_spec()
    downloads = [m for m in runner.log.messages if m.direction == "down" and m.kind == "emulator"]
    assert len(downloads) == 3  # one sub-model per device
    payload = runner.server.frozen_payload(spec)
    assert set(downloads[0].keys) == set(payload)
    for block, neurons in spec.ffn_neurons:
        assert payload[f"transformer.h.{block}.mlp.c_fc.weight"].shape[1] == len(neurons)
        assert payload[f"transformer.h.{block}.mlp.c_proj.weight"].shape[0] == len(neurons)
    before = runner.server.models.get(spec).state_dict()
    second = runner.run_round()  # refresh_every=1: neuron-level distillation before round 2, sub-model re-sent
    new_spec = runner.method.current_spec()
    assert new_spec.revision == 1 and new_spec.ffn_neurons == spec.ffn_neurons and second.exchanges == 3
    assert second.metrics["distilled_neurons"] == sum(round(0.5 * len(n)) for _, n in spec.ffn_neurons)
    after = runner.server.models.get(new_spec).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"transformer.h.{b}.mlp.c_{n}" for b, _ in spec.ffn_neurons
                       for n in ("fc.weight", "fc.bias", "proj.weight")}
    with pytest.raises(ValueError, match="compression must be 0"):
        runner.run_round([runner.default_decisions(0.5)[0]] * 3)
    for kwargs, field in [({"keep_ratio": 0.0}, "keep_ratio"), ({"refresh_fraction": 2.0}, "refresh_fraction"),
                          ({"distill_steps": -1}, "distill_steps")]:
        with pytest.raises(ValueError, match=field):
            FedPFTConfig(**kwargs)


# --- FedDAT ----------------------------------------------------------------------------------------------------


def test_dual_adapter_teacher_is_half_local_half_frozen_shared(foundation, tuning_blocks):
    model, _ = foundation
    spec = full_spec(model.config.n_layer)
    lora_model = attach_lora(copy.deepcopy(model), spec, LoraSpec(4))
    with torch.no_grad():  # a non-trivial received shared adapter (B is zero at init)
        for name, p in lora_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    objective, private = DualAdapterObjective(temperature=3.0), {}
    objective.prepare(lora_model, private)
    assert {SHARED, LOCAL, TEACHER} <= set(lora_model.peft_config)
    shared = {k: v.clone() for k, v in get_peft_model_state_dict(lora_model, adapter_name=SHARED).items()}
    # with the local adapter set equal to the shared one, the DAT (0.5·A_c + 0.5·Â_s) equals the shared model
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(lora_model, shared, adapter_name=LOCAL)
    batch = tuning_blocks[1][:2]
    with torch.no_grad():
        objective._activate(lora_model, [LOCAL, TEACHER])
        dat = lora_model(input_ids=batch).logits
        objective._activate(lora_model, [SHARED])
        student = lora_model(input_ids=batch).logits
    assert torch.allclose(dat, student, atol=1e-5)
    objective._activate(lora_model, [SHARED, LOCAL])
    stats = train_local(lora_model, tuning_blocks[0], LocalTrainConfig(steps=3, batch_size=2), seed=0, loss_fn=objective)
    objective.finish(lora_model, private)
    assert math.isfinite(stats.mean_loss)
    after = {name: get_peft_model_state_dict(lora_model, adapter_name=name) for name in (SHARED, LOCAL, TEACHER)}
    assert all(torch.equal(after[TEACHER][k], shared[k]) for k in shared)  # the teacher copy stays frozen
    assert any(not torch.equal(after[SHARED][k], shared[k]) for k in shared)  # shared step trained A_s
    assert any(not torch.equal(after[LOCAL][k], shared[k]) for k in shared)  # teacher step trained A_c
    assert all(torch.equal(private[LOCAL][k], after[LOCAL][k]) for k in shared)
    assert pickle.loads(pickle.dumps(objective)) == objective


def test_feddat_keeps_the_local_adapter_on_the_device_between_rounds():
    runner = _runner("feddat")
    runner.run_round()
    first = {i: {k: v.clone() for k, v in c.private[LOCAL].items()} for i, c in enumerate(runner.executor.clients)}
    runner.run_round()
    for i, client in enumerate(runner.executor.clients):
        assert set(client.private[LOCAL]) == set(first[i])
        assert any(not torch.equal(client.private[LOCAL][k], first[i][k]) for k in first[i])  # kept and trained on
    uploaded = {name for m in runner.log.messages if m.direction == "up" for name in m.keys}
    assert uploaded == set(runner.server.global_state)  # only the shared adapter crosses the wire
    with pytest.raises(ValueError, match="temperature"):
        FedDATConfig(temperature=0.0)


# --- FL-TAC ----------------------------------------------------------------------------------------------------


def test_fltac_one_adapter_per_task_clustered_with_accuracy_logged():
    runner = _runner("fltac")
    result = runner.run_round()
    tasks = [len(t) for t in runner.server.device_tasks]
    uploads = [m for m in runner.log.messages if m.direction == "up"]
    assert len(uploads) == sum(tasks) == 9  # IID over 3 domains: every device holds every task
    assert result.metrics["clusters"] == 3
    clusters = []  # the cluster each (device, task) slot got back, numbered by first appearance
    for slot in sorted(runner.method.slot_states):
        state = runner.method.slot_states[slot]
        if not any(state is c for c in clusters):
            clusters.append(state)
    labels = [next(c for c, state in enumerate(clusters) if state is runner.method.slot_states[slot])
              for slot in sorted(runner.method.slot_states)]
    tasks = [task for _, task in sorted(runner.method.slot_states)]
    assert result.metrics["clustering_accuracy"] == clustering_accuracy(np.array(labels), np.array(tasks))
    per_task = [result.metrics[f"ppl_{d}"] for d in TASKS]
    counts = [int((runner.data.eval_labels == t).sum()) for t in range(3)]
    pooled = math.exp(sum(n * math.log(p) for n, p in zip(counts, per_task)) / sum(counts))
    assert result.full_perplexity == pytest.approx(pooled)
    assert set(runner.method.slot_states) == {(i, t) for i in range(3) for t in range(3)}
    with pytest.raises(ValueError, match="domains must name >= 2 tasks"):
        _runner("fltac", domains=("pydocs",))


def test_fltac_aggregation_uses_no_task_labels(recording_executor):
    executor = recording_executor()
    runner = RoundRunner(EngineConfig(method="fltac", num_devices=2, max_eval_blocks=6, domains=TASKS,
                                      method_config=MethodConfig(train=FAST)), executor)
    runner.run_round()
    updates = executor.updates
    # every upload claims a task of its own: grouping by label would average nothing, k-means still finds 3 clusters
    relabelled = [replace(u, task=10 + i) for i, u in enumerate(updates)]
    results = []
    for batch in (updates, relabelled):
        method = FLTAC()
        method.setup(runner.server.models, runner.server.device_tasks, 3)
        method.init_global_state(seed=runner.config.seed)
        method.configure(1, [], {})
        method.aggregate({}, batch)
        results.append([method.slot_states[(u.device, u.task)] for u in batch])
    assert len({id(state) for state in results[0]}) == 3
    for got, expected in zip(*results):  # each upload gets back the same cluster average, whatever its label
        assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in got)


def test_fltac_exact_aggregation_averages_each_clusters_products(recording_executor):
    executor = recording_executor()
    config = EngineConfig(method="fltac", num_devices=2, max_eval_blocks=6, domains=TASKS,
                          method_config=MethodConfig(train=FAST, lora_aggregation="exact"))
    runner = RoundRunner(config, executor)
    runner.run_round()
    for (device, task), state in runner.method.slot_states.items():
        mine = next(u.state for u in executor.updates if (u.device, u.task) == (device, task))
        members = [u.state for u in executor.updates if runner.method.slot_states[(u.device, u.task)] is state]
        assert any(m is mine for m in members)
        for prefix, (a, b) in lora_pairs(state).items():
            mean = sum(m[b].double() @ m[a].double() for m in members) / len(members)
            u, sv, vh = torch.linalg.svd(mean, full_matrices=False)  # best rank-8 approximation of the mean product
            target = (u[:, :8] * sv[:8]) @ vh[:8]
            assert torch.allclose(state[b].double() @ state[a].double(), target, atol=1e-5), prefix


# --- HetLoRA rank self-pruning persists ------------------------------------------------------------------------


def _update(device: int, state) -> ClientUpdate:
    return ClientUpdate(device, 1, state, 10, 0.0, 0, 0.0, MemoryFootprint(0, 0, 0, 0, 0))


def test_hetlora_server_learns_pruned_ranks_from_upload_shapes(foundation):
    from federation.methods import DeviceDecision

    model, _ = foundation
    method = HetLoRA(HetLoRAConfig())
    spec = full_spec(model.config.n_layer)
    torch.manual_seed(0)
    method.setup(SubModels(model, None))
    global_state = method.init_global_state(seed=0)
    jobs = method.configure(1, [DeviceDecision(), DeviceDecision(lora_rank=4)], global_state)  # ranks 8 and 4 (chosen)
    sent = [job.trainable for job in jobs]
    uploads = [_update(0, truncate_rank(sent[0], 7)), _update(1, sent[1])]  # device 0 pruned 8 → 7 on its own
    merged = method.aggregate(global_state, uploads)
    assert lora_rank_of(merged) == 8 and method.device_ranks == {0: 7}
    second = method.configure(2, [DeviceDecision(), DeviceDecision()], merged)
    assert [job.lora.rank for job in second] == [7, 8]
    assert lora_rank_of(second[0].trainable) == 7
    assert method.round_metrics() == {"pruned_devices": 1.0}
    lora_model = attach_lora(copy.deepcopy(model), spec, LoraSpec(7))
    load_adapter_state(lora_model, second[0].trainable, spec)
