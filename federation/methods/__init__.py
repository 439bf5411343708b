"""Federated tuning methods on the shared engine, selectable by name."""

from __future__ import annotations

from federation.methods.base import DeviceDecision, Method, MethodConfig
from federation.methods.fed_ft import FedFT
from federation.methods.feddat import DualAdapterObjective, FedDAT, FedDATConfig
from federation.methods.fedot import FedOT, FedOTConfig
from federation.methods.fedpeat import FedPEAT, FedPEATConfig
from federation.methods.fedpetuning import FedPETuning
from federation.methods.fedpft import FedPFT, FedPFTConfig
from federation.methods.fedprox import FedProx, FedProxConfig, ProximalLoss
from federation.methods.fltac import FLTAC
from federation.methods.hetlora import HetLoRA, HetLoRAConfig, HetLoRALoss

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (FedFT, FedPETuning, FedPEAT, FedOT, FedPFT, HetLoRA, FedDAT, FLTAC, FedProx)
}


def make_method(name: str, config: MethodConfig | None = None) -> Method:
    """Instantiate a method by name; ``ValueError`` lists the known names."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name](config)


__all__ = [
    "FLTAC", "METHODS", "DeviceDecision", "DualAdapterObjective", "FedDAT", "FedDATConfig", "FedFT", "FedOT", "FedOTConfig",
    "FedPEAT", "FedPEATConfig", "FedPETuning", "FedPFT", "FedPFTConfig", "FedProx", "FedProxConfig", "HetLoRA", "HetLoRAConfig", "HetLoRALoss",
    "Method", "MethodConfig", "ProximalLoss", "make_method",
]
