"""The server's frozen sub-models (emulators, pruned models), built once per ``SubModelSpec`` and shared by the
round's configuration (what devices download) and the evaluation (the global adapter inside a sub-model)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import GPT2LMHeadModel

from federation.data import pretraining_blocks
from federation.emulator import SubModelSpec, build_emulator, model_payload

SubModelBuilder = Callable[["SubModels", SubModelSpec], GPT2LMHeadModel]
"""How a sub-model is made from the store's full model (and, for distillation, its public data)."""


def layer_drop(models: SubModels, spec: SubModelSpec) -> GPT2LMHeadModel:
    """The default builder: the kept blocks of the full model, copied (no distillation)."""
    return build_emulator(models.full_model, spec)


class SubModels:
    """The full model, its tokenizer, the server's public data, and the sub-models built from them by ``build``."""

    def __init__(self, full_model: GPT2LMHeadModel, tokenizer, build: SubModelBuilder = layer_drop) -> None:
        self.full_model, self.tokenizer, self.build = full_model, tokenizer, build
        self._built: dict[SubModelSpec, GPT2LMHeadModel] = {}
        self._payloads: dict[SubModelSpec, dict[str, torch.Tensor]] = {}
        self._public: torch.Tensor | None = None

    @property
    def num_layers(self) -> int:
        return self.full_model.config.n_layer

    def get(self, spec: SubModelSpec) -> GPT2LMHeadModel:
        """The frozen sub-model for ``spec`` (built on first use)."""
        if spec not in self._built:
            self._built[spec] = self.build(self, spec)
        return self._built[spec]

    def available(self, spec: SubModelSpec) -> bool:
        """Whether ``get(spec)`` gives the server's weights for ``spec``: built or stored already, or a first revision
        (the builder makes it; a later revision is a model the server changed, which exists only once ``put``)."""
        return spec in self._built or spec.revision == 0

    def put(self, spec: SubModelSpec, model: GPT2LMHeadModel) -> None:
        """Store a sub-model made outside the builder (e.g. a refreshed revision of an existing one)."""
        self._built[spec] = model
        self._payloads.pop(spec, None)

    def payload(self, spec: SubModelSpec) -> dict[str, torch.Tensor]:
        """What a device downloads to hold ``spec``: its frozen weights in full-model coordinates. One read-only copy
        per spec, shared by every in-process device that holds it (devices build their model from it, never write it)."""
        if spec not in self._payloads:
            self._payloads[spec] = model_payload(self.get(spec), spec)
        return self._payloads[spec]

    def public_blocks(self, count: int) -> torch.Tensor:
        """The server's public data for distillation: the first ``count`` blocks of the pretraining domains."""
        if self._public is None:
            self._public = pretraining_blocks(self.tokenizer, self.full_model.config.n_positions)
        return self._public[:count]
