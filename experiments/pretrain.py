"""Pretrain the embedded tiny GPT-2 on the offline corpus (``fedpeat pretrain``).

Trains a byte-level BPE tokenizer on the train splits of every corpus domain, then a small
``GPT2LMHeadModel`` on the pretraining domains only (KJV prose and Python source code without docstrings), so the
federated tuning domains stay held out.
Writes safetensors + tokenizer + ``pretrain.json`` (this config, seed, before/after validation perplexity)
into ``federation/assets/tiny-gpt2``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from federation.data import DOMAINS, pretraining_blocks, read_documents, tokenize_blocks
from federation.foundation import EMBEDDED_DIR, causal_lm
from federation.seeding import seed_everything
from federation.training import lm_loss, optimise, perplexity

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of the embedded model; the committed checkpoint was built with these defaults."""

    vocab_size: int = 4096
    """Byte-level BPE vocabulary size."""
    n_layer: int = 10
    """Transformer blocks (1 bottom + 1 top adapter block + 8 middle blocks for emulators)."""
    n_embd: int = 128
    """Model width d_model."""
    n_head: int = 4
    """Attention heads."""
    block_size: int = 128
    """Context length in tokens (also the training sequence length)."""
    steps: int = 1500
    """Optimiser steps."""
    batch_size: int = 16
    """Sequences per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    seed: int = 0
    """Seed of every random draw (init, batches)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_embd", "n_head", "block_size", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0 or self.warmup_steps < 0 or not self.lr > 0:
            raise ValueError(f"seed and warmup_steps must be >= 0 and lr > 0, got seed={self.seed}, "
                             f"warmup_steps={self.warmup_steps}, lr={self.lr}")


def train_tokenizer(config: PretrainConfig) -> PreTrainedTokenizerFast:
    """Byte-level BPE with ``<|endoftext|>`` as id 0 (bos = eos = pad), trained on all domains' train splits."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for domain in DOMAINS for doc in read_documents(domain, "train") for line in doc.splitlines()]
    tok.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS, model_max_length=config.block_size
    )


def build_model(config: PretrainConfig, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    gpt_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # transformers' dataclass signature of GPT2Config lacks the attn_implementation its __init__ accepts
        attn_implementation="eager",  # type: ignore[call-arg]  # faster than sdpa at this size on CPU
    )
    return causal_lm(GPT2LMHeadModel(gpt_config))


def _lr_factor(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def pretrain(config: PretrainConfig = PretrainConfig(), out_dir: Path = EMBEDDED_DIR) -> dict:
    """Train tokenizer and model, save them in ``out_dir``; returns the record written to ``pretrain.json``."""
    seed_everything(config.seed)
    started = time.perf_counter()
    tokenizer = train_tokenizer(config)
    train_blocks = pretraining_blocks(tokenizer, config.block_size)
    valid = {d: tokenize_blocks(read_documents(d, "valid"), tokenizer, config.block_size) for d in DOMAINS}
    model = build_model(config, tokenizer)
    ppl_before = {d: perplexity(model, blocks) for d, blocks in valid.items()}

    rng = np.random.default_rng(config.seed)
    model.train()
    with Progress(TextColumn("pretrain"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
                  TimeRemainingColumn()) as progress:
        task = progress.add_task("pretrain", total=config.steps, loss=float("nan"))

        def report(step: int, loss: float) -> None:
            progress.update(task, advance=1, loss=loss)
            if (step + 1) % 250 == 0:
                progress.console.log(f"step {step + 1}/{config.steps} loss {loss:.3f}")

        optimise(list(model.parameters()), lambda batch, stage: lm_loss(model, batch),
                 lambda: train_blocks[rng.integers(0, len(train_blocks), size=config.batch_size)], config.steps,
                 config.lr, config.weight_decay, max_grad_norm=1.0, lr_factor=lambda s: _lr_factor(s, config),
                 on_step=report)
    model.eval()
    ppl_after = {d: perplexity(model, blocks) for d, blocks in valid.items()}

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    record = {
        "config": asdict(config),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": int(train_blocks.numel()),
        "valid_perplexity_untrained": ppl_before,
        "valid_perplexity_pretrained": ppl_after,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    (out_dir / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
