"""Offline corpus, tokenisation into fixed-length blocks, and seeded device partitions.

The corpus is committed under ``federation/assets/corpus/<domain>/{train,valid}.txt.gz`` (rebuilt by
``fedpeat build-corpus``; sources and licences in ``SOURCES.md`` there). ``kjv`` (English prose) and ``pycode`` (Python
source, docstrings removed) are the pretraining domains; the others are held out from pretraining and serve federated
fine-tuning.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

CORPUS_DIR = Path(__file__).parent / "assets" / "corpus"
DOC_SEPARATOR = "\n\n\x1e\n\n"
"""Separator between documents inside a split file (ASCII record separator between blank lines)."""

DOMAINS = ("kjv", "pycode", "pydocs", "licenses", "docstrings")
PRETRAIN_DOMAINS = ("kjv", "pycode")
"""The embedded model's pretraining mix; every other domain is held out from pretraining."""
Split = Literal["train", "valid"]
PartitionKind = Literal["iid", "dirichlet"]
PARTITIONS: tuple[str, ...] = get_args(PartitionKind)


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")


@lru_cache(maxsize=16)
def read_documents(domain: str, split: Split = "train") -> tuple[str, ...]:
    """Documents of one committed corpus split (chapters, paragraphs or docstrings)."""
    _check_domain(domain)
    if split not in ("train", "valid"):
        raise ValueError(f"split must be one of ('train', 'valid'), got {split!r}")
    path = CORPUS_DIR / domain / f"{split}.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        text = fh.read()
    return tuple(doc for doc in text.rstrip("\n").split(DOC_SEPARATOR) if doc)


def tokenize_blocks(documents: tuple[str, ...] | list[str], tokenizer, block_size: int) -> torch.Tensor:
    """Encode documents (each followed by EOS), concatenate and cut into blocks.

    Returns a LongTensor of shape (num_blocks, block_size); the remainder shorter than a block is dropped.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoded in tokenizer(list(documents), add_special_tokens=False, verbose=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(eos)
    n_blocks = len(ids) // block_size
    if n_blocks == 0:
        raise ValueError(f"corpus has {len(ids)} tokens, fewer than one block of {block_size}")
    return torch.tensor(ids[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)


def pretraining_blocks(tokenizer, block_size: int) -> torch.Tensor:
    """Train blocks of every pretraining domain (N, block_size), in one fixed shuffled order (seed 0), so that any
    prefix mixes the domains: the pretraining data, and the server's public data for distillation."""
    blocks = torch.cat([_cached_blocks(tokenizer, domain, "train", block_size) for domain in PRETRAIN_DOMAINS])
    return blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(0))]


def unigram_perplexity(train_blocks: torch.Tensor, eval_blocks: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of counting tokens: an add-one smoothed unigram model of ``train_blocks``' tokens, scored on the tokens
    a language model predicts in ``eval_blocks`` (N, T) (positions 1..T−1 of every block, as ``training.perplexity``).
    The reference a tuned model must beat to have learned more than token frequencies."""
    counts = torch.bincount(train_blocks.flatten(), minlength=vocab_size).double() + 1.0
    log_p = torch.log(counts / counts.sum())
    return float(torch.exp(-log_p[eval_blocks[:, 1:].flatten()].mean()))


def partition_iid(num_items: int, num_devices: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle item indices and deal them into ``num_devices`` near-equal shards."""
    _check_partition_args(num_items, num_devices)
    return [np.sort(shard) for shard in np.array_split(rng.permutation(num_items), num_devices)]


def partition_dirichlet(
    labels: np.ndarray, num_devices: int, alpha: float, rng: np.random.Generator, min_items: int = 1
) -> list[np.ndarray]:
    """Label-skewed split: every device first gets ``min_items`` random items, then, for each label, the remaining
    items are split with device shares ~ Dirichlet(alpha · 1_N).

    With a single label this is a quantity skew. Small ``alpha`` (0.1) gives strongly non-IID shards (most devices
    hold little beyond their ``min_items``), large alpha approaches IID. Never redraws, so any alpha > 0 works.
    """
    labels = np.asarray(labels)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    shards, rest = _deal_minimum(len(labels), num_devices, min_items, rng)
    for label in np.unique(labels):
        idx = rest[labels[rest] == label]
        shares = rng.dirichlet(np.full(num_devices, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for device, part in enumerate(np.split(idx, cuts)):
            shards[device].extend(part.tolist())
    return [np.sort(np.array(s, dtype=int)) for s in shards]


def partition_shares(num_items: int, shares: np.ndarray, rng: np.random.Generator, min_items: int = 1) -> list[np.ndarray]:
    """Random items split in the given proportions: every device first gets ``min_items`` items, the rest is dealt by
    the cumulative ``shares`` (N,) (non-negative, normalised here). E.g. the env's drawn data shares."""
    shares = np.asarray(shares, dtype=float)
    if not (len(shares) and np.all(shares >= 0) and shares.sum() > 0):
        raise ValueError(f"shares must be >= 0 with a positive sum, got {shares}")
    shards, rest = _deal_minimum(num_items, len(shares), min_items, rng)
    cuts = np.round(np.cumsum(shares / shares.sum())[:-1] * len(rest)).astype(int)
    return [np.sort(np.concatenate([shard, part]).astype(int)) for shard, part in zip(shards, np.split(rest, cuts))]


def partition_domain_shares(labels: np.ndarray, shares: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Content-skewed split in given proportions: ``shares`` (N, L) gives, for each label l, the share of that label's
    items each device gets (columns non-negative, normalised here; an all-zero column splits equally). Each label's
    items are shuffled and cut at the cumulative shares. A device left with no item gets one from the device holding
    the most (so every device can train). E.g. the env's per-domain Dirichlet draws."""
    labels, shares = np.asarray(labels), np.asarray(shares, dtype=float)
    if shares.ndim != 2 or not np.all(shares >= 0) or not np.all(np.isfinite(shares)):
        raise ValueError(f"shares must be a finite, non-negative (devices, labels) array, got shape {shares.shape}")
    _check_partition_args(len(labels), len(shares))
    shards: list[list[int]] = [[] for _ in range(len(shares))]
    for label in range(shares.shape[1]):
        idx = rng.permutation(np.flatnonzero(labels == label))
        column = shares[:, label] if shares[:, label].sum() > 0 else np.ones(len(shares))
        cuts = np.round(np.cumsum(column / column.sum())[:-1] * len(idx)).astype(int)
        for device, part in enumerate(np.split(idx, cuts)):
            shards[device].extend(part.tolist())
    for device in range(len(shards)):
        if not shards[device]:
            donor = max(range(len(shards)), key=lambda d: len(shards[d]))
            shards[device].append(shards[donor].pop())
    return [np.sort(np.array(s, dtype=int)) for s in shards]


def _deal_minimum(num_items: int, num_devices: int, min_items: int, rng: np.random.Generator) -> tuple[list, np.ndarray]:
    """Every device's first ``min_items`` random items (lists), and the remaining items in random order."""
    _check_partition_args(num_items, num_devices)
    if num_items < num_devices * min_items:
        raise ValueError(f"{num_items} items cannot give {num_devices} devices {min_items} item(s) each")
    order = rng.permutation(num_items)
    reserved = order[: num_devices * min_items]
    return [reserved[d::num_devices].tolist() for d in range(num_devices)], order[num_devices * min_items :]


def _check_partition_args(num_items: int, num_devices: int) -> None:
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if num_items < num_devices:
        raise ValueError(f"cannot split {num_items} items across {num_devices} devices")


def device_capacity(tokenizer, domains: tuple[str, ...], block_size: int, server_fraction: float = 0.0) -> int:
    """Most devices the tuning data of ``domains`` can be split into (one training block each), after the server's
    share: the limit ``build_federated_data`` enforces, from the tokenised blocks alone (cached for the run)."""
    for domain in domains:
        _check_domain(domain)
    blocks = sum(len(_cached_blocks(tokenizer, domain, "train", block_size)) for domain in domains)
    return blocks - int(round(server_fraction * blocks))


@dataclass(frozen=True)
class FederatedData:
    """Token blocks of the tuning domains, split across devices, plus held-out evaluation blocks.

    ``device_blocks[i]`` has shape (n_i, block_size); ``eval_blocks`` has shape (n_eval, block_size);
    ``server_blocks`` (server-held data for collaborative tuning) may have zero rows. Labels are the index of
    each block's domain in ``domains`` (the task, for multi-task methods).
    """

    device_blocks: tuple[torch.Tensor, ...]
    eval_blocks: torch.Tensor
    server_blocks: torch.Tensor
    device_labels: tuple[np.ndarray, ...]
    eval_labels: np.ndarray
    domains: tuple[str, ...]

    @property
    def num_devices(self) -> int:
        return len(self.device_blocks)

    @property
    def device_sizes(self) -> np.ndarray:
        return np.array([len(b) for b in self.device_blocks])


def build_federated_data(
    tokenizer,
    num_devices: int,
    rng: np.random.Generator,
    domains: tuple[str, ...] = ("pydocs",),
    block_size: int = 128,
    partition: PartitionKind = "iid",
    alpha: float = 0.5,
    server_fraction: float = 0.0,
    max_eval_blocks: int = 64,
    device_shares: tuple[float, ...] | None = None,
    device_domain_shares: tuple[tuple[float, ...], ...] | None = None,
) -> FederatedData:
    """Tokenise the tuning domains and split their train blocks across devices (and optionally the server).

    Labels for the Dirichlet split are the domain index of each block. ``server_fraction`` of the train blocks
    (drawn first, at random) stay on the server for server–device collaborative tuning. ``device_shares`` (one per
    device) replaces ``partition``: the devices' blocks in these proportions (``partition_shares``);
    ``device_domain_shares`` (per device, per domain: its share of that domain's blocks) replaces it by a content-skewed
    split (``partition_domain_shares``).
    """
    for domain in domains:
        _check_domain(domain)
        if domain in PRETRAIN_DOMAINS:
            raise ValueError(f"domains must not include a pretraining domain {PRETRAIN_DOMAINS}, got {domain!r}")
    if partition not in PARTITIONS:
        raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")
    if not 0.0 <= server_fraction < 1.0:
        raise ValueError(f"server_fraction must be in [0, 1), got {server_fraction}")
    train_parts, labels, eval_parts, eval_labels = [], [], [], []
    for label, domain in enumerate(domains):
        blocks = _cached_blocks(tokenizer, domain, "train", block_size)
        train_parts.append(blocks)
        labels.append(np.full(len(blocks), label))
        eval_parts.append(_cached_blocks(tokenizer, domain, "valid", block_size)[: max(1, max_eval_blocks // len(domains))])
        eval_labels.append(np.full(len(eval_parts[-1]), label))
    train = torch.cat(train_parts)
    all_labels = np.concatenate(labels)
    order = rng.permutation(len(train))
    n_server = int(round(server_fraction * len(train)))
    server_idx, device_pool = order[:n_server], np.sort(order[n_server:])
    if len(device_pool) < num_devices:
        raise ValueError(f"num_devices must be at most the {len(device_pool)} training blocks of domains {tuple(domains)} "
                         f"at block_size {block_size} (after the server's share), got {num_devices}: use fewer devices, "
                         f"a smaller block_size or more domains")
    if device_shares is not None and device_domain_shares is not None:
        raise ValueError("give device_shares or device_domain_shares, not both")
    if device_domain_shares is not None:
        if len(device_domain_shares) != num_devices or any(len(row) != len(domains) for row in device_domain_shares):
            raise ValueError(f"device_domain_shares must have one row per device ({num_devices}) and one entry per domain "
                             f"({len(domains)})")
        shards = partition_domain_shares(all_labels[device_pool], np.asarray(device_domain_shares), rng)
    elif device_shares is not None:
        if len(device_shares) != num_devices:
            raise ValueError(f"device_shares must have one entry per device ({num_devices}), got {len(device_shares)}")
        shards = partition_shares(len(device_pool), np.asarray(device_shares), rng)
    elif partition == "iid":
        shards = partition_iid(len(device_pool), num_devices, rng)
    else:
        shards = partition_dirichlet(all_labels[device_pool], num_devices, alpha, rng)
    device_idx = [device_pool[s] for s in shards]
    return FederatedData(
        device_blocks=tuple(train[idx] for idx in device_idx),
        eval_blocks=torch.cat(eval_parts),
        server_blocks=train[np.sort(server_idx)],
        device_labels=tuple(all_labels[idx] for idx in device_idx),
        eval_labels=np.concatenate(eval_labels),
        domains=tuple(domains),
    )


_BLOCK_CACHE: dict[tuple[str, int, str, str, int], torch.Tensor] = {}


def _cached_blocks(tokenizer, domain: str, split: Split, block_size: int) -> torch.Tensor:
    """Tokenised blocks, cached per (tokenizer, domain, split, block size): tokenising is the slow part."""
    key = (str(tokenizer.name_or_path), len(tokenizer), domain, split, block_size)
    if key not in _BLOCK_CACHE:
        _BLOCK_CACHE[key] = tokenize_blocks(read_documents(domain, split), tokenizer, block_size)
    return _BLOCK_CACHE[key]
