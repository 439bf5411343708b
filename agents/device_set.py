"""A policy that treats the devices as a set: one network shared by every device, so it runs at any number of devices.

FedPEAT-v1's observation is N blocks of ``DEVICE_FEATURES`` per-device features, then ``ROUND_FEATURES`` round
features (``fedpeat_env.dynamics``). For device i:

    h_i = φ(x_i)                          shared per-device encoder
    m   = mean_j h_j                      pooled summary of the devices (empty slots left out)
    z_i = ψ([h_i, m, round])              device i in its context
    logits_i = head(z_i)                  its level (and, with control_rank, rank) logits
    value    = V(ρ([m, round]))           one value per state

The logits come out in the env's MultiDiscrete order (every device's level entries, then every device's rank
entries), so SB3's MultiCategorical distribution and MaskablePPO's masks apply unchanged. ``DeviceSetPolicy`` plugs
into PPO and A2C, ``MaskableDeviceSetPolicy`` into MaskablePPO (``fedpeat train --policy device-set``). Observations
are not normalised per dimension (their statistics would fix N); the env's features are already scaled.
``device_actions`` evaluates the trained network at any N (``agents.policy.SB3Policy`` uses it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import MlpExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from fedpeat_env.dynamics import DEVICE_FEATURES, ROUND_FEATURES

HEADROOM = 1
"""Index of a device's memory headroom among its features: 0 only for the empty slots of an episode with fewer
devices (``EnvConfig.episode_devices``), which the pooled summary leaves out."""


def num_devices(obs_dim: int) -> int:
    """N from the observation length DEVICE_FEATURES·N + ROUND_FEATURES."""
    n, rest = divmod(obs_dim - ROUND_FEATURES, DEVICE_FEATURES)
    if rest or n < 1:
        raise ValueError(f"a FedPEAT observation has {DEVICE_FEATURES}N + {ROUND_FEATURES} entries, got {obs_dim}")
    return n


class DeviceSetExtractor(nn.Module):
    """(B, DEVICE_FEATURES·N + ROUND_FEATURES) observations → latent_pi (B, N·H), one context-aware code per device, and latent_vf (B, H)."""

    def __init__(self, obs_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.hidden = hidden
        self.latent_dim_pi = num_devices(obs_dim) * hidden  # at the training N; the modules work at any N
        self.latent_dim_vf = hidden
        self.phi = nn.Sequential(nn.Linear(DEVICE_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.psi = nn.Sequential(nn.Linear(2 * hidden + ROUND_FEATURES, hidden), nn.Tanh())
        self.rho = nn.Sequential(nn.Linear(hidden + ROUND_FEATURES, hidden), nn.Tanh())

    def _encode(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        n = num_devices(obs.shape[-1])
        devices = obs[:, : DEVICE_FEATURES * n].reshape(obs.shape[0], n, DEVICE_FEATURES)
        round_features = obs[:, DEVICE_FEATURES * n:]
        h = self.phi(devices)
        present = (devices[..., HEADROOM] > 0).to(h.dtype).unsqueeze(-1)  # an empty slot has no memory
        pooled = (h * present).sum(dim=1) / present.sum(dim=1).clamp(min=1.0)
        return h, pooled, round_features

    def forward_actor(self, obs: th.Tensor) -> th.Tensor:
        h, pooled, round_features = self._encode(obs)
        context = th.cat([pooled, round_features], dim=-1).unsqueeze(1).expand(-1, h.shape[1], -1)
        return self.psi(th.cat([h, context], dim=-1)).flatten(1)

    def forward_critic(self, obs: th.Tensor) -> th.Tensor:
        _, pooled, round_features = self._encode(obs)
        return self.rho(th.cat([pooled, round_features], dim=-1))

    def forward(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return self.forward_actor(obs), self.forward_critic(obs)


class DeviceHead(nn.Module):
    """Per-device logits from per-device codes (B, N·H): levels (B, N·L), then ranks (B, N·R) if ``ranks``."""

    def __init__(self, hidden: int, levels: int, ranks: int = 0) -> None:
        super().__init__()
        self.hidden = hidden
        self.level = nn.Linear(hidden, levels)
        self.rank = nn.Linear(hidden, ranks) if ranks else None

    def per_device(self, latent: th.Tensor) -> tuple[th.Tensor, th.Tensor | None]:
        z = latent.reshape(latent.shape[0], -1, self.hidden)
        return self.level(z), None if self.rank is None else self.rank(z)

    def forward(self, latent: th.Tensor) -> th.Tensor:
        levels, ranks = self.per_device(latent)
        return levels.flatten(1) if ranks is None else th.cat([levels.flatten(1), ranks.flatten(1)], dim=1)


if TYPE_CHECKING:
    class _ActorCritic(BasePolicy):
        """What ``DeviceSetMixin`` uses of the policy it is mixed into (``ActorCriticPolicy``,
        ``MaskableActorCriticPolicy``): typing only."""

        features_dim: int
        ortho_init: bool
        mlp_extractor: MlpExtractor
        action_net: nn.Module

        def _build(self, lr_schedule: Schedule) -> None: ...
else:
    _ActorCritic = object


class DeviceSetMixin(_ActorCritic):
    """Replaces SB3's MLP extractor and flat action layer by the device-set networks (see the module docstring)."""

    def _build_mlp_extractor(self) -> None:
        # SB3 types the attribute as its MlpExtractor; its custom-network hook (this method) takes any such module
        self.mlp_extractor = DeviceSetExtractor(self.features_dim)  # type: ignore[assignment]

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        nvec = np.asarray(cast(spaces.MultiDiscrete, self.action_space).nvec)
        n = num_devices(self.features_dim)
        extractor = cast(DeviceSetExtractor, self.mlp_extractor)
        self.action_net = DeviceHead(extractor.hidden, int(nvec[0]), int(nvec[n]) if len(nvec) > n else 0)
        if self.ortho_init:
            self.action_net.apply(lambda module: self.init_weights(module, gain=0.01))
        # as in SB3's ActorCriticPolicy._build: optimizer_class is typed type[Optimizer], whose __init__ takes no lr
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]

    @th.no_grad()
    def device_actions(self, obs: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Greedy actions (B, len(nvec) at this N) for observations (B, DEVICE_FEATURES·N + ROUND_FEATURES) of any N,
        masked logits excluded (``masks``: the env's flat ``action_masks()``, (B, mask length) or (mask length,))."""
        obs_t = th.as_tensor(np.atleast_2d(obs), dtype=th.float32)
        head, extractor = cast(DeviceHead, self.action_net), cast(DeviceSetExtractor, self.mlp_extractor)
        levels, ranks = head.per_device(extractor.forward_actor(obs_t))
        parts = [levels] + ([] if ranks is None else [ranks])
        if masks is not None:
            flat = th.as_tensor(np.atleast_2d(masks), dtype=th.bool)
            split = [levels.shape[1] * levels.shape[2]] + ([] if ranks is None else [ranks.shape[1] * ranks.shape[2]])
            parts = [p.masked_fill(~m.reshape(p.shape), -th.inf) for p, m in zip(parts, flat.split(split, dim=1))]
        return th.cat([p.argmax(dim=-1) for p in parts], dim=1).numpy().astype(np.int64)


class DeviceSetPolicy(DeviceSetMixin, ActorCriticPolicy):
    """The device-set policy for PPO and A2C."""


class MaskableDeviceSetPolicy(DeviceSetMixin, MaskableActorCriticPolicy):
    """The device-set policy for MaskablePPO."""


def register_policy_alias(name: str = "device-set") -> None:
    """Make ``name`` a policy alias of PPO, A2C (``DeviceSetPolicy``) and MaskablePPO (``MaskableDeviceSetPolicy``),
    so that an RL Baselines3 Zoo file can say ``policy: 'device-set'`` (run the Zoo with
    ``--gym-packages fedpeat_env agents.device_set``). Done on import of this module."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import A2C, PPO

    for algo, policy in ((PPO, DeviceSetPolicy), (A2C, DeviceSetPolicy), (MaskablePPO, MaskableDeviceSetPolicy)):
        algo.policy_aliases = {**algo.policy_aliases, name: policy}  # the class's own copy, not the base's


register_policy_alias()
