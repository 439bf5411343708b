"""``fedpeat bench engine``: engine overhead and emulator-vs-full-model speed/memory, as ratios from one run.

Speed is measured here, never asserted in unit tests (shared, noisy machines). Every number of a table comes
from the same process, so the ratios are comparable even when absolute speeds drift.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from rich.table import Table

from federation.adapters import attach_lora
from federation.emulator import build_emulator, layer_drop_spec
from federation.engine import EngineConfig, RoundRunner
from federation.methods import DeviceDecision, FedPEATConfig
from federation.system import tensor_bytes
from federation.training import LocalTrainConfig, lm_loss, train_local


@dataclass(frozen=True)
class MemoryMeasurement:
    """Bytes of the tensors alive in one training step, measured (not modelled)."""

    weights_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    saved_activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.gradient_bytes + self.optimizer_bytes + self.saved_activation_bytes


def measure_training_memory(model: torch.nn.Module, batch: torch.Tensor) -> MemoryMeasurement:
    """One AdamW step on ``batch``; sums the bytes of the tensors autograd saves for backward (via
    ``saved_tensors_hooks``, storage counted once), the gradients and the optimiser state."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-4)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = lm_loss(model, batch)
    loss.backward()
    optimiser.step()
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    activations = sum(n for ptr, n in storages.items() if ptr not in param_ptrs)
    state = [t for s in optimiser.state.values() for t in s.values() if torch.is_tensor(t)]
    unique_params = {p.data_ptr(): p for p in model.parameters()}.values()
    gradients = (cast(torch.Tensor, p.grad) for p in params)  # backward gave every trainable parameter one
    result = MemoryMeasurement(tensor_bytes(unique_params), tensor_bytes(gradients), tensor_bytes(state), activations)
    optimiser.zero_grad(set_to_none=True)
    model.eval()
    return result


def _tokens_per_s(model: torch.nn.Module, blocks: torch.Tensor, steps: int, batch_size: int) -> float:
    config = LocalTrainConfig(steps=steps, batch_size=batch_size)
    train_local(model, blocks, LocalTrainConfig(steps=2, batch_size=batch_size), seed=1)  # warm-up
    stats = train_local(model, blocks, config, seed=0)
    return stats.tokens / stats.wall_time_s


def bench_emulator(steps: int = 20, batch_size: int = 8, ratios: tuple[float, ...] = (0.0, 0.5, 0.75)) -> list[dict]:
    """LoRA training tokens/s and measured memory of emulators vs the full model (ε = 0)."""
    runner = RoundRunner(EngineConfig(num_devices=1, max_eval_blocks=1))
    blocks = runner.data.device_blocks[0]
    lora = runner.method.lora  # FedPEAT's adapter, as devices train it
    assert lora is not None  # FedPEAT trains LoRA
    rows = []
    for ratio in ratios:
        spec = layer_drop_spec(runner.model.config.n_layer, 1, ratio)
        torch.manual_seed(0)
        model = attach_lora(build_emulator(runner.model, spec), spec, lora)
        memory = measure_training_memory(model, blocks[:batch_size])
        rows.append({
            "compression": ratio, "blocks": len(spec.layers), "tokens_per_s": _tokens_per_s(model, blocks, steps, batch_size),
            "memory_bytes": memory.total_bytes, "activation_bytes": memory.saved_activation_bytes,
        })
    full = rows[0]
    for row in rows:
        row["layer_ratio"] = full["blocks"] / row["blocks"]
        row["speedup"] = row["tokens_per_s"] / full["tokens_per_s"]
        row["memory_saving"] = full["memory_bytes"] / row["memory_bytes"]
    return rows


def bench_engine_overhead(steps: int = 20, batch_size: int = 8, repeats: int = 3) -> dict:
    """Wall time of one steady-state engine round (1 device, ε = 0.5, no evaluation) vs a bare torch loop
    doing the same local steps on the same emulator; best of ``repeats`` each, interleaved."""
    train = LocalTrainConfig(steps=steps, batch_size=batch_size)
    config = EngineConfig(num_devices=1, max_eval_blocks=1, method_config=FedPEATConfig(train=train))
    runner = RoundRunner(config)
    decision = [DeviceDecision(True, 0.5)]
    runner.run_round(decision, evaluate=False)  # first round: emulator exchange + model build
    spec = runner.server.device_specs[0]
    assert runner.method.lora is not None  # FedPEAT trains LoRA
    bare = attach_lora(build_emulator(runner.model, spec), spec, runner.method.lora)  # the same adapter as the engine's
    blocks = runner.data.device_blocks[0]
    engine_s, bare_s = [], []
    for rep in range(repeats):
        started = time.perf_counter()
        runner.run_round(decision, evaluate=False)
        engine_s.append(time.perf_counter() - started)
        params = [p for p in bare.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=train.lr)
        generator = torch.Generator().manual_seed(rep)
        started = time.perf_counter()
        bare.train()
        for _ in range(steps):
            batch = blocks[torch.randint(len(blocks), (batch_size,), generator=generator)]
            loss = lm_loss(bare, batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            optimiser.step()
        bare_s.append(time.perf_counter() - started)
    return {"engine_round_s": min(engine_s), "bare_loop_s": min(bare_s), "overhead_ratio": min(engine_s) / min(bare_s)}


def engine_tables(overhead: dict, emulator_rows: list[dict]) -> tuple[Table, Table]:
    first = Table(title="Engine overhead (one round, 1 device, ε=0.5, no evaluation)")
    for column in ("engine round (s)", "bare torch loop (s)", "ratio (target ≤ 1.05)"):
        first.add_column(column, justify="right")
    first.add_row(f"{overhead['engine_round_s']:.3f}", f"{overhead['bare_loop_s']:.3f}", f"{overhead['overhead_ratio']:.3f}")
    second = Table(title="Emulator vs full model (LoRA training, measured tensors)")
    for column in ("ε", "blocks", "tokens/s", "speed-up", "memory (MB)", "memory saving", "layer-count ratio"):
        second.add_column(column, justify="right")
    for row in emulator_rows:
        second.add_row(f"{row['compression']:.2f}", str(row["blocks"]), f"{row['tokens_per_s']:.0f}", f"{row['speedup']:.2f}×",
                       f"{row['memory_bytes'] / 1e6:.1f}", f"{row['memory_saving']:.2f}×", f"{row['layer_ratio']:.2f}×")
    return first, second


def _single_env_stepper(env) -> Callable[[int], None]:
    """A function taking ``n`` random-action steps of a single Gymnasium env (action sampling included, as for
    CartPole; resets when an episode ends). The env is reset with seed 0 and stepped ``WARMUP_STEPS`` times first
    (loading compiled kernels)."""
    env.reset(seed=0)
    env.action_space.seed(0)

    def run(n: int) -> None:
        for _ in range(n):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()

    run(WARMUP_STEPS)
    return run


WARMUP_STEPS = 100
BLOCKS = 5
"""Each speed is the best of this many timed blocks, the blocks of the compared envs interleaved: on a shared
machine, load slows a block down but never speeds one up, so the best block is the least disturbed estimate (as
``timeit`` recommends), and interleaving exposes the envs of one ratio to the same load."""


def best_rates(steppers: dict[str, Callable[[int], None]], steps: dict[str, int],
               units_per_step: dict[str, int] | None = None, blocks: int = BLOCKS) -> dict[str, float]:
    """Units per second of each stepper (``steps[name]`` calls split into ``blocks`` timed blocks, interleaved
    across steppers; best block). A unit is one step, or ``units_per_step[name]`` (e.g. the envs of a vector
    env)."""
    best = dict.fromkeys(steppers, 0.0)
    for _ in range(blocks):
        for name, run in steppers.items():
            n = max(1, steps[name] // blocks)
            started = time.perf_counter()
            run(n)
            rate = n * (units_per_step or {}).get(name, 1) / (time.perf_counter() - started)
            best[name] = max(best[name], rate)
    return best


def bench_env(steps: int = 20_000, num_envs: int = 1024, vector_steps: int = 500, ppo_timesteps: int = 8192,
              blocks: int = BLOCKS) -> dict:
    """FedPEAT-v1 (N=10) vs CartPole-v1 steps/s (``steps`` each); the vector env at ``num_envs`` (``vector_steps``
    batched steps of random actions); share of the wall time of a ``ppo_timesteps`` PPO run (the benchmark's settings)
    spent in the env.
    Speeds: best of ``blocks`` interleaved blocks (``best_rates``)."""
    for name, value, minimum in (("steps", steps, 1), ("num_envs", num_envs, 1), ("vector_steps", vector_steps, 1),
                                 ("ppo_timesteps", ppo_timesteps, 64), ("blocks", blocks, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    import json
    import tempfile
    from pathlib import Path

    import gymnasium as gym
    import numpy as np

    import fedpeat_env  # noqa: F401
    from agents.train import TrainConfig, train
    from fedpeat_env.vector import FedPEATVectorEnv

    vector = FedPEATVectorEnv(num_envs)
    vector.reset(seed=0)
    vector.action_space.seed(0)
    actions = itertools.cycle([vector.action_space.sample() for _ in range(16)])

    def step_vector(n: int) -> None:
        for _ in range(n):
            vector.step(next(actions))

    step_vector(WARMUP_STEPS)
    steppers = {"cartpole": _single_env_stepper(gym.make("CartPole-v1")),
                "fedpeat": _single_env_stepper(gym.make("FedPEAT-v1")), "vector": step_vector}
    rates = best_rates(steppers, {"cartpole": steps, "fedpeat": steps, "vector": vector_steps},
                       {"vector": num_envs}, blocks)
    with tempfile.TemporaryDirectory() as tmp:
        # the benchmark's PPO (agents/hyperparams/ppo.yml): its rollouts and minibatches
        train(TrainConfig.from_hyperparams("ppo", timesteps=ppo_timesteps, out_dir=tmp), progress=False)
        share = json.loads((Path(tmp) / "metrics.json").read_text())["env_time_share"]
    return {"cartpole_steps_per_s": rates["cartpole"], "fedpeat_steps_per_s": rates["fedpeat"],
            "ratio_to_cartpole": rates["fedpeat"] / rates["cartpole"], "vector_env_steps_per_s": rates["vector"],
            "vector_ratio_to_single": rates["vector"] / rates["fedpeat"], "num_envs": num_envs, "blocks": blocks,
            "ppo_env_time_share": float(np.round(share, 4))}


def env_table(result: dict) -> Table:
    table = Table(title=f"FedPEAT-v1 speed (one process, one run; best of {result['blocks']} interleaved blocks)")
    for column in ("measure", "value", "target"):
        table.add_column(column, justify="right")
    table.add_row("FedPEAT-v1 steps/s (N=10)", f"{result['fedpeat_steps_per_s']:.0f}", "")
    table.add_row("CartPole-v1 steps/s", f"{result['cartpole_steps_per_s']:.0f}", "")
    table.add_row("ratio FedPEAT / CartPole", f"{result['ratio_to_cartpole']:.3f}", "≥ 0.3")
    table.add_row(f"vector env steps/s ({result['num_envs']} envs)", f"{result['vector_env_steps_per_s']:.0f}", "≥ 1,000,000")
    table.add_row("vector / single env", f"{result['vector_ratio_to_single']:.1f}×", "")
    table.add_row("PPO wall time inside the env", f"{100 * result['ppo_env_time_share']:.1f}%", "≤ 5%")
    return table
