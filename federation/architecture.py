"""GPT-2 architecture facts without torch: cost profiles, block shapes, parameter counts, emulator sizes.

Light on purpose (standard library only): the surrogate environment charges bytes and memory from these numbers and
must import in well under a second; the engine (torch, transformers) is imported only when it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

EMBEDDED_DIR = Path(__file__).parent / "assets" / "tiny-gpt2"
"""The committed embedded model (safetensors weights, tokenizer, config.json, pretrain.json)."""

CostProfile = Literal["embedded", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]
COST_PROFILES: tuple[str, ...] = get_args(CostProfile)

# Public GPT-2 architectures (Radford et al. 2019; the Hugging Face model cards): blocks, width, heads.
PUBLIC_GPT2: dict[str, tuple[int, int, int]] = {
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
}

ALL_LINEAR = ("c_attn", "c_proj", "c_fc")
"""Every linear layer of a GPT-2 block: attention ``c_attn`` and ``attn.c_proj``, FFN ``mlp.c_fc`` and ``mlp.c_proj``
(peft matches ``c_proj`` in both)."""


@dataclass(frozen=True)
class GPT2Shape:
    """The sizes of a GPT-2 that decide its parameter count (``GPT2Config`` fields of the same names)."""

    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int = 50257
    n_positions: int = 1024
    n_inner: int | None = None
    """FFN width (None: 4·n_embd)."""

    @property
    def d_ff(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def block_linears(self) -> tuple[tuple[str, int, int], ...]:
        """(module name in a block, in features, out features) of every linear (``Conv1D``) layer of a block."""
        d, f = self.n_embd, self.d_ff
        return (("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d), ("mlp.c_fc", d, f), ("mlp.c_proj", f, d))

    @property
    def block_params(self) -> int:
        """Parameters of one block: two LayerNorms (weight + bias) and the linear layers (weight + bias)."""
        return 2 * 2 * self.n_embd + sum(n_in * n_out + n_out for _, n_in, n_out in self.block_linears)

    @property
    def embedding_params(self) -> int:
        """Token + position embeddings (the LM head is tied to the token embedding)."""
        return (self.vocab_size + self.n_positions) * self.n_embd

    @property
    def final_norm_params(self) -> int:
        return 2 * self.n_embd

    def params(self, num_blocks: int | None = None) -> int:
        """Parameters of the model with ``num_blocks`` blocks (None: all of them)."""
        blocks = self.n_layer if num_blocks is None else num_blocks
        return self.embedding_params + self.final_norm_params + blocks * self.block_params


@lru_cache(maxsize=8)
def profile_shape(profile: str) -> GPT2Shape:
    """The architecture of a cost profile: the embedded model's ``config.json`` or a public GPT-2 size."""
    if profile not in COST_PROFILES:
        raise ValueError(f"cost_profile must be one of {COST_PROFILES}, got {profile!r}")
    if profile == "embedded":
        config = json.loads((EMBEDDED_DIR / "config.json").read_text())
        return GPT2Shape(config["n_layer"], config["n_embd"], config["n_head"], config["vocab_size"],
                         config["n_positions"], config.get("n_inner"))
    n_layer, n_embd, n_head = PUBLIC_GPT2[profile]
    return GPT2Shape(n_layer, n_embd, n_head)


def keep_for_compression(num_middle: int, compression: float) -> int:
    """Middle blocks kept for a compression ratio: k = round((1 − ε)·M), which must be in [1, M]."""
    if not 0.0 <= compression < 1.0:
        raise ValueError(f"compression must be in [0, 1), got {compression}")
    keep = round((1.0 - compression) * num_middle)
    if keep < 1:
        raise ValueError(f"compression={compression} keeps no middle block of {num_middle}; the largest allowed is {1 - 1 / num_middle:.4f}")
    return keep
