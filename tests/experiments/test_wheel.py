"""The installed package behaves as the checkout: a wheel built from the source tree, installed into a fresh virtualenv
outside the checkout, makes both env ids (the calibration, the embedded model and the tokenizer come from the package)
and runs ``fedpeat train`` from the tuned settings shipped in it. Slow: builds a wheel and runs an engine round."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "runs", "__pycache__",
                                       ".pytest_cache", ".ruff_cache", ".mypy_cache", ".benchmarks")
"""What the copy of the source tree leaves out: environments, caches, earlier build output (a stale ``build/`` would
put files that are no longer in the tree into the wheel) and run outputs."""
PACKAGE_DATA = ("fedpeat_env/calibrations/embedded-v3.json", "agents/hyperparams/ppo.yml",
                "agents/hyperparams/maskable-ppo.yml", "federation/assets/tiny-gpt2/model.safetensors",
                "federation/assets/tiny-gpt2/tokenizer.json", "federation/assets/corpus/pydocs/train.txt.gz",
                "federation/py.typed", "fedpeat_env/py.typed", "agents/py.typed", "experiments/py.typed")

MAKE_BOTH_IDS = """
import gymnasium as gym
import numpy as np

import agents
import fedpeat_env

print("fedpeat_env from", fedpeat_env.__file__)
print("agents from", agents.__file__)
env = gym.make("FedPEAT-v1")
obs, _ = env.reset(seed=0)
obs, reward, *_ = env.step(env.action_space.sample())
assert env.observation_space.contains(obs) and np.isfinite(reward)
engine = gym.make("FedPEAT-Engine-v1", num_devices=2, horizon=1, engine_local_steps=1, memory_tiers=(2.0,))
engine.reset(seed=0)
_, reward, terminated, truncated, info = engine.step(np.ones(2, dtype=np.int64))
assert np.isfinite(reward) and np.isfinite(info["perplexity"]) and (terminated or truncated)
print("both ids ok", round(float(info["perplexity"]), 1))
"""


def _run(args: list, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_makes_both_ids_and_trains_from_its_tuned_settings(tmp_path):
    source, dist, venv, work = tmp_path / "src", tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    shutil.copytree(ROOT, source, ignore=SOURCE_IGNORE)
    work.mkdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source],
         cwd=work)
    (wheel,) = dist.glob("fedpeat_gym-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [path for path in PACKAGE_DATA if path not in names]
    assert not [name for name in names if name.startswith("tests/")]

    # A fresh environment whose only fedpeat-gym is the wheel; the dependencies (torch, ...) are this environment's,
    # on a path file (its own .pth files, such as the checkout's editable install, are not read from there).
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work)
    python = venv / "bin" / "python"
    (purelib,) = {Path(p) for p in _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        cwd=work).stdout.split()}
    (purelib / "outer_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], cwd=work)

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
    made = _run([python, "-c", MAKE_BOTH_IDS], cwd=work, env=env).stdout
    assert f"fedpeat_env from {purelib / 'fedpeat_env' / '__init__.py'}" in made
    assert f"agents from {purelib / 'agents' / '__init__.py'}" in made
    assert "both ids ok" in made

    trained = _run([venv / "bin" / "fedpeat", "train", "--timesteps", "64", "--n-envs", "2", "--hyperparams",
                    "n_steps:16", "batch_size:32", "n_epochs:1", "--checkpoint-every", "0", "--out", work / "agent"],
                   cwd=work, env=env).stdout
    settings = purelib / "agents" / "hyperparams" / "ppo.yml"
    assert f"tuned settings for FedPEAT-v1 from {settings}:" in " ".join(trained.split())
    assert "policy=device-set" in trained  # ppo.yml's policy, not SB3's default MLP
    assert (work / "agent" / "model.zip").is_file() and (work / "agent" / "metrics.json").is_file()
