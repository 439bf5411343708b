"""The foundation model: the embedded offline tiny GPT-2 (default) or any GPT-2 through ``from_pretrained``.

The embedded checkpoint lives in ``federation/assets/tiny-gpt2`` (safetensors + tokenizer + ``pretrain.json``
with the exact config and metrics); ``fedpeat pretrain`` rebuilds it. The architectures behind the env's
``cost_profile`` option (sizes only, no torch) are in ``federation.architecture``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2LMHeadModel, PreTrainedTokenizerBase

from federation.architecture import EMBEDDED_DIR, profile_shape


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
    with _no_progress_bars():
        model = GPT2LMHeadModel.from_pretrained(source, attn_implementation=attn_implementation, dtype=torch.float32)
    model.eval()
    return causal_lm(model), load_tokenizer(name_or_path)


def causal_lm(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """``model`` with its loss named transformers' causal-LM loss, which it computes anyway: ``GPT2LMHeadModel``'s
    class name matches none of transformers' loss names, so each model's first loss warned that ``loss_type=None``
    is unrecognised before falling back to that loss. Every model the engine builds goes through here."""
    model.loss_type = "ForCausalLM"
    return model


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' (and the hub's) progress bars off while the block runs, as they were after it: loading a
    checkpoint drew a 'Loading weights' bar on every load (each engine run, each env episode). Warnings stay on."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_tokenizer(name_or_path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The foundation's tokenizer alone (``None``: the embedded one), with padding = EOS: milliseconds, so that
    checks on the data (e.g. ``federation.data.device_capacity``) run before the model is loaded."""
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_DIR if name_or_path is None else name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def foundation_layers(name_or_path: str | Path | None = None) -> int:
    """Transformer blocks of the foundation, read from its config (no weights loaded)."""
    if name_or_path is None:
        return profile_shape("embedded").n_layer
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path).n_layer


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
