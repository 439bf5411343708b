"""``fedpeat regime``: how far the embedded model gets on the tuning domain, in the shape of Offsite-Tuning's table.

Rows, all perplexities on the held-out tuning blocks the engine evaluates (pydocs valid):

| row | what |
|---|---|
| unigram | counting tokens: add-one smoothed unigram of the train split (``federation.data.unigram_perplexity``) |
| zero-shot | the full model before tuning; the emulators of every ε before tuning |
| federated FedPEAT, ε | ``devices`` devices × ``rounds`` rounds × ``local_steps`` steps, every device through the emulator of ε; the adapter plugged into the full model (plug-in) and inside the emulator |
| centralised LoRA | the same adapter trained on the full model on all the train data, the same number of sequences |
| centralised full fine-tuning | every weight trained, the same budget: the upper bound |

The budget of a centralised run is the federated one: devices × rounds × local steps optimiser steps of the same
batch size (4 × 8 × 10 = 320 steps of 8 sequences by default).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pandas as pd

from federation.adapters import attach_lora
from federation.data import read_documents, tokenize_blocks, unigram_perplexity
from federation.emulator import build_emulator, full_spec, layer_drop_spec
from federation.engine import EngineConfig, RoundRunner
from federation.foundation import load_foundation
from federation.methods import DeviceDecision, FedPEAT, FedPEATConfig
from federation.training import LocalTrainConfig, perplexity, train_local


@dataclass(frozen=True)
class RegimeConfig:
    """The federated setting (the calibration's) and the centralised budget derived from it."""

    devices: int = 4
    rounds: int = 8
    local_steps: int = 10
    levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    """Emulator compression ratios ε of the federated rows."""
    full_finetune_lr: float = 1e-3
    """AdamW learning rate of centralised full fine-tuning."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("devices", "rounds", "local_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.levels or not all(0.0 <= e < 1.0 for e in self.levels):
            raise ValueError(f"levels must be values in [0, 1), got {self.levels}")


def regime_table(config: RegimeConfig = RegimeConfig(), say: Callable[[str], None] = print) -> pd.DataFrame:
    """One row per setting: ``setting``, ``ε``, ``full-model ppl`` (plug-in), ``emulator ppl``, ``× unigram``."""
    model, tokenizer = load_foundation()
    method = FedPEAT()
    train_config = replace(method.train_config, steps=config.local_steps)
    engine = EngineConfig(method="fedpeat", num_devices=config.devices, seed=config.seed,
                          method_config=FedPEATConfig(train=train_config))
    probe = RoundRunner(engine)  # its evaluation blocks and train data are the federated runs'
    eval_blocks, train_blocks = probe.data.eval_blocks, tokenize_blocks(read_documents("pydocs", "train"), tokenizer, 128)
    unigram = unigram_perplexity(train_blocks, eval_blocks, len(tokenizer))
    num_layers, num_adapter = model.config.n_layer, method.config.num_adapter_layers
    rows = [{"setting": "unigram (counting tokens)", "ε": None, "full-model ppl": unigram, "emulator ppl": None}]
    rows.append({"setting": "zero-shot", "ε": 0.0, "full-model ppl": probe.initial_perplexity, "emulator ppl": None})
    for eps in config.levels:
        if eps > 0:
            emulator = build_emulator(model, layer_drop_spec(num_layers, num_adapter, eps))
            rows.append({"setting": "zero-shot emulator", "ε": eps, "full-model ppl": None,
                         "emulator ppl": perplexity(emulator, eval_blocks)})
    for eps in config.levels:
        say(f"federated FedPEAT, ε = {eps:g}: {config.devices} devices × {config.rounds} rounds")
        runner = RoundRunner(engine)
        result = runner.run(config.rounds, [DeviceDecision(True, eps)] * config.devices)[-1]
        rows.append({"setting": "federated FedPEAT (plug-in)", "ε": eps, "full-model ppl": result.full_perplexity,
                     "emulator ppl": result.emulator_perplexity})
        runner.close()
    steps = config.devices * config.rounds * config.local_steps
    say(f"centralised LoRA and full fine-tuning: {steps} steps of {train_config.batch_size} sequences")
    assert method.lora is not None  # FedPEAT trains LoRA
    lora_model = attach_lora(copy.deepcopy(model), full_spec(num_layers, num_adapter), method.lora)
    train_local(lora_model, train_blocks, replace(train_config, steps=steps), config.seed)
    rows.append({"setting": "centralised LoRA (same adapter)", "ε": 0.0, "full-model ppl": perplexity(lora_model, eval_blocks),
                 "emulator ppl": None})
    full = copy.deepcopy(model)
    for p in full.parameters():
        p.requires_grad_(True)
    train_local(full, train_blocks, LocalTrainConfig(steps=steps, batch_size=train_config.batch_size,
                                                      lr=config.full_finetune_lr), config.seed)
    rows.append({"setting": "centralised full fine-tuning (upper bound)", "ε": 0.0,
                 "full-model ppl": perplexity(full, eval_blocks), "emulator ppl": None})
    table = pd.DataFrame(rows)
    table["× unigram"] = table["full-model ppl"] / unigram
    return table


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """``regime_table`` as display strings: ε as given, perplexities with one decimal, × unigram with two, '–' for none."""
    formats = {"ε": "{:g}", "full-model ppl": "{:.1f}", "emulator ppl": "{:.1f}", "× unigram": "{:.2f}"}
    out = table.copy()
    for column, fmt in formats.items():
        out[column] = [("–" if pd.isna(v) else fmt.format(v)) for v in table[column]]
    return out


def plugin_goal(table: pd.DataFrame, fraction: float = 0.5) -> tuple[float, float, bool]:
    """(plug-in perplexity at ε = 0, ``fraction`` × unigram, whether the first is at most the second)."""
    unigram = float(table.loc[table["setting"].str.startswith("unigram"), "full-model ppl"].iloc[0])
    plugin = table[(table["setting"] == "federated FedPEAT (plug-in)") & (table["ε"] == 0.0)]["full-model ppl"]
    value = float(plugin.iloc[0])
    return value, fraction * unigram, value <= fraction * unigram


__all__: Sequence[str] = ("RegimeConfig", "formatted", "plugin_goal", "regime_table")
