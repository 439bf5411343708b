"""Pictures of a FedPEAT round: ``render_mode="ansi"`` (a text table) and ``"rgb_array"`` (the cell, drawn).

Both show the same per-device state after the last step: distance to the base station, channel gain, memory tier,
data share and domain mix, whether it is available for the next round, the emulator held (ε) and whether the device
trained in the round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedpeat_env.surrogate import DOMAINS


@dataclass(frozen=True)
class DeviceView:
    """One device of episode 0 of a ``Dynamics``."""

    distance_m: float
    gain_db: float
    tier: float
    """Memory capacity as a multiple of the full model's training footprint."""
    share: float
    held_eps: float
    """ε of the emulator it holds (−1: none yet)."""
    trained: bool
    """Selected, available and within its memory in the last round."""
    available: bool
    """Can train in the coming round."""
    mix: tuple[float, ...]
    """Share of its data in each tuning domain (``DOMAINS``)."""


def device_views(dynamics) -> list[DeviceView]:
    """The devices of episode 0 of ``dynamics`` (a ``fedpeat_env.dynamics.Dynamics``)."""
    s, n = dynamics.state, dynamics.N
    capacity = s.allowed[0] / (dynamics.config.memory_fraction * dynamics.costs.full_memory_bytes)
    held = dynamics.tables.held_eps[s.held[0]]
    return [DeviceView(float(dynamics.channel.distances_m[i]), float(s.gain_db[0, i]), float(capacity[i]),
                       float(s.share[0, i]), float(held[i]), bool(s.active[0, i]), bool(s.available[0, i]),
                       tuple(float(x) for x in s.mix[0, i])) for i in range(n)]


def round_text(dynamics) -> str:
    """The ``ansi`` frame: round, perplexity and one line per device."""
    s = dynamics.state
    domains = " ".join(f"{d[:3]:>4}" for d in DOMAINS)
    lines = [f"round {int(s.t[0])}/{dynamics.config.horizon}  perplexity {float(s.ppl[0]):.1f}  "
             f"(target {dynamics.target:.1f})",
             f"{'device':>6} {'distance m':>10} {'gain dB':>8} {'memory ×':>8} {'share':>6} {domains} {'avail.':>6} "
             f"{'holds ε':>7} {'trained':>7}"]
    for i, d in enumerate(device_views(dynamics)):
        held = "-" if d.held_eps < 0 else f"{d.held_eps:g}"
        mix = " ".join(f"{x:>4.2f}" for x in d.mix)
        lines.append(f"{i:>6} {d.distance_m:>10.0f} {d.gain_db:>8.1f} {d.tier:>8.2f} {d.share:>6.2f} {mix} "
                     f"{'yes' if d.available else 'no':>6} {held:>7} {'yes' if d.trained else 'no':>7}")
    return "\n".join(lines) + "\n"


def round_picture(dynamics, size_px: int = 480) -> np.ndarray:
    """The ``rgb_array`` frame (size_px, size_px, 3) uint8: the base station at the centre, each device at its
    distance (evenly spread angles), coloured by channel gain, sized by memory tier, ringed when it trained, faded
    while unavailable, labelled with its id and the ε it holds; a colour bar of the gains and a legend of the memory
    tiers and rings."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    views, s = device_views(dynamics), dynamics.state
    fig = Figure(figsize=(size_px / 100, size_px / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.02, 0.76, 0.88))
    radius = dynamics.config.channel.max_distance_m * 1.15
    ax.set_xlim(-radius, radius)
    ax.set_ylim(-radius, radius)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.scatter([0], [0], marker="^", s=220, c="black")
    angles = np.linspace(0, 2 * np.pi, len(views), endpoint=False)
    gains = np.array([v.gain_db for v in views])
    xs, ys = ([v.distance_m * f(a) for v, a in zip(views, angles)] for f in (np.cos, np.sin))
    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(*GAIN_DB), "viridis")
    faces = scale.to_rgba(gains)
    faces[:, 3] = [1.0 if v.available else 0.3 for v in views]
    edges = [(1.0, 0.0, 0.0, 1.0) if v.trained else face for v, face in zip(views, faces)]
    ax.scatter(xs, ys, s=[_marker_area(v.tier) for v in views], c=faces, edgecolors=edges, linewidths=2.5)
    for i, (x, y, v) in enumerate(zip(xs, ys, views)):
        held = "–" if v.held_eps < 0 else f"ε{v.held_eps:g}"
        ax.annotate(f"{i}: {held}", (x, y), textcoords="offset points", xytext=(8, 6), fontsize=7)
    bar = fig.colorbar(scale, cax=fig.add_axes((0.83, 0.5, 0.03, 0.38)))
    bar.set_label("channel gain (dB)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    tiers = [Line2D([], [], marker="o", linestyle="", color="grey", markersize=np.sqrt(_marker_area(t)),
                    label=f"memory ×{t:g}") for t in dynamics.config.memory_tiers]
    rings = [Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="red",
                    markeredgewidth=2, markersize=8, label="trained"),
             Line2D([], [], marker="o", linestyle="", color="grey", alpha=0.3, markersize=8, label="unavailable"),
             Line2D([], [], marker="^", linestyle="", color="black", markersize=8, label="base station")]
    fig.legend(handles=tiers + rings, loc="lower right", fontsize=6, frameon=False, labelspacing=1.0,
               borderpad=0.2, handletextpad=0.5)
    fig.suptitle(f"round {int(s.t[0])}  ppl {float(s.ppl[0]):.1f}  (labels: device: ε held)", fontsize=10)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


GAIN_DB = (-130.0, -70.0)
"""Range of the gain colour scale (dB)."""


def _marker_area(tier: float) -> float:
    """A device's marker area (points²) for its memory tier (multiple of the full model's footprint)."""
    return 60 + 120 * tier
