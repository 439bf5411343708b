"""``fedpeat calibrate``: real engine rounds over a grid of compression ratios and selections → surrogate fit."""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict

import torch

from federation.engine import EngineConfig, RoundRunner
from federation.methods import DeviceDecision, FedPEATConfig
from federation.training import LocalTrainConfig
from fedpeat_env.surrogate import Calibration, Trajectory, fit_calibration


def engine_trajectory(
    schedule: Sequence[float], fraction: float, seed: int, num_devices: int, local_steps: int,
    on_round: Callable[[], None] | None = None,
) -> Trajectory:
    """Run ``len(schedule)`` FedPEAT rounds; round t uses ε = schedule[t] on a rotating ``fraction`` of devices."""
    train = LocalTrainConfig(steps=local_steps)
    runner = RoundRunner(EngineConfig(method="fedpeat", num_devices=num_devices, seed=seed,
                                      method_config=FedPEATConfig(train=train)))
    sizes = runner.data.device_sizes.astype(float)
    chosen = max(1, round(fraction * num_devices))
    ppl, eps, share = [runner.initial_perplexity], [], []
    for t, compression in enumerate(schedule):
        selected = {(t + j) % num_devices for j in range(chosen)}
        decisions = [DeviceDecision(i in selected, compression if i in selected else 0.0) for i in range(num_devices)]
        ppl.append(runner.run_round(decisions).full_perplexity)
        eps.append(float(compression))
        share.append(float(sizes[sorted(selected)].sum() / sizes.sum()))
        if on_round is not None:
            on_round()
    return Trajectory(tuple(ppl), tuple(eps), tuple(share))


def calibration_plan(levels: Sequence[float], rounds: int, fractions: Sequence[float]) -> tuple[list, list]:
    """(fit runs, held-out runs) as (schedule, fraction) pairs: every level × fraction with a fixed ε for the fit;
    switching schedules (most → least compressed halfway, and back) for the held-out check."""
    fit = [([e] * rounds, f) for e in levels for f in fractions]
    half = rounds // 2
    heldout = [([levels[-1]] * half + [levels[0]] * (rounds - half), fractions[0]),
               ([levels[0]] * half + [levels[-1]] * (rounds - half), fractions[-1])]
    return fit, heldout


def calibrate(
    levels: Sequence[float] = (0.0, 0.25, 0.5, 0.75),
    rounds: int = 8,
    num_devices: int = 4,
    fractions: Sequence[float] = (1.0, 0.5),
    local_steps: int = 10,
    fit_seed: int = 0,
    heldout_seed: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Calibration:
    """Fit the surrogate to engine runs of the embedded model; ``progress(total_rounds)`` is called once first,
    then ``progress(0)`` after every engine round."""
    fit_plan, heldout_plan = calibration_plan(levels, rounds, fractions)
    if progress is not None:
        progress(rounds * (len(fit_plan) + len(heldout_plan)))
    tick = (lambda: progress(0)) if progress is not None else None
    fit_runs = [engine_trajectory(s, f, fit_seed, num_devices, local_steps, tick) for s, f in fit_plan]
    heldout_runs = [engine_trajectory(s, f, heldout_seed, num_devices, local_steps, tick) for s, f in heldout_plan]
    meta = {
        "engine": asdict(EngineConfig(method="fedpeat", num_devices=num_devices)) | {"local_steps": local_steps},
        "rounds": rounds, "fractions": list(fractions), "fit_seed": fit_seed, "heldout_seed": heldout_seed,
        "fit_runs": [asdict(r) for r in fit_runs], "heldout_runs": [asdict(r) for r in heldout_runs],
        "torch": torch.__version__, "python": platform.python_version(),
    }
    return fit_calibration(fit_runs, heldout_runs, tuple(levels), meta)
