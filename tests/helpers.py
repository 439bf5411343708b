"""Shared test helpers that tests import (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from federation.client import ClientJob, ClientUpdate
from federation.executors import LocalExecutor
from federation.training import LocalTrainConfig
from fedpeat_env.surrogate import DOMAINS, Calibration, Coverage

FAST_TRAIN = LocalTrainConfig(steps=2, batch_size=4, lr=3e-3)
"""Local training of engine tests: two steps of four blocks, seconds per round on the embedded model."""

TERMINAL = {"COLUMNS": "200"}
"""The terminal every CLI test runs in, whatever terminal runs the suite: rich draws typer's error panels and our
tables at the terminal's width (``COLUMNS``), and at 80 columns a message naming a long path wraps mid-phrase."""
_BOX = re.compile(r"[\u2500-\u257f]")  # the frame rich draws around typer's errors


def cli_runner() -> CliRunner:
    """typer's test runner in a ``TERMINAL`` of 200 columns."""
    return CliRunner(env=TERMINAL)


def cli_text(output: str) -> str:
    """What a user reads, as one line: no panel frame, single spaces (a long message may still wrap)."""
    return " ".join(_BOX.sub(" ", output).split())


class RecordingExecutor(LocalExecutor):
    """The in-process executor, keeping the last round's jobs and updates (what devices received and sent)."""

    jobs: list[ClientJob]
    updates: list[ClientUpdate | None]

    def run(self, jobs):
        self.jobs = list(jobs)
        self.updates = super().run(jobs)
        return self.updates


def hand_calibration(**fields) -> Calibration:
    """A hand-made calibration (every domain from ppl_0 = 4000 to plateaus of 150 at ε = 0, fast progress, no coverage
    or reuse term, a 1.05 × 157.14 = 165 target), so that env tests reach the target and do not depend on the
    committed calibration; ``fields`` override any field."""
    values = dict(levels=(0.0, 0.25, 0.5, 0.75), ladder=(1.0, 160 / 150, 175 / 150, 210 / 150), domains=DOMAINS,
                  initial_domain_perplexity=(4000.0, 4000.0, 4000.0), domain_plateau=(150.0, 150.0, 150.0),
                  domain_train_blocks=(778, 447, 359), domain_eval_blocks=(41, 19, 16), coverage=0.0,
                  coverage_exponent=1.0, transfer=1.0, reuse=0.0, reuse_onset=0.0, reuse_scale=100.0, rate=5.0,
                  shape=2.0, share_exponent=0.3, rank_exponent=0.5, noise_std=0.02, noise_exponent=0.0, max_rank=8,
                  local_sequences=80, ranks=(2, 4, 8),
                  best_perplexity={"pydocs": 165 / 1.05, "+".join(DOMAINS): 165 / 1.05},
                  covered=Coverage(num_devices=(1, 1000), rounds=1000, server_fraction=(0.0, 0.99),
                                   dirichlet_alpha=(1e-3, 1e3), domain_alpha=(1e-3, 1e3)))
    return Calibration(**{**values, **fields})
