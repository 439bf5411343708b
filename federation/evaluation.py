"""Plug-in evaluation: perplexity of trainable states loaded into the full model or a sub-model, on held-out
tuning-domain blocks, per task when a method keeps one state per task."""

from __future__ import annotations

import copy
import math
from typing import cast

import numpy as np
import torch
from peft import PeftModel

from federation.adapters import LoraSpec, attach_lora, load_adapter_state
from federation.emulator import SubModelSpec
from federation.submodels import SubModels
from federation.training import perplexity

State = dict[str, torch.Tensor]


class PlugInEvaluator:
    """Evaluates states on ``blocks`` (N, T) with task ``labels`` (N,); keeps one model per evaluated structure."""

    def __init__(self, models: SubModels, blocks: torch.Tensor, labels: np.ndarray | None, lora: LoraSpec | None,
                 server_spec: SubModelSpec) -> None:
        self.models, self.blocks, self.lora, self.server_spec = models, blocks, lora, server_spec
        self.labels = labels if labels is not None else np.zeros(len(blocks), dtype=int)
        self._models: dict[SubModelSpec | None, torch.nn.Module] = {}

    def model(self, spec: SubModelSpec | None = None) -> torch.nn.Module:
        """A copy of the full model (``spec`` None) or of a sub-model, with LoRA attached when the method trains
        LoRA (``lora`` not None); built once per spec, states are loaded into it."""
        if spec not in self._models:
            model = copy.deepcopy(self.models.full_model if spec is None else self.models.get(spec))
            self._models[spec] = model if self.lora is None else attach_lora(model, spec or self.server_spec, self.lora)
        return self._models[spec]

    def load(self, model: torch.nn.Module, state: State, spec: SubModelSpec) -> None:
        """Plug ``state`` (full-model keys: LoRA tensors, or every weight without LoRA) into ``model``."""
        if self.lora is not None:
            load_adapter_state(cast(PeftModel, model), state, spec)  # ``model()`` attached LoRA
            return
        _, unexpected = model.load_state_dict({spec.to_sub_key(k): v for k, v in state.items()}, strict=False)
        if unexpected:
            raise ValueError(f"state has keys the model lacks: {unexpected[:3]}")

    def perplexity(self, states: dict[int | None, State], spec: SubModelSpec | None = None) -> tuple[float, dict[int, float]]:
        """(perplexity, per-task perplexities) of ``states`` in the full model (``spec`` None) or in ``spec``.

        ``states`` maps task → its state (key None: one state for every block). With per-task states each is
        evaluated on its task's blocks and the result pools all tokens, exp(Σ_t n_t·log ppl_t / Σ_t n_t), like a
        single state's perplexity on the same blocks. One state on blocks of several tasks is evaluated per task the
        same way, so the per-task perplexities are reported too (empty with one task)."""
        model, load_spec = self.model(spec), spec or self.server_spec
        single = set(states) == {None}
        if single:
            self.load(model, states[None], load_spec)
            tasks = np.unique(self.labels).tolist()
            if len(tasks) == 1:
                return perplexity(model, self.blocks), {}
        else:
            tasks = sorted(states)
        per_task, counts = {}, {}
        for task in tasks:
            if not single:
                self.load(model, states[task], load_spec)
            mask = self.labels == task
            per_task[task], counts[task] = perplexity(model, self.blocks[torch.from_numpy(mask)]), int(mask.sum())
        pooled = math.exp(sum(counts[t] * math.log(p) for t, p in per_task.items()) / sum(counts.values()))
        return pooled, per_task
