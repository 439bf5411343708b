"""docs/clients.md: every client library has its section, every Python snippet runs as the script it is (in its own
process, from a directory outside the checkout), the Zoo lines are run by ``test_hyperparams``, and
the MARL comparison commands run as written with smoke-sized budgets appended."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from experiments import cli
from experiments.cli import app
from tests.agents.test_hyperparams import _zoo_lines
from tests.helpers import cli_runner, cli_text

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "clients.md").read_text()
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)

PYTHON = {  # section heading → what its snippet prints when it ran
    "Gymnasium": "final perplexity",
    "Stable-Baselines3": "trained 256 steps",
    "MaskablePPO (sb3-contrib)": "trained 256 steps with the memory masks",
    "torchrl": "torch.Size([8, 20]) torch.Size([8, 20])",
    "skrl": "trained on 4 episodes at once",
    "tianshou": "4 episodes, returns",
    "PettingZoo and SuperSuit (one agent per device)": "one network, trained on 10 agents",
}
ZOO, MARL = "RL Baselines3 Zoo", "MARL against the single-agent policy"


def _sections() -> dict[str, list[tuple[str, str]]]:
    """{``## heading``: [(language, code), ...]} of the page's fenced blocks."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for part in re.split(r"^## ", DOC, flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        sections[heading.strip()] = FENCE.findall(body)
    return sections


def _block(section: str, language: str) -> str:
    (code,) = [code for lang, code in _sections()[section] if lang == language]
    return code


def test_every_client_has_its_section_with_one_snippet():
    sections = _sections()
    assert set(PYTHON) | {ZOO, MARL} == set(sections)
    assert all(len(blocks) == 1 for blocks in sections.values())


@pytest.mark.slow  # each snippet is a whole script in its own process
@pytest.mark.parametrize("section", list(PYTHON))
def test_each_python_snippet_runs_as_a_script(section, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(_block(section, "python"))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert PYTHON[section] in done.stdout, done.stdout[-2000:]


def test_the_zoo_section_holds_the_lines_its_test_runs():
    lines = _zoo_lines(_block(ZOO, "bash"))  # tests/agents/test_hyperparams runs every Zoo line of this page
    assert len(lines) == 3 and lines == _zoo_lines((ROOT / "docs" / "clients.md").read_text())


SMOKE = {  # appended to each MARL line: the last value of an option counts
    ("marl", "train"): ["--timesteps", "96", "--n-envs", "2", "--hyperparams", "n_steps:16", "batch_size:48",
                        "n_epochs:1", "--env-option", "num_devices=3", "--env-option", "horizon=5"],
    ("train", "--policy"): ["--timesteps", "64", "--n-envs", "2", "--hyperparams", "n_steps:16", "batch_size:32",
                            "n_epochs:1", "--checkpoint-every", "0", "--env-option", "num_devices=3",
                            "--env-option", "horizon=5"],
    ("marl", "compare"): ["--seeds", "1", "--episodes", "2"],
}


@pytest.mark.slow  # each snippet is a whole script in its own process
def test_the_marl_comparison_commands_run_as_written_with_smoke_budgets(tmp_path):
    runner, outputs = cli_runner(), []
    cli.console.width = 200
    lines = [line for line in _block(MARL, "bash").splitlines() if line.strip()]
    assert [tuple(shlex.split(line)[1:3]) for line in lines] == list(SMOKE)
    for line in lines:
        args = [arg.replace("runs/", f"{tmp_path}/runs/") for arg in shlex.split(line)[1:]]
        result = runner.invoke(app, [*args, *SMOKE[tuple(args[:2])]])
        assert result.exit_code == 0, (line, result.output)
        outputs.append(cli_text(result.output))
    assert "marl − single-agent ppo (device-set), paired over 2 episodes" in outputs[-1]
    table = pd.read_csv(tmp_path / "runs" / "marl-compare" / "marl_compare.csv")
    assert list(table["policy"]) == ["marl (shared PPO)", "single-agent ppo (device-set)", "fixed-1"]
