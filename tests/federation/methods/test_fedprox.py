"""FedProx: the proximal term by hand, μ = 0 is FedPETuning, a large μ keeps the uploads near the global adapter."""

from __future__ import annotations

import copy

import pytest
import torch

from federation.adapters import LoraSpec, attach_lora
from federation.emulator import full_spec
from federation.engine import EngineConfig, RoundRunner
from federation.methods import FedProxConfig, MethodConfig, ProximalLoss, make_method
from federation.training import LocalTrainConfig, lm_loss
from tests.helpers import RecordingExecutor

FAST = LocalTrainConfig(steps=3, batch_size=4, lr=3e-3)


def _round(method: str, config) -> tuple[RoundRunner, RecordingExecutor]:
    executor = RecordingExecutor()
    runner = RoundRunner(EngineConfig(method=method, num_devices=2, seed=5, max_eval_blocks=8, method_config=config), executor)
    runner.run_round()
    return runner, executor


def test_proximal_loss_adds_half_mu_times_the_squared_distance(foundation, tuning_blocks):
    model = attach_lora(copy.deepcopy(foundation[0]), full_spec(foundation[0].config.n_layer), LoraSpec(4))
    objective = ProximalLoss(mu=0.5)
    objective.prepare(model, {})
    assert objective.anchor and all("lora_" in name for name in objective.anchor)
    moved = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.add_(0.1)  # every LoRA A weight 0.1 away from the anchor
                moved += p.numel()
    batch = tuning_blocks[1][:2]
    with torch.no_grad():
        extra = objective.loss(model, batch) - lm_loss(model, batch)
    assert float(extra) == pytest.approx(0.5 * 0.5 * 0.01 * moved, rel=1e-4)
    with pytest.raises(ValueError, match="mu must be >= 0"):
        FedProxConfig(mu=-1.0)


def test_mu_zero_is_fedpetuning_and_a_large_mu_keeps_uploads_near_the_global_adapter():
    prox0, _ = _round("fedprox", FedProxConfig(train=FAST, mu=0.0))
    plain, _ = _round("fedpetuning", MethodConfig(train=FAST))
    for key, tensor in plain.server.global_state.items():
        assert torch.equal(prox0.server.global_state[key], tensor), key

    def drift(executor):
        return [sum(float(((u.state[k] - job.trainable_payload[k]) ** 2).sum()) for k in u.state)
                for job, u in zip(executor.jobs, executor.updates)]

    _, free = _round("fedprox", FedProxConfig(train=FAST, mu=0.0))
    _, held = _round("fedprox", FedProxConfig(train=FAST, mu=1e4))
    assert all(h < 0.5 * f for h, f in zip(drift(held), drift(free)))
    assert make_method("fedprox").config.mu == 0.01
