"""Causal-LM local training and perplexity evaluation, shared by pretraining, clients and the server."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""A local objective: (model, batch of token ids (B, T)) -> scalar loss. Default: the LM loss."""


class LocalObjective:
    """A local objective that needs more than one loss: several optimiser steps per batch and/or state that stays
    on the device between rounds (e.g. FedDAT's private adapter). Subclasses must be picklable (remote executors).

    Per batch, ``train_local`` runs ``stages`` optimiser steps; step s minimises ``loss(model, batch, s)`` and leaves
    parameters that get no gradient in that step unchanged. The client calls ``prepare`` before local training,
    ``finish`` after it and ``upload`` on the state it is about to send, each with ``private``: a dict the client
    keeps between rounds and never uploads.
    """

    stages: int = 1

    def prepare(self, model: nn.Module, private: dict) -> None:
        """Set the model up for local training (default: nothing)."""

    def loss(self, model: nn.Module, batch: torch.Tensor, stage: int) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, model: nn.Module, private: dict) -> None:
        """Store what must persist on the device; leave the model ready for the upload (default: nothing)."""

    def upload(self, state: dict[str, torch.Tensor], private: dict) -> dict[str, torch.Tensor]:
        """What the device uploads of its trained ``state`` (full-model keys); default: all of it."""
        return state


def block_inputs(batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Model inputs for token blocks ``batch`` (B, T): the ids and an all-ones attention mask. Blocks are cut from
    running text and never padded, which the mask states; without it transformers warns that token 0 (GPT-2's EOS,
    also its pad token) at a block's edge may be padding. Same outputs as no mask."""
    return {"input_ids": batch, "attention_mask": torch.ones_like(batch)}


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``batch`` (B, T)."""
    return model(**block_inputs(batch), labels=batch).loss


@torch.no_grad()
def perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """exp(mean next-token NLL) over ``blocks`` (N, T), every block weighted by its T−1 predicted tokens."""
    if len(blocks) == 0:
        raise ValueError("perplexity needs at least one block")
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size]
        n_tokens = batch.shape[0] * (batch.shape[1] - 1)
        total_nll += lm_loss(model, batch).item() * n_tokens
        total_tokens += n_tokens
    model.train(was_training)
    return math.exp(total_nll / total_tokens)


@dataclass(frozen=True)
class LocalTrainConfig:
    """Local optimisation settings of one client in one round."""

    steps: int = 10
    """Optimiser steps per round."""
    batch_size: int = 8
    """Sequences per step."""
    lr: float = 3e-3
    """AdamW learning rate (fresh optimiser each round, as clients are stateless between rounds)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class DistillConfig:
    """Server-side distillation settings (Offsite-Tuning's emulator distillation, FedPFT's layer- and neuron-level
    distillation) on the server's public blocks."""

    steps: int = 50
    """AdamW steps."""
    batch_size: int = 8
    """Blocks per step."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (torch's default)."""
    seed: int = 0
    """Seed of the batch draws."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 0 or (name == "batch_size" and self.batch_size < 1):
                raise ValueError(f"{name} must be >= {int(name == 'batch_size')}, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class TrainStats:
    mean_loss: float
    tokens: int
    wall_time_s: float


Batches = Callable[[], torch.Tensor]
"""Draws the next batch of token ids (B, T)."""


def batch_sampler(blocks: torch.Tensor, batch_size: int, seed: int) -> Batches:
    """Batches of ``batch_size`` blocks of ``blocks`` (N, T) drawn with replacement by a torch generator seeded with
    ``seed`` (the same draws in any process, so any executor gives identical results)."""
    if len(blocks) == 0:
        raise ValueError("training needs at least one block")
    generator = torch.Generator().manual_seed(seed)
    return lambda: blocks[torch.randint(len(blocks), (batch_size,), generator=generator)]


def optimise(
    params: list[nn.Parameter],
    loss_fn: Callable[[torch.Tensor, int], torch.Tensor],
    next_batch: Batches,
    steps: int,
    lr: float,
    weight_decay: float,
    max_grad_norm: float | None = None,
    stages: int = 1,
    lr_factor: Callable[[int], float] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """The project's one training loop (local training, server-side distillation, pretraining): ``steps`` batches,
    ``stages`` AdamW steps of ``loss_fn(batch, stage)`` per batch on ``params``, gradients clipped to
    ``max_grad_norm`` (None: no clipping), the learning rate scaled by ``lr_factor(step)`` (None: constant).
    ``on_step(step, loss)`` is called after each batch. Returns the stage-0 loss per batch."""
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor) if lr_factor is not None else None
    losses = []
    for step in range(steps):
        batch = next_batch()
        for stage in range(stages):
            loss = loss_fn(batch, stage)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimiser.step()
            if stage == 0:
                losses.append(loss.item())
        if scheduler is not None:
            scheduler.step()
        if on_step is not None:
            on_step(step, losses[-1])
    return losses


def train_local(
    model: nn.Module,
    blocks: torch.Tensor,
    config: LocalTrainConfig,
    seed: int,
    loss_fn: LossFn | LocalObjective = lm_loss,
) -> TrainStats:
    """Run ``config.steps`` batches of AdamW steps on the trainable parameters of ``model``, batches drawn from
    ``blocks`` (N, T) by ``batch_sampler(blocks, config.batch_size, seed)``.

    A ``LocalObjective`` takes ``stages`` optimiser steps per batch; the reported loss is that of stage 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    next_batch = batch_sampler(blocks, config.batch_size, seed)
    model.train()
    started = time.perf_counter()
    if isinstance(loss_fn, LocalObjective):
        objective, stages = loss_fn, loss_fn.stages

        def loss(batch: torch.Tensor, stage: int) -> torch.Tensor:
            return objective.loss(model, batch, stage)
    else:
        stages = 1

        def loss(batch: torch.Tensor, stage: int) -> torch.Tensor:
            return loss_fn(model, batch)
    losses = optimise(params, loss, next_batch, config.steps, config.lr, config.weight_decay, config.max_grad_norm, stages)
    model.eval()
    tokens = config.steps * config.batch_size * blocks.shape[1]
    return TrainStats(sum(losses) / len(losses), tokens, time.perf_counter() - started)
