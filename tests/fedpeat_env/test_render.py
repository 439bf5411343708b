"""Rendering through ``gymnasium.make(..., render_mode=...)``: the last round stays renderable, videos record."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import fedpeat_env  # noqa: F401  (registers the ids)

SMALL = {"num_devices": 3, "horizon": 3, "availability": "always"}


def _play_to_the_end(env) -> int:
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        *_, terminated, truncated, _ = env.step(np.array([1, 2, 0]))
        steps, done = steps + 1, terminated or truncated
    return steps


def test_render_after_the_last_step_shows_the_last_round():
    text_env = gym.make("FedPEAT-v1", render_mode="ansi", **SMALL)
    steps = _play_to_the_end(text_env)
    assert text_env.render().startswith(f"round {steps}/3")  # no "call reset() before render()"
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
        text_env.step(np.array([1, 2, 0]))  # stepping still needs a reset
    picture_env = gym.make("FedPEAT-v1", render_mode="rgb_array", **SMALL)
    _play_to_the_end(picture_env)
    frame = picture_env.render()
    assert frame.shape == (480, 480, 3) and frame.dtype == np.uint8
    pixels = frame.reshape(-1, 3).astype(int)
    assert np.any(np.all(np.abs(pixels - (253, 231, 37)) < 12, axis=1))  # the gain colour bar's top (viridis yellow)
    assert np.any(np.all(np.abs(pixels - (68, 1, 84)) < 12, axis=1))  # and its bottom (viridis purple)
    assert np.any(np.all(np.abs(pixels - (255, 0, 0)) < 12, axis=1))  # red rings: devices 0 and 1 trained


def test_record_video_writes_each_episode(tmp_path):
    env = gym.wrappers.RecordVideo(gym.make("FedPEAT-v1", render_mode="rgb_array", **SMALL), str(tmp_path),
                                   episode_trigger=lambda episode: True, disable_logger=True)
    for _ in range(2):
        _play_to_the_end(env)
    env.close()
    videos = sorted(p.name for p in tmp_path.glob("*.mp4"))
    assert videos == ["rl-video-episode-0.mp4", "rl-video-episode-1.mp4"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in videos)
