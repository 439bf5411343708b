"""``fedpeat run --checkpoint-dir / --resume`` through typer's runner: a resumed run writes the files of an
uninterrupted one; resuming with other settings, without a checkpoint or over one is refused before any training."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments import cli
from experiments.cli import app
from tests.helpers import cli_runner

runner = cli_runner()
cli.console.width = 200
RUN = ["run", "--method", "fedpeat", "--devices", "2", "--local-steps", "1", "--compression", "0.5"]


def _frames(directory, wall_time: bool = False) -> dict[str, pd.DataFrame]:
    frames = {name: pd.read_csv(directory / f"{name}.csv") for name in ("rounds", "devices", "messages")}
    if not wall_time:
        frames["rounds"] = frames["rounds"].drop(columns="wall_time_s")
    return frames


def _assert_same_files(directory, expected, wall_time: bool = False) -> None:
    expected = _frames(expected, wall_time)
    for name, frame in _frames(directory, wall_time).items():
        pd.testing.assert_frame_equal(frame, expected[name], obj=name)


def _invoke(*args):
    return runner.invoke(app, [*RUN, *map(str, args)])


def test_resume_refuses_other_settings_and_reports_a_finished_run(tmp_path):
    checkpoint = tmp_path / "ckpt"
    assert _invoke("--rounds", 1, "--seed", 3, "--checkpoint-dir", checkpoint, "--out", tmp_path / "run").exit_code == 0
    cases = [
        (["--checkpoint-dir", checkpoint, "--resume"], "seed (checkpoint 3, given 0)"),
        (["--checkpoint-dir", checkpoint, "--resume", "--seed", 3, "--local-steps", 2], "method_config.train.steps"),
        (["--checkpoint-dir", checkpoint, "--resume", "--seed", 3, "--compression", 0.75],
         "decisions[1].compression (checkpoint 0.5, given 0.75)"),
        (["--checkpoint-dir", tmp_path / "none", "--resume"], "no checkpoint in"),
        (["--resume"], "--resume needs --checkpoint-dir"),
        (["--checkpoint-dir", checkpoint, "--seed", 3], "already holds a checkpoint (round-000001.json): pass --resume"),
    ]
    for extra, message in cases:
        result = _invoke("--rounds", 2, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in " ".join(result.output.split()), (extra, result.output)
    done = _invoke("--rounds", 1, "--seed", 3, "--checkpoint-dir", checkpoint, "--resume", "--out", tmp_path / "again")
    assert done.exit_code == 0 and "already has 1 rounds" in done.output, done.output
    _assert_same_files(tmp_path / "again", tmp_path / "run", wall_time=True)  # reported from the checkpoint, not rerun


@pytest.mark.slow  # three runs of the CLI (its evaluations use 64 blocks): ≈ 6 s on an idle machine
def test_resumed_run_writes_the_files_of_an_uninterrupted_run(tmp_path):
    checkpoint = tmp_path / "ckpt"
    assert _invoke("--rounds", 1, "--checkpoint-dir", checkpoint).exit_code == 0
    resumed = _invoke("--rounds", 2, "--checkpoint-dir", checkpoint, "--resume", "--out", tmp_path / "resumed")
    assert resumed.exit_code == 0, resumed.output
    assert _invoke("--rounds", 2, "--out", tmp_path / "whole").exit_code == 0
    _assert_same_files(tmp_path / "resumed", tmp_path / "whole")
    assert list(pd.read_csv(tmp_path / "whole" / "rounds.csv")["exchanges"]) == [2, 0]
