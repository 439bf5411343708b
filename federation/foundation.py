"""The foundation model: the embedded offline tiny GPT-2 (default) or any GPT-2 through ``from_pretrained``.

The embedded checkpoint lives in ``federation/assets/tiny-gpt2`` (safetensors + tokenizer + ``pretrain.json``
with the exact config and metrics); ``fedpeat pretrain`` rebuilds it. Architecture-only configs of the
public GPT-2 sizes back the ``cost_profile`` option: system costs of a large model without its weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

EMBEDDED_DIR = Path(__file__).parent / "assets" / "tiny-gpt2"

CostProfile = Literal["embedded", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]
COST_PROFILES: tuple[str, ...] = get_args(CostProfile)

# Public GPT-2 architectures (Radford et al. 2019; the Hugging Face model cards): blocks, width, heads.
_PUBLIC_GPT2: dict[str, tuple[int, int, int]] = {
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
}


def load_foundation(
    name_or_path: str | Path | None = None, *, attn_implementation: str = "eager"
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) in eval mode with float32 weights.

    ``None`` loads the embedded tiny GPT-2 (offline). A local directory or a hub name (``"gpt2"``,
    ``"gpt2-xl"``) goes through ``from_pretrained``; hub names need network access.
    """
    source = EMBEDDED_DIR if name_or_path is None else name_or_path
    if name_or_path is None and not (EMBEDDED_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(f"embedded checkpoint missing in {EMBEDDED_DIR}; rebuild it with `fedpeat pretrain`")
    model = GPT2LMHeadModel.from_pretrained(source, attn_implementation=attn_implementation, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def quiet_libraries() -> None:
    """Silence library chatter that says nothing to a user of this tool (also in worker processes)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="peft")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def worker_setup() -> None:
    """A worker process of a parallel job (calibration runs, sim-to-real episodes): one torch thread, quiet libraries."""
    torch.set_num_threads(1)
    quiet_libraries()


def profile_config(profile: str) -> GPT2Config:
    """Architecture-only ``GPT2Config`` for a cost profile (no weights are loaded or downloaded)."""
    if profile not in COST_PROFILES:
        raise ValueError(f"cost_profile must be one of {COST_PROFILES}, got {profile!r}")
    if profile == "embedded":
        return GPT2Config.from_pretrained(EMBEDDED_DIR)
    n_layer, n_embd, n_head = _PUBLIC_GPT2[profile]
    return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=50257, n_positions=1024)
