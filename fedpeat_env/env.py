"""The FedPEAT Gymnasium environment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from fedpeat_env.config import EnvConfig, EnvOptionError
from fedpeat_env.dynamics import INFO_KEYS, ROUND_DTYPE, Dynamics, Output
from fedpeat_env.reward import REWARD_INFO_KEYS
from fedpeat_env.surrogate import Calibration

if TYPE_CHECKING:  # torch stays out of ``import fedpeat_env``
    from federation.engine import RoundRunner
    from federation.executors import Executor

_ROUND_NAMES = cast(tuple[str, ...], ROUND_DTYPE.names)  # numpy: names of a structured dtype
_INFO_FIELDS = tuple((key, kind, _ROUND_NAMES.index(key)) for key, kind in INFO_KEYS)
_REWARD_FIELD = _ROUND_NAMES.index("reward")


class FedPEATEnv(gym.Env):
    """
    ## Description
    Adaptive control of federated emulator-assisted tuning (FedPEAT, Chua et al. 2023). Each step is one federated
    round: the orchestrator chooses, for each of N mobile devices, whether it participates and which emulator
    compression ratio ε it trains through (and, with ``control_rank``, its LoRA rank). Devices differ in memory
    tier, distance to the base station, uplink bandwidth and in the data they hold: by default each holds its own mix
    of three tuning domains (content skew) while the full model is evaluated on all of them. Channels fade (Rayleigh,
    Gauss–Markov correlated) and devices come and go (a two-state Markov chain per device). Sending a device a new
    emulator (an *exchange*) costs a large download; training the same little data for many rounds over-fits it. With
    ``server_fraction`` > 0 the server holds that share of the data and trains the full model every round.

    ## Action Space
    ``MultiDiscrete([K+1] * N)`` (``+ [R] * N`` with ``control_rank``):

    | entry | value | meaning |
    |-------|-------|---------|
    | i < N | 0 | device i does not participate |
    | i < N | k in 1..K | device i trains through the emulator with ε = compression_levels[k−1] |
    | N ≤ i < 2N | j in 0..R−1 | LoRA rank rank_levels[j] for device i − N (control_rank only) |

    ``action_masks()`` allows level k > 0 of a device only when it is available and level k fits its memory.

    ## Observation Space
    ``Box`` float32 of shape (10N + 5,), finite bounds; what the agent sees of each device (F = 10 entries: 7 + one per
    tuning domain d = pydocs, licenses, docstrings) and of the round:

    | index | observation | range |
    |-------|-------------|-------|
    | Fi | channel gain, (g_dB + 100) / 20 | [-3, 3] |
    | Fi+1 | memory headroom: η·capacity / full-model footprint | [0, 2] |
    | Fi+2 | ε of the emulator the device holds (−1: none) | [-1, 1] |
    | Fi+3 | emulator exchanges so far / T | [0, 1] |
    | Fi+4 | participations so far / T | [0, 1] |
    | Fi+5 | data share × n (n: the episode's devices, N unless ``episode_devices``; 1: an average device) | [0, N] |
    | Fi+6 | available in the coming round (1) or not (0) | [0, 1] |
    | Fi+7+d | share of the device's data in domain d (its reported histogram; 0 with ``observe_domains=False``) | [0, 1] |
    | FN | perplexity progress (ppl_0 − ppl) / (ppl_0 − target) | [-1, 2] |
    | FN+1 | round / T | [0, 1] |
    | FN+2+d | progress on domain d: log(ppl0_d / ppl_d) / log(ppl_0 / target) (0: a domain the scenario lacks) | [-1, 2] |

    ## Rewards
    A sum of named terms (``fedpeat_env.reward``), each in ``info["reward_<term>"]`` (``REWARD_INFO_KEYS``; the
    reward is their sum). The paper's form is the default: the latency and memory of all devices summed
    (``latency_aggregation="sum"``, ``memory_aggregation="sum"``). Only the cost terms (latency, exchanges, memory) are
    divided by N, so that their weights keep their scale for any N; the penalties are charged per violating device
    (memory, availability) or per excess exchange and are not divided by N (divided, a violation would cost next to
    nothing at large N).

    | term | value |
    |------|-------|
    | perplexity | −w_p · max(ppl − target, 0) / (ppl_0 − target) |
    | latency | −w_q · Σ_i min(Q_i / Q_ref, 10) / N ("sum"), or −w_q · min(max_i Q_i / Q_ref, 10) ("max") |
    | exchanges | −w_x · exchanges / N |
    | memory | −w_m · Σ_i m_i / (η M_i) / N over the active devices ("sum"), or their mean ("mean") |
    | memory_penalty | −P_m per selected device whose footprint exceeds η · capacity (it is dropped) |
    | exchange_penalty | −P_x per exchange beyond κ · T on a device |
    | availability_penalty | −P_a per selected device that is unavailable (it is dropped) |

    Q_i = 8F_dl/r_dl + 8F_ul/r_ul is device i's transmission latency, Q_ref the full model's download at the cell
    edge. The downlink: with "sum" the server serves the devices in turn, each at the whole band's rate; with "max"
    they are served at once and the band (and power) is split equally between the n devices of the round, r_dl / n.
    The engine (``federation.engine``) uses the same model.

    ## Starting State
    Full model at its pretrained perplexity; no device holds an emulator. Memory tiers, data (``partition``),
    availability (the chains' stationary distribution), distances, bandwidths and fading are drawn from
    ``reset(seed=...)``.

    ## Episode End
    Terminated when the perplexity reaches ``target_perplexity``; truncated after ``horizon`` rounds.

    ## Rendering
    ``render_mode="ansi"``: a text table of the last round (per device: distance, channel gain, memory tier, data
    share, the ε it holds, whether it trained); ``"rgb_array"``: the same drawn as the cell around the base station.

    ## Arguments
    Keyword arguments of ``gymnasium.make`` are the fields of ``fedpeat_env.config.EnvConfig`` (an unknown key
    raises an error that is both a ``TypeError`` and a ``ValueError``; a wrong value or type a ``ValueError``).
    ``fidelity="engine"`` runs a real federated round per step on the embedded model, with the same partition,
    availability, server share and latency model. Options outside what the calibration's engine runs covered (N, the
    horizon, the server share, α) raise one ``UserWarning`` naming them.

    ## Version History
    * v1: the scenario grounded in federated data and devices: content skew over three tuning domains
      (``partition="domains"``, ``domain_alpha``) with the full model evaluated on their union, device availability
      (``availability="markov"``), the domain histograms, availability and per-domain progress in the observation
      (10N + 5 entries), the ``availability_penalty`` term, and the calibration ``embedded-v3`` (20-round engine runs,
      held devices, N = 5 / 10 / 20, a data-reuse and a coverage term; the default target from observed engine runs).
      The v0 scenario is ``gym.make("FedPEAT-v1", partition="dirichlet", availability="always")`` (one domain,
      quantity skew, always available), on the v1 observation and calibration.
    * v0: initial version (one domain, quantity skew; calibration ``embedded-v2``).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 2}
    action_space: spaces.MultiDiscrete
    observation_space: spaces.Box

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise EnvOptionError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.config = EnvConfig.from_kwargs(**kwargs)
        if self.config.fidelity == "engine":
            self._check_engine_data()
        self.calibration = Calibration.load(self.config.calibration)
        if self.config.fidelity == "surrogate":
            self.calibration.warn_outside(self.config)
        self.dynamics = Dynamics(self.config, 1, self.calibration)
        self._out = self.dynamics.new_output()  # one round's buffers, reused (step copies what it returns)
        self.action_space = spaces.MultiDiscrete(self.dynamics.nvec)
        self._nvec = self.action_space.nvec
        low, high = self.dynamics.observation_bounds()
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self._runner: RoundRunner | None = None
        self._executor: Executor | None = None
        self._needs_reset = self._needs_seed = True

    # --- Gymnasium API -------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None or self._needs_seed:
            self.dynamics.reset(int(self.np_random.integers(2**62)))
            self._needs_seed = False
        else:
            self.dynamics.next_episodes()
        if self.config.fidelity == "engine":
            self._start_engine(int(self.np_random.integers(2**31)))
        self._needs_reset = False
        return self.dynamics.observe()[0], self._reset_info()

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (and after an episode ends)")
        actions = self._checked(action)
        if self._runner is None:
            out = self.dynamics.step(actions, out=self._out)
        else:
            out = self.dynamics.finish(self.dynamics.transmit(actions, self._out), *self._engine_perplexity(actions))
        terminated, truncated = bool(out.ended[0, 0]), bool(out.ended[1, 0])
        self._needs_reset = terminated or truncated
        reward, info = self._reward_and_info(out)
        return out.obs[0].copy(), reward, terminated, truncated, info

    @staticmethod
    def _reward_and_info(out: Output) -> tuple[float, dict]:
        """Episode 0's reward (a Python float) and info dict: the reward terms and the ``INFO_KEYS`` of its round."""
        values = out.round_.item(0)
        info = dict(zip(REWARD_INFO_KEYS, out.terms.item(0)))
        info |= {key: kind(values[index]) for key, kind, index in _INFO_FIELDS}
        return values[_REWARD_FIELD], info

    def _reset_info(self) -> dict:
        """The info of a reset, with the keys of a step's (clients that batch infos over sub-envs, e.g. torchrl's
        vector envs, infer their layout from the first one): the reward terms 0, the starting perplexity, round 0 and
        no round numbers yet."""
        info = dict.fromkeys(REWARD_INFO_KEYS, 0.0)
        info |= {key: kind(0) for key, kind, _ in _INFO_FIELDS}
        info["perplexity"] = float(self.dynamics.ppl[0])
        return info

    def render(self) -> str | np.ndarray | None:
        """``render_mode="ansi"``: a text table of the round; ``"rgb_array"``: a picture of the cell (base station,
        devices at their distances coloured by channel gain, sized by memory tier, ringed when they trained, labelled
        with their id and the ε they hold, with a legend); None without a render mode. After the last step of an
        episode it still shows that round (``gymnasium.wrappers.RecordVideo`` renders it)."""
        if self.render_mode is None:
            return None
        if self._needs_seed:
            raise RuntimeError("call reset() before render()")
        from fedpeat_env.render import round_picture, round_text

        return round_text(self.dynamics) if self.render_mode == "ansi" else round_picture(self.dynamics)

    def action_masks(self) -> np.ndarray:
        """Flat boolean mask for sb3-contrib's MaskablePPO: levels that do not fit a device's memory are False."""
        return self.dynamics.action_masks()[0]

    def close(self) -> None:
        self._close_runner()
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def _close_runner(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    # --- helpers -------------------------------------------------------------------------------------
    def _checked(self, action) -> np.ndarray:
        """``action`` as an int64 array (1, N [+ N]), or ValueError."""
        arr = np.asarray(action)
        if arr.shape == self._nvec.shape and arr.dtype.kind in "iu":
            actions = np.ascontiguousarray(arr, dtype=np.int64).reshape(1, -1)
            if self.dynamics.valid(actions):
                return actions
        raise ValueError(f"action must be an integer array in {self.action_space} (shape {self.action_space.shape}), got {action!r}")

    def _check_engine_data(self) -> None:
        """Engine fidelity: ``ValueError`` now rather than at the first reset if the engine's tuning data cannot give
        every device a training block (from the tokenizer alone; the blocks stay cached for the engine)."""
        from federation.data import device_capacity
        from federation.foundation import load_tokenizer
        from fedpeat_env.calibration import fedpeat_engine

        cfg = self.config
        engine = fedpeat_engine(cfg.num_devices, 0, cfg.engine_local_steps, max(cfg.rank_levels),
                                domains=self._engine_domains(), server_fraction=cfg.server_fraction)
        limit = device_capacity(load_tokenizer(engine.foundation), engine.domains, engine.block_size, engine.server_fraction)
        if cfg.num_devices > limit:
            raise ValueError(f"num_devices must be at most {limit} in engine fidelity (the training blocks of "
                             f"{'+'.join(engine.domains)} after the server's share), got {cfg.num_devices}")

    def _engine_domains(self) -> tuple[str, ...]:
        """The tuning domains of the engine runs: the three with content skew, else pydocs."""
        from fedpeat_env.surrogate import DOMAINS

        return DOMAINS if self.config.partition == "domains" else ("pydocs",)

    def _start_engine(self, seed: int) -> None:
        """A new engine run for the episode: its data split as the episode drew it (per-domain shares with content
        skew, else data shares), the env's server share and latency model; the episode's shares, domain histograms
        and perplexities then become the engine's real ones (whole blocks, measured)."""
        from federation.engine import RoundRunner
        from federation.executor_config import ExecutorConfig
        from fedpeat_env.calibration import fedpeat_engine, real_data
        from fedpeat_env.surrogate import DOMAINS

        self._close_runner()
        cfg, domains = self.config, self._engine_domains()
        if self._executor is None:  # one executor for every episode (Ray's actors start once)
            self._executor = ExecutorConfig(cfg.executor, cfg.ray_address).make()
        d = self.dynamics
        split = {"device_shares": tuple(d.share[0].tolist())}
        if cfg.partition == "domains":  # device i's share of domain k's blocks ∝ share_i · mix_ik
            held = d.share[0][:, None] * d.mix[0][:, [DOMAINS.index(k) for k in domains]]
            split = {"device_domain_shares": tuple(map(tuple, (held / held.sum(axis=0, keepdims=True)).tolist()))}
        self._runner = RoundRunner(fedpeat_engine(
            cfg.num_devices, seed, cfg.engine_local_steps, max(cfg.rank_levels), domains=domains,
            server_fraction=cfg.server_fraction, latency_aggregation=cfg.latency_aggregation, channel=cfg.channel,
            **split), self._executor)
        shares, mix, _ = real_data(self._runner)
        d.set_data(shares[None, :], mix[None, :, :])
        d.ppl[:] = self._runner.initial_perplexity
        d.domain_ppl[0] = self._domain_perplexity()

    def _domain_perplexity(self) -> np.ndarray:
        """(D,) the engine's last full-model perplexity on each domain (1 for domains the scenario lacks)."""
        from fedpeat_env.calibration import domain_perplexities

        return domain_perplexities(self._runner)

    def _engine_perplexity(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((1,) perplexity, (1, D) per-domain perplexities) after a real federated round of the devices ``transmit``
        made active."""
        from federation.methods import DeviceDecision

        assert self._runner is not None  # engine fidelity: ``reset`` started the run
        N = self.config.num_devices
        eps = self.dynamics.eps_table[actions[0, :N]]
        ranks = actions[0, N:] if self.config.control_rank else np.zeros(N, dtype=np.int64)
        rank_values = np.asarray(self.dynamics.ranks)[ranks]
        decisions = [DeviceDecision(bool(a), float(e) if a else 0.0, int(r))
                     for a, e, r in zip(self.dynamics.active[0], eps, rank_values)]
        ppl = self._runner.run_round(decisions).full_perplexity
        return np.array([ppl]), self._domain_perplexity()[None, :]
