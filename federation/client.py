"""The device role: holds a sub-model between rounds, trains what is trainable, uploads it."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from peft import PeftModel
from transformers import GPT2Config

from federation.adapters import LoraSpec, adapter_state, attach_lora, load_adapter_state
from federation.emulator import SubModelSpec, build_submodel
from federation.system import MemoryFootprint, count_parameters, training_memory
from federation.training import LocalObjective, LocalTrainConfig, LossFn, train_local

SERVER_DEVICE = -1
"""Device id of the server's own participant in server–device collaborative tuning."""


@dataclass(frozen=True)
class ClientJob:
    """Everything a device needs for one round (what an executor ships to it)."""

    device: int
    round: int
    spec: SubModelSpec
    frozen_payload: dict[str, torch.Tensor] | None
    """New frozen sub-model weights (an emulator exchange), or None to keep the held ones."""
    trainable_payload: dict[str, torch.Tensor]
    """Global adapter (LoRA) or, for full fine-tuning, the trainable weights — full-model keys."""
    lora: LoraSpec | None
    """LoRA to train (None: train every weight of the sub-model)."""
    train: LocalTrainConfig
    seed: int
    """Seed of the device's batch sampling this round."""
    loss_fn: LossFn | LocalObjective
    task: int | None = None
    """Train on the device's blocks of this task (domain label) only; None: on all its blocks."""
    keep_model: bool = True
    """Keep the built model for the next job (False: free it after training; its frozen weights stay held)."""


@dataclass(frozen=True)
class ClientUpdate:
    device: int
    round: int
    state: dict[str, torch.Tensor]
    """Uploaded trainable tensors (full-model keys)."""
    num_samples: int
    """Local training blocks (the FedAvg weight)."""
    train_loss: float
    tokens: int
    wall_time_s: float
    memory: MemoryFootprint
    task: int | None = None
    """The job's task (None: all the device's data)."""


@dataclass(frozen=True)
class ClientFailure:
    """A job that returned no update (the device raised, or its worker died): the device is dropped from the round."""

    device: int
    round: int
    reason: str
    """The error, as ``"<type>: <message>"``."""
    task: int | None = None


@dataclass(frozen=True)
class ClientState:
    """What a device keeps between rounds besides its data (a checkpoint's record of it): the sub-model it holds and
    its local objective's private state. Plain data (picklable), so a remote executor can ship it either way."""

    spec: SubModelSpec | None
    """The sub-model the device holds (None: nothing yet, or dropped after a failure)."""
    private: dict
    """``Client.private``: tensors, numbers, strings, lists and dicts (str keys)."""


class Client:
    """One device. Long-lived: its frozen sub-model stays in memory until the server sends a new one."""

    def __init__(self, device: int, blocks: torch.Tensor, model_config: GPT2Config, labels: np.ndarray | None = None) -> None:
        if len(blocks) == 0:
            raise ValueError(f"device {device} has no training data")
        if labels is not None and len(labels) != len(blocks):
            raise ValueError(f"labels must have one entry per block ({len(blocks)}), got {len(labels)}")
        self.device = device
        self.blocks = blocks
        self.labels = labels
        self.model_config = model_config
        self.spec: SubModelSpec | None = None
        self.frozen: dict[str, torch.Tensor] = {}
        self.private: dict = {}
        """State a ``LocalObjective`` keeps on the device between rounds (never uploaded)."""
        self._model: PeftModel | None = None
        self._model_lora: LoraSpec | None = None

    def task_blocks(self, task: int | None) -> torch.Tensor:
        """The device's blocks of ``task`` (all blocks for None)."""
        if task is None:
            return self.blocks
        if self.labels is None or not (self.labels == task).any():
            raise ValueError(f"device {self.device} has no blocks of task {task}")
        return self.blocks[torch.from_numpy(self.labels == task)]

    def run(self, job: ClientJob) -> ClientUpdate:
        if job.device != self.device:
            raise ValueError(f"job for device {job.device} sent to device {self.device}")
        if job.frozen_payload is not None:
            self.spec, self.frozen, self._model = job.spec, job.frozen_payload, None
        elif self.spec is None:
            raise RuntimeError(f"device {self.device} holds no sub-model (its worker restarted); it is sent again next round")
        elif job.spec != self.spec:
            raise ValueError(f"device {self.device} holds {self.spec} but the job needs {job.spec} without a payload")
        model = self._prepare_model(job)
        blocks = self.task_blocks(job.task)
        objective = job.loss_fn if isinstance(job.loss_fn, LocalObjective) else None
        if objective is not None:
            objective.prepare(model, self.private)
        stats = train_local(model, blocks, job.train, job.seed, job.loss_fn)
        if objective is not None:
            objective.finish(model, self.private)
        if job.lora is None:
            state = {job.spec.to_full_key(k): p.detach().clone() for k, p in model.named_parameters()}
        else:
            state = adapter_state(model, job.spec)
        if objective is not None:
            state = objective.upload(state, self.private)
        frozen, trainable = count_parameters(model)
        if not job.keep_model:
            self._model = None
        cfg = self.model_config
        memory = training_memory(
            frozen, trainable, batch_size=job.train.batch_size, seq_len=self.blocks.shape[1], d_model=cfg.n_embd,
            num_blocks=len(job.spec.layers), num_heads=cfg.n_head, vocab_size=cfg.vocab_size,
        )
        return ClientUpdate(self.device, job.round, state, len(blocks), stats.mean_loss, stats.tokens, stats.wall_time_s, memory,
                            job.task)

    def run_safely(self, job: ClientJob) -> ClientUpdate | ClientFailure:
        """``run``, or a ``ClientFailure`` when it raises. The device then holds nothing, as a restarted one would: the
        server re-sends its sub-model with its next job (a half-trained model is never reused)."""
        try:
            return self.run(job)
        except Exception as err:  # any error of a device drops it from this round; the round goes on
            self.spec, self.frozen, self._model = None, {}, None
            return ClientFailure(self.device, job.round, f"{type(err).__name__}: {err}", job.task)

    def state(self) -> ClientState:
        """The device's state between rounds (a copy: later rounds do not change it)."""
        return ClientState(self.spec, copy.deepcopy(self.private))

    def restore(self, state: ClientState, frozen: dict[str, torch.Tensor] | None) -> None:
        """Hold ``state.spec`` with its frozen weights ``frozen``, and ``state.private``, as before a run was interrupted;
        ``frozen`` None: hold nothing (the server sends the sub-model with the device's next job). The trainable model
        is rebuilt from them at the next job."""
        if state.spec is not None and frozen is not None:
            self.spec, self.frozen = state.spec, frozen
        else:
            self.spec, self.frozen = None, {}
        self._model, self._model_lora = None, None
        self.private = copy.deepcopy(state.private)

    def _prepare_model(self, job: ClientJob):
        if job.lora is None:  # full fine-tuning: the trainable payload is the whole sub-model
            model = build_submodel(self.model_config, job.spec, {**self.frozen, **job.trainable_payload})
            for p in model.parameters():
                p.requires_grad_(True)
            return model
        if self._model is None or self._model_lora != job.lora:
            base = build_submodel(self.model_config, job.spec, self.frozen)
            self._model, self._model_lora = attach_lora(base, job.spec, job.lora), job.lora
        load_adapter_state(self._model, job.trainable_payload, job.spec)
        return self._model
